"""Per-gene scores of predictions against truth within one slide, per fold for out-of-fold predictions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._docs import doc_params

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "fold_scores",
    "mae_per_gene",
    "mse_per_gene",
    "pearson_per_gene",
    "score_table",
    "spearman_per_gene",
    "summarize",
]

_EPS = 1e-12

_FOLDS_DOC = """\
folds
    ``(n_spots,)`` fold label of each spot, for out-of-fold predictions: score each fold's spots on their own and
    average over folds, weighted by fold size, over the folds where the gene's score is defined (a gene constant
    within a fold is NaN there). ``None``: score all spots together."""


def _as_2d(a: Any) -> np.ndarray:
    import scipy.sparse as sp

    a = a.toarray() if sp.issparse(a) else np.asarray(a)
    a = a.astype(np.float64, copy=False)
    return a[:, None] if a.ndim == 1 else a


def _check_pair(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t, p = _as_2d(y_true), _as_2d(y_pred)
    if t.shape != p.shape:
        msg = f"y_true {t.shape} and y_pred {p.shape} differ in shape; both are n_spots × n_genes."
        raise ValueError(msg)
    return t, p


def _constant(a: np.ndarray) -> np.ndarray:
    return np.ptp(a, axis=0) <= _EPS * np.maximum(np.abs(a).max(axis=0), 1.0)


def _fold_labels(folds: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, fold of each spot)`` with the labels in sorted order; checks one label per spot."""
    f = np.asarray(folds).ravel()
    if f.shape[0] != n:
        msg = f"folds has {f.shape[0]} labels for {n} spots: give one fold label per spot (row)."
        raise ValueError(msg)
    return np.unique(f), f


def _per_fold(fn: Any, t: np.ndarray, p: np.ndarray, folds: Any) -> np.ndarray:
    """``fn`` on each fold's spots, averaged over folds weighted by fold size where it is defined."""
    labels, f = _fold_labels(folds, t.shape[0])
    masks = [f == lab for lab in labels]
    values = np.stack([fn(t[m], p[m]) for m in masks])  # (n_folds, n_genes)
    weights = np.array([m.sum() for m in masks], dtype=float)[:, None] * np.isfinite(values)
    total = weights.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (np.where(np.isfinite(values), values, 0.0) * weights).sum(0) / total
    out[total == 0] = np.nan
    return out


