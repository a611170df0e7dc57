"""Per-gene score distributions of several methods side by side (matplotlib)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Mapping

    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["score_distributions"]

_METRIC_LABELS = {"pearson": "Pearson r", "spearman": "Spearman ρ", "mse": "MSE", "mae": "MAE"}


def _scores_of(name: str, result: Any, metric: str) -> np.ndarray:
    """The 1-d scores of one method: a CVResult's ``scores``, a per-gene table's column, or the values."""
    import pandas as pd

    if not isinstance(result, pd.DataFrame | pd.Series) and isinstance(getattr(result, "scores", None), pd.DataFrame):
        result = result.scores  # a CVResult
    if isinstance(result, pd.DataFrame):
        if metric not in result.columns:
            msg = f"Scores of {name!r} have no column {metric!r}; columns: {', '.join(map(str, result.columns))}."
            raise KeyError(msg)
        result = result[metric]
    if isinstance(result, str | bytes) or not np.iterable(result):
        msg = (
            f"Scores of {name!r} must be a CVResult, a per-gene DataFrame (e.g. stp.tl.evaluate) or a 1-d array, "
            f"got {type(result).__name__}."
        )
        raise TypeError(msg)
    values = np.asarray(result, dtype=float)
    if values.ndim != 1:
        msg = f"Scores of {name!r} must be 1-d (one value per gene), got shape {values.shape}."
        raise ValueError(msg)
    return values


def score_distributions(
    results: Mapping[str, Any],
    *,
    metric: str = "pearson",
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """Per-gene score distributions of several methods: a box per method with every gene as a point.

    Genes whose score is NaN (a constant truth, see :mod:`stpredict.metrics`) are dropped and counted in
    each method's label, with the number of genes kept. A dashed line marks 0 (a method that predicts
    nothing scores 0 in correlation).

    Parameters
    ----------
    results
        Method name → scores, drawn left to right in the mapping's order. Scores are a
        :class:`~stpredict.tl.CVResult` (every (fold, gene) row of its ``scores``), a DataFrame with one row
        per gene and a ``metric`` column (:func:`stpredict.tl.evaluate`, :func:`stpredict.metrics.score_table`),
        or a 1-d array of per-gene values.
    metric
        Column to show: ``"pearson"``, ``"spearman"``, ``"mse"``, ``"mae"``. Ignored for arrays.
    ax
        Axes to draw into (default: a new figure, constrained layout so a plain ``fig.savefig`` keeps the
        labels).
    title
        Panel title (default ``"Per-gene <metric> of <n> methods"``).

    Returns
    -------
    The matplotlib figure: methods along x (labelled with genes kept and NaN counts), the metric along y.

    Examples
    --------
    >>> import numpy as np
    >>> import stpredict as stp
    >>> fig = stp.pl.score_distributions({"a": np.array([0.2, 0.5, np.nan]), "b": np.array([0.1, 0.0])})
    >>> [t.get_text().splitlines() for t in fig.axes[0].get_xticklabels()]
    [['a', '2 genes, 1 NaN'], ['b', '2 genes']]
    """
    import matplotlib.pyplot as plt

    if not results:
        msg = "results is empty: pass {method name: scores}."
        raise ValueError(msg)
    names = [str(k) for k in results]
    values = [_scores_of(n, v, metric) for n, v in zip(names, results.values(), strict=True)]
    valid = [v[np.isfinite(v)] for v in values]
    n_nan = [int(np.isnan(v).sum()) for v in values]

    if ax is None:
        fig, ax = plt.subplots(figsize=(max(3.0, 1.1 * len(names) + 1.5), 3.8), layout="constrained")
    else:
        fig = ax.figure
    positions = np.arange(1, len(names) + 1)
    drawn = [i for i, v in enumerate(valid) if v.size]
    if drawn:
        ax.boxplot(
            [valid[i] for i in drawn],
            positions=positions[drawn],
            widths=0.55,
            showfliers=False,
            patch_artist=True,
            boxprops={"facecolor": "0.92", "edgecolor": "0.35"},
            medianprops={"color": "C3", "linewidth": 1.5},
            whiskerprops={"color": "0.35"},
            capprops={"color": "0.35"},
        )
    rng = np.random.default_rng(0)
    for i in drawn:
        v = valid[i]
        x = positions[i] + rng.uniform(-0.18, 0.18, v.size)
        ax.scatter(x, v, s=9, color=f"C{i % 10}", alpha=0.7, linewidths=0, zorder=3)
    ax.axhline(0.0, color="0.4", linewidth=0.8, linestyle="--", zorder=1)
    labels = [f"{n}\n{len(v)} genes" + (f", {k} NaN" if k else "") for n, v, k in zip(names, valid, n_nan, strict=True)]
    ax.set_xticks(positions, labels)
    ax.set_xlim(0.4, len(names) + 0.6)
    label = _METRIC_LABELS.get(metric, metric)
    ax.set_ylabel(f"{label} per gene")
    ax.set_xlabel("method")
    if title is None:
        title = f"Per-gene {label} of {len(names)} method{'s' if len(names) != 1 else ''}"
    ax.set_title(title, fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    return fig
