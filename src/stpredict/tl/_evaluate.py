"""``evaluate``: score stored predictions against the measured values of the same slide."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._docs import doc_params
from .._keys import LAYER_PREDICTED, UNS_KEY
from ..metrics import score_table, summarize
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
) -> pd.DataFrame:
    """Score stored per-spot predictions against the measured counts of the same slide, per gene.

    The truth is put on the predictions' scale (counts normalised to 1e4 per spot, log1p). Predictions
    written by :func:`predict` with a model name are out-of-fold, so these are held-out scores; predictions
    from a model trained on this slide are flagged in ``uns`` and the score would be in-sample. The gene panel
    of such a ``predict`` call was chosen on all the slide's spots (cross-slide protocols that choose genes on
    training data only are in :func:`cross_validate`).

    Parameters
    ----------
    {sdata}
    key
        Layer of the predictions (``key_added`` of :func:`predict`).
    genes
        Genes to score; default the predicted panel (``var[key]``).
    {keys}
    {mpp}
    layer
        Layer of raw counts (``None``: ``X``).

    Returns
    -------
    One row per gene: ``pearson`` (NaN where the truth is constant), ``spearman``, ``mse``, ``mae``,
    ``truth_var``, ``n``. ``.attrs["summary"]`` holds the mean, sd and quartiles of the Pearson scores and
    ``.attrs["in_sample"]`` whether they are in-sample.

    Examples
    --------
    >>> import stpredict as stp
    >>> sdata = stp.datasets.synthetic(image_size=512, n_genes=5, seed=0)
    >>> stp.tl.predict(sdata, "ridge", progress=False)
    >>> stp.tl.evaluate(sdata).shape
    (5, 6)
    """
    geo = spot_geometry(
        sdata, Elements(image_key, spots_key, table_key, microns_per_pixel), need_targets=True, layer=layer
    )
    table = sdata.tables[geo.table_key]
    if key not in table.layers:
        msg = f"Table {geo.table_key!r} has no layer {key!r}: run stp.tl.predict(sdata, ...) first."
        raise KeyError(msg)
    panel = list(table.var_names[table.var[key].to_numpy(bool)]) if key in table.var else list(table.var_names)
    genes = list(genes) if genes is not None else panel
    missing = [g for g in genes if g not in panel]
    if missing:
        msg = f"{len(missing)} genes were not predicted (e.g. {missing[:5]}); predicted panel: {len(panel)} genes."
        raise KeyError(msg)
    slide = slide_data(sdata, geo, genes=genes, layer=layer)
    cols = table.var_names.get_indexer(genes)
    pred = np.asarray(table.layers[key])[np.ix_(geo.rows, cols)]
    ok = np.isfinite(pred).all(1)
    scores = score_table(slide.y[ok], pred[ok], genes)
    rec = table.uns.get(UNS_KEY, {}).get(key, {})
    scores.attrs["summary"] = summarize(scores["pearson"].to_numpy())
    scores.attrs["in_sample"] = bool(rec.get("in_sample", False))
    scores.attrs["model"] = rec.get("model", "unknown")
    scores.attrs["mode"] = rec.get("mode", "unknown")
    return scores
