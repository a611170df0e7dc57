"""Read-only accessors: a slide as a predictor sees it, and the run records stpredict writes.

Nothing here changes the SpatialData: these are the public read side of :mod:`stpredict.tl` for tests,
notebooks and predictor plugins (which would otherwise import private modules).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._keys import LAYER_PREDICTED, UNS_KEY

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData
    from spatialdata import SpatialData

    from ..models._base import SlideData

__all__ = ["record", "slide_data"]


def slide_data(
    sdata: SpatialData,
    model: Any = None,
    *,
    genes: Sequence[str] | int | None = None,
    n_genes: int = 50,
    backbone: Any = None,
    weights: Any = None,
    patch_size_um: float | None = None,
    image_key: str | None = None,
    spots_key: str | None = None,
    table_key: str | None = None,
    microns_per_pixel: float | None = None,
    layer: str | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    progress: bool | None = None,
    dense: bool | None = None,
    stain: str | None = None,
    feature_norm: str | None = None,
) -> SlideData:
    """The measured spots of a slide as a predictor sees them: geometry, targets, embeddings.

    Built by the same input pipeline as :func:`stpredict.tl.fit` and :func:`stpredict.tl.predict`, so a
    plugin's test or a notebook gets exactly what ``fit``/``predict`` hand to a predictor.

    Parameters
    ----------
    sdata
        The slide.
    model
        ``None``, a registered name or an unfitted predictor: the panel is chosen as ``fit`` would (``genes``,
        ``n_genes``) and embeddings are those the predictor consumes (its default backbone, or ``backbone``).
        A fitted predictor: its own panel, backbone and window. ``None`` without ``backbone``: no embeddings.
    genes
        Panel: a list, a number of highly variable genes, or ``None`` for ``n_genes``.
    n_genes
        Panel size when ``genes`` is ``None``.
    backbone
        Backbone of the embeddings (default the predictor's).
    weights
        Local backbone weights.
    patch_size_um
        Window side in µm.
    image_key, spots_key, table_key
        Elements to use (default: the only ones).
    microns_per_pixel
        Level-0 pixel size, when the SpatialData does not say.
    layer
        Layer of raw counts (``None``: ``X``).
    device, batch_size, num_workers, progress, dense
        As in :func:`stpredict.tl.embed`.
    stain, feature_norm
        As in :func:`stpredict.tl.fit` (a fitted model's own by default).

    Returns
    -------
    A :class:`~stpredict.models.SlideData` with ``genes``, ``y``/``y_linear``/``library_size`` (when the
    table measures the panel) and ``embeddings`` (when a backbone applies). Embeddings computed here are not
    written into ``sdata``.
    """
    from ..tl._models import resolve_model
    from ..tl._pipeline import Compute, Elements, prepare_prediction, prepare_training
    from ..tl._transfer import Transfer

    run = Compute(device, batch_size, num_workers, progress, dense)
    elements = Elements(image_key, spots_key, table_key, microns_per_pixel)
    predictor, fitted = (None, False) if model is None else resolve_model(model, {})
    if fitted:
        inputs = prepare_prediction(
            sdata, predictor, backbone=backbone, weights=weights, patch_size_um=patch_size_um, elements=elements,
            layer=layer, stain=stain, feature_norm=feature_norm,
        )  # fmt: skip
    else:
        inputs = prepare_training(
            [sdata], predictor, genes=genes, n_genes=n_genes, backbone=backbone, weights=weights,
            patch_size_um=patch_size_um, elements=elements, layer=layer, transfer=Transfer(stain, feature_norm),
        )  # fmt: skip
    inputs.embed(run)
    slide = inputs.slides[0]
    slide.meta["backbone"] = inputs.backbone_params
    slide.meta["preprocessing"] = inputs.preprocessing
    return slide


def record(table: AnnData, key: str = LAYER_PREDICTED) -> dict[str, Any]:
    """The run record stpredict wrote into ``table.uns["stpredict"][key]``.

    Parameters
    ----------
    table
        A spots table after :func:`stpredict.tl.predict` (``key`` = its ``key_added``, default
        ``"predicted"``), a grid table after :func:`stpredict.tl.superresolve` (``key="superresolve"``), or
        any table after :func:`stpredict.tl.embed` (``key="embeddings"``: one record per ``obsm`` key).

    key
        Which record.

    Returns
    -------
    The record (model, parameters, timings, version), as stored.

    Raises
    ------
    KeyError
        If the table holds no such record, naming the verb that writes it and the records present.
    """
    recs = table.uns.get(UNS_KEY, {})
    if key not in recs:
        verb = {"superresolve": "stp.tl.superresolve", "embeddings": "stp.tl.embed"}.get(key, "stp.tl.predict")
        msg = f"The table has no stpredict record {key!r} (it has {sorted(recs) or 'none'}): run {verb}(...) first."
        raise KeyError(msg)
    return recs[key]
