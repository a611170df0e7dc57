"""``evaluate``: score stored predictions against the measured values of the same slide."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

from .._docs import doc_params
from .._genes import match_genes
from .._keys import LAYER_PREDICTED, UNS_KEY
from .._records import read_record
from ..metrics import fold_scores, score_table, summarize
from ._pipeline import Elements, slide_data, spot_geometry

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pandas as pd
    from spatialdata import SpatialData

__all__ = ["evaluate"]


@doc_params()
def evaluate(
    sdata: SpatialData,
    *,
    key: str = LAYER_PREDICTED,
    genes: Sequence[str] | None = None,
    image_key: str | None = None,
    spots_key: str | None = None,
    table_key: str | None = None,
    microns_per_pixel: float | None = None,
    layer: str | None = None,
    oof_scoring: Literal["per_fold", "pooled"] = "per_fold",
) -> pd.DataFrame:
    """Score stored per-spot predictions against the measured counts of the same slide, per gene.

    The truth is put on the predictions' scale (counts normalised to 1e4 per spot, log1p). Predictions
    written by :func:`predict` with a model name are out-of-fold, so these are held-out scores; predictions
    from a model trained on this slide are flagged in ``uns`` and the score would be in-sample. The gene panel
    of such a ``predict`` call was chosen on all the slide's spots (cross-slide protocols that choose genes on
    training data only are in :func:`cross_validate`).

    **Out-of-fold scoring rule.** Out-of-fold predictions come from one model per fold
    (``uns["stpredict"][key]["oof_fold"]`` holds each spot's fold), so each fold is scored on its own spots and
    every per-gene score is the mean over folds weighted by fold size — as :func:`cross_validate` scores each
    held-out set. A gene constant within a fold has no correlation there: that fold is left out of the gene's
    mean (its weight too), and a gene constant in every fold is NaN. MSE and MAE are the same over all spots
    either way. This keeps the floor at 0: a prediction constant within each fold (e.g. each fold's training
    mean, the ``mean`` baseline) scores 0, whereas pooling the folds into one correlation would turn the folds'
    different training means into a spurious, usually negative, correlation. ``oof_scoring="pooled"`` gives that
    pooled form (one correlation over all spots); predictions without folds (a fitted model) are always scored
    over all spots together.

    Parameters
    ----------
    {sdata}
    key
        Layer of the predictions (``key_added`` of :func:`predict`).
    genes
        Genes to score (``var_names``, Ensembl ids with or without version, or symbols of a ``var`` symbol
        column); default the predicted panel (``var[key]``).
    {keys}
    {mpp}
    layer
        Layer of raw counts (``None``: ``X``).
    oof_scoring
        ``"per_fold"``: score each out-of-fold fold on its own and average over folds, weighted by fold size
        (the rule above); ``"pooled"``: one score over all spots of all folds.

    Returns
    -------
    One row per gene: ``pearson`` (NaN where the truth is constant), ``spearman``, ``mse``, ``mae``,
    ``truth_var`` (over all spots), ``n`` (spots scored). ``.attrs["summary"]`` holds the mean, sd and quartiles
    of the Pearson scores, ``.attrs["in_sample"]`` whether they are in-sample, ``.attrs["oof_scoring"]`` the
    rule applied (``"per_fold"``, ``"pooled"``, or ``"all spots"`` for predictions without folds),
    ``.attrs["fold_sizes"]`` the spots scored in each fold and ``.attrs["pearson_per_fold"]`` each fold's mean
    Pearson (both ``{fold: value}``, empty without folds).

    Examples
    --------
    >>> import stpredict as stp
    >>> sdata = stp.datasets.synthetic(image_size=512, n_genes=5, seed=0)
    >>> stp.tl.predict(sdata, "ridge", progress=False)
    >>> scores = stp.tl.evaluate(sdata)
    >>> scores.shape, scores.attrs["oof_scoring"]
    ((5, 6), 'per_fold')
    """
    if oof_scoring not in ("per_fold", "pooled"):
        msg = f"oof_scoring must be 'per_fold' or 'pooled', got {oof_scoring!r}."
        raise ValueError(msg)
    geo = spot_geometry(
        sdata, Elements(image_key, spots_key, table_key, microns_per_pixel), need_targets=True, layer=layer
    )
    table = sdata.tables[geo.table_key]
    if key not in table.layers:
        msg = f"Table {geo.table_key!r} has no layer {key!r}: run stp.tl.predict(sdata, ...) first."
        raise KeyError(msg)
    panel = list(table.var_names[table.var[key].to_numpy(bool)]) if key in table.var else list(table.var_names)
    if isinstance(genes, str):  # one gene, not its letters
        genes = [genes]
    genes, missing = match_genes(table.var, [str(g) for g in genes], panel) if genes is not None else (panel, [])
    if missing:
        msg = f"{len(missing)} genes were not predicted (e.g. {missing[:5]}); predicted panel: {len(panel)} genes."
        raise KeyError(msg)
    slide = slide_data(sdata, geo, genes=genes, layer=layer)
    cols = table.var_names.get_indexer(genes)
    pred = np.asarray(table.layers[key])[np.ix_(geo.rows, cols)]
    ok = np.isfinite(pred).all(1)
    rec = read_record(table, key)
    folds = rec.get("oof_fold")
    if folds is not None:
        folds = np.asarray(folds).ravel()
        if folds.shape[0] != len(geo.rows):
            msg = (
                f"uns[{UNS_KEY!r}][{key!r}]['oof_fold'] has {folds.shape[0]} folds for {len(geo.rows)} spots: the "
                "table changed since stp.tl.predict. Predict again, or pass oof_scoring='pooled'."
            )
            if oof_scoring == "per_fold":
                raise ValueError(msg)
        folds = folds[ok] if folds.shape[0] == len(geo.rows) else None
    y, p = slide.y[ok], pred[ok]
    by_fold = folds is not None and oof_scoring == "per_fold"
    scores = score_table(y, p, genes, folds=folds if by_fold else None)
    fold_sizes: dict[int, int] = {}
    per_fold: dict[int, float] = {}
    if folds is not None:
        fs = fold_scores(y, p, folds, genes)
        for f, g in fs.groupby("fold", sort=True):
            fold_sizes[int(f)] = int(g["n"].iloc[0])
            per_fold[int(f)] = summarize(g["pearson"].to_numpy())["mean"]
    scores.attrs["summary"] = summarize(scores["pearson"].to_numpy())
    scores.attrs["oof_scoring"] = oof_scoring if folds is not None else "all spots"
    scores.attrs["fold_sizes"] = fold_sizes
    scores.attrs["pearson_per_fold"] = per_fold
    scores.attrs["in_sample"] = bool(rec.get("in_sample", False))
    scores.attrs["model"] = rec.get("model", "unknown")
    scores.attrs["mode"] = rec.get("mode", "unknown")
    return scores
