"""What :func:`~stpredict.tl.cross_validate` returns and how it scores a fold: :class:`CVResult`, :class:`Split`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..metrics import score_table, summarize

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "FAILURE_COLUMNS",
    "FOLD_COLUMNS",
    "SCORE_COLUMNS",
    "CVResult",
    "Split",
    "gene_selection_record",
    "score_fold",
]

#: columns of :attr:`CVResult.scores`
SCORE_COLUMNS = ["gene", "fold", "slide", "pearson", "spearman", "mse", "mae", "truth_var", "n"]
#: columns of :attr:`CVResult.folds`
FOLD_COLUMNS = [
    "fold",
    "slide",
    "n_train",
    "n_test",
    "n_genes",
    "gene_selection",
    "pearson_mean",
    "pearson_median",
    "n_nan_genes",
    "fit_seconds",
    "predict_seconds",
]
#: columns of :attr:`CVResult.failures`
FAILURE_COLUMNS = ["fold", "slide", "seconds", "worker", "error"]


def _no_failures() -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(columns=FAILURE_COLUMNS)


@dataclass
class Split:
    """One fold: which slide(s) train, which spots are scored."""

    fold: int
    test_slide: int
    train_slides: list[int]
    train_obs: dict[int, list[str]] = field(default_factory=dict)
    test_obs: list[str] = field(default_factory=list)


@dataclass
class CVResult:
    """Per-fold, per-gene scores of one model under one protocol, with everything needed to reproduce them.

    Attributes
    ----------
    scores
        One row per (fold, gene): ``gene``, ``fold``, ``slide``, ``pearson``, ``spearman``, ``mse``, ``mae``,
        ``truth_var``, ``n`` (:data:`SCORE_COLUMNS`).
    folds
        One row per fold: slide, number of train/test spots, genes, how they were chosen (``gene_selection``), fit
        and predict seconds, mean PCC.
    splits
        The :class:`Split` of every fold (train and test spot names).
    genes
        The gene panel of every fold (chosen on that fold's training data only).
    params
        Model, protocol, seed and options.
    failures
        One row per fold that failed with ``raise_on_error=False`` (``fold``, ``slide``, ``seconds``, ``worker``,
        ``error``: type and message); such a fold has no scores, row of ``folds``, split or genes. Empty otherwise.
    """

    scores: pd.DataFrame
    folds: pd.DataFrame
    splits: list[Split]
    genes: dict[int, list[str]]
    params: dict[str, Any]
    failures: pd.DataFrame = field(default_factory=_no_failures)

    def summary(self) -> dict[str, float]:
        """Mean ± sd over folds of the per-fold mean PCC, and quartiles / MSE over all (fold, gene) scores.

        Genes with a constant truth in a fold (NaN PCC) are dropped from every entry (``mse`` included) and counted
        in ``n_nan_genes``.
        """
        per_fold = self.folds["pearson_mean"].to_numpy(dtype=float)
        allg = summarize(self.scores["pearson"].to_numpy())
        mse = self.scores.loc[self.scores["pearson"].notna(), "mse"].to_numpy(dtype=float)
        return {
            "pcc_mean": float(np.nanmean(per_fold)) if per_fold.size else np.nan,
            "pcc_sd_folds": float(np.nanstd(per_fold)) if per_fold.size else np.nan,
            "pcc_q25": allg["q25"],
            "pcc_median": allg["median"],
            "pcc_q75": allg["q75"],
            "mse": float(mse.mean()) if mse.size else np.nan,
            "n_folds": len(self.folds),
            "n_nan_genes": allg["n_nan"],
            "fit_seconds": float(self.folds["fit_seconds"].sum()),
            "predict_seconds": float(self.folds["predict_seconds"].sum()),
            "embed_seconds": float(self.params.get("embed_seconds", 0.0)),
        }

    def __repr__(self) -> str:
        s = self.summary()
        failed = f", {len(self.failures)} failed" if len(self.failures) else ""
        return (
            f"CVResult({self.params['model']!r}, {self.params['protocol']!r}: mean PCC {s['pcc_mean']:.3f} ± "
            f"{s['pcc_sd_folds']:.3f} over {s['n_folds']} folds{failed})"
        )


def score_fold(
    f: int,
    slide: str,
    y_true: np.ndarray,
    mean: np.ndarray,
    *,
    panel: list[str],
    how: str,
    n_train: int,
    t_fit: float,
    t_pred: float,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One fold's per-gene scores (rows of :attr:`CVResult.scores`) and its row of :attr:`CVResult.folds`.

    Parameters
    ----------
    f
        Fold number.
    slide
        Name of the held-out slide.
    y_true, mean
        ``(n_test, genes)`` truth and prediction of the scored spots.
    panel
        The fold's genes.
    how
        How they were chosen.
    n_train
        Number of training spots.
    t_fit, t_pred
        Seconds spent fitting and predicting.

    Returns
    -------
    ``(scores, fold row)``.
    """
    sc = score_table(y_true, mean, panel)
    sc.insert(0, "slide", slide)
    sc.insert(0, "fold", f)
    s = summarize(sc["pearson"].to_numpy())
    row = {
        "fold": f,
        "slide": slide,
        "n_train": int(n_train),
        "n_test": len(y_true),
        "n_genes": len(panel),
        "gene_selection": how,
        "pearson_mean": s["mean"],
        "pearson_median": s["median"],
        "n_nan_genes": s["n_nan"],
        "fit_seconds": round(t_fit, 3),
        "predict_seconds": round(t_pred, 3),
    }
    return sc.reset_index(), row


def gene_selection_record(fold_how: dict[int, str]) -> str:
    """How every fold chose its genes: one method, or each fold's."""
    hows = list(dict.fromkeys(fold_how.values()))
    if len(hows) == 1:
        return hows[0] if hows[0] == "given" else f"{hows[0]}, chosen per fold"
    return "; ".join(f"fold {f}: {h}" for f, h in fold_how.items())