@doc_params(folds=_FOLDS_DOC)
def pearson_per_gene(y_true: Any, y_pred: Any, *, folds: Any = None) -> np.ndarray:
    """Pearson correlation of each gene (column) between truth and prediction.

    Parameters
    ----------
    {pair}
    {folds}

    Returns
    -------
    ``(n_genes,)``: NaN where the truth is constant, 0 where only the prediction is.

    Examples
    --------
    >>> import numpy as np
    >>> from stpredict.metrics import pearson_per_gene
    >>> t = np.array([[1.0, 2.0, 3.0], [2.0, 2.0, 3.0], [3.0, 2.0, 3.5]])
    >>> p = np.array([[1.0, 1.0, 5.0], [2.0, 3.0, 5.0], [3.5, 5.0, 5.0]])
    >>> pearson_per_gene(t, p).round(3).tolist()
    [0.993, nan, 0.0]
    """
    t, p = _check_pair(y_true, y_pred)
    if folds is not None:
        return _per_fold(pearson_per_gene, t, p, folds)
    tc, pc = t - t.mean(0), p - p.mean(0)
    num = (tc * pc).sum(0)
    den = np.sqrt((tc**2).sum(0) * (pc**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = num / den
    const_t, const_p = _constant(t), _constant(p)
    r[const_p] = 0.0
    r[const_t] = np.nan
    return np.clip(r, -1.0, 1.0)


@doc_params(folds=_FOLDS_DOC)
def spearman_per_gene(y_true: Any, y_pred: Any, *, folds: Any = None) -> np.ndarray:
    """Spearman correlation per gene (Pearson of average ranks), same NaN/0 conventions.

    Parameters
    ----------
    {pair}
    {folds}

    Returns
    -------
    ``(n_genes,)``: NaN where the truth is constant, 0 where only the prediction is.
    """
    from scipy.stats import rankdata

    t, p = _check_pair(y_true, y_pred)
    if folds is not None:
        return _per_fold(spearman_per_gene, t, p, folds)
    rt = rankdata(t, axis=0)
    rp = rankdata(p, axis=0)
    r = pearson_per_gene(rt, rp)
    r[_constant(t)] = np.nan
    r[~_constant(t) & _constant(p)] = 0.0
    return r


@doc_params(folds=_FOLDS_DOC)
def mse_per_gene(y_true: Any, y_pred: Any, *, folds: Any = None) -> np.ndarray:
    """Mean squared error per gene.

    Parameters
    ----------
    {pair}
    {folds}

    Returns
    -------
    ``(n_genes,)`` mean of ``(y_true - y_pred)²`` over spots (with ``folds``, the size-weighted mean of the
    folds' MSE, which is the MSE over all spots).
    """
    t, p = _check_pair(y_true, y_pred)
    if folds is not None:
        return _per_fold(mse_per_gene, t, p, folds)
    return ((t - p) ** 2).mean(0)


@doc_params(folds=_FOLDS_DOC)
def mae_per_gene(y_true: Any, y_pred: Any, *, folds: Any = None) -> np.ndarray:
    """Mean absolute error per gene.

    Parameters
    ----------
    {pair}
    {folds}

    Returns
    -------
    ``(n_genes,)`` mean of ``|y_true - y_pred|`` over spots (with ``folds``, as for :func:`mse_per_gene`).
    """
    t, p = _check_pair(y_true, y_pred)
    if folds is not None:
        return _per_fold(mae_per_gene, t, p, folds)
    return np.abs(t - p).mean(0)


def summarize(scores: Any) -> dict[str, float]:
    """Mean, sd, quartiles and counts of per-gene scores, NaNs (constant truth) excluded and counted.

    Parameters
    ----------
    scores
        Per-gene scores, e.g. from :func:`pearson_per_gene`.

    Returns
    -------
    ``{"mean", "sd", "q25", "median", "q75", "n_genes", "n_nan"}`` over the non-NaN scores (all NaN when there
    is none); ``n_nan`` counts the genes left out.
    """
    s = np.asarray(scores, dtype=float)
    valid = s[~np.isnan(s)]
    if valid.size == 0:
        return {
            "mean": np.nan,
            "sd": np.nan,
            "q25": np.nan,
            "median": np.nan,
            "q75": np.nan,
            "n_genes": 0,
            "n_nan": int(s.size),
        }
    q25, med, q75 = np.percentile(valid, [25, 50, 75])
    return {
        "mean": float(valid.mean()),
        "sd": float(valid.std()),
        "q25": float(q25),
        "median": float(med),
        "q75": float(q75),
        "n_genes": int(valid.size),
        "n_nan": int(s.size - valid.size),
    }


@doc_params(folds=_FOLDS_DOC)
def score_table(y_true: Any, y_pred: Any, genes: Sequence[str] | None = None, *, folds: Any = None) -> pd.DataFrame:
    """Per-gene Pearson, Spearman, MSE, MAE and truth variance of one slide, as a DataFrame.

    Parameters
    ----------
    {pair}
    genes
        Gene names for the index (default ``gene_0``, ``gene_1``, ...).
    {folds}

    Returns
    -------
    One row per gene: ``pearson``, ``spearman``, ``mse``, ``mae``, ``truth_var`` (over all spots) and the number
    of spots ``n``. With ``folds``, the scores are the size-weighted means over folds of :func:`fold_scores`.

    Examples
    --------
    >>> import numpy as np
    >>> from stpredict.metrics import score_table
    >>> t = np.array([[1.0], [2.0], [3.0], [4.0], [5.0], [6.0]])
    >>> p = np.array([[5.0], [5.0], [5.0], [2.0], [2.0], [2.0]])  # each fold predicted by the other fold's mean
    >>> score_table(t, p)["pearson"].round(3).tolist(), score_table(t, p, folds=[0, 0, 0, 1, 1, 1])["pearson"].tolist()
    ([-0.878], [0.0])
    """
    t, p = _check_pair(y_true, y_pred)
    genes = list(genes) if genes is not None else [f"gene_{i}" for i in range(t.shape[1])]
    return pd.DataFrame(
        {
            "pearson": pearson_per_gene(t, p, folds=folds),
            "spearman": spearman_per_gene(t, p, folds=folds),
            "mse": mse_per_gene(t, p, folds=folds),
            "mae": mae_per_gene(t, p, folds=folds),
            "truth_var": t.var(0),
            "n": t.shape[0],
        },
        index=pd.Index(genes, name="gene"),
    )


@doc_params()
def fold_scores(y_true: Any, y_pred: Any, folds: Any, genes: Sequence[str] | None = None) -> pd.DataFrame:
    """Per-fold, per-gene scores: :func:`score_table` of each fold's spots on their own.

    Parameters
    ----------
    {pair}
    folds
        ``(n_spots,)`` fold label of each spot.
    genes
        Gene names (default ``gene_0``, ``gene_1``, ...).

    Returns
    -------
    One row per (fold, gene): ``fold``, ``gene``, then the columns of :func:`score_table` over that fold's spots.
    """
    t, p = _check_pair(y_true, y_pred)
    labels, f = _fold_labels(folds, t.shape[0])
    rows = []
    for lab in labels:
        sc = score_table(t[f == lab], p[f == lab], genes).reset_index()
        sc.insert(0, "fold", lab)
        rows.append(sc)
    return pd.concat(rows, ignore_index=True)
