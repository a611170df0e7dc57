"""``embed`` and ``fit``."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from .._docs import doc_params
from .._keys import UNS_KEY, embedding_key
from .._logging import get_logger
from ._core import Training, fit_predictor, resolve_model, set_device
from ._inputs import build_slide, spot_embeddings, uns_safe

if TYPE_CHECKING:
    from collections.abc import Sequence

    from spatialdata import SpatialData

    from ..models._base import Predictor

__all__ = ["embed", "fit"]

logger = get_logger(__name__)


@doc_params()
def embed(
    sdata: SpatialData,
    backbone: Any = "handcrafted",
    *,
    weights: Any = None,
    patch_size_um: float | None = None,
    image_key: str | None = None,
    spots_key: str | None = None,
    table_key: str | None = None,
    microns_per_pixel: float | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    progress: bool | None = None,
    key_added: str | None = None,
    inplace: bool = True,
) -> np.ndarray | None:
    """Backbone features of a window around every spot.

    Parameters
    ----------
    {sdata}
    backbone
        ``"handcrafted"`` (no weights), a foundation model (``"uni"``, ``"virchow2"``...), any timm name or
        ``hf-hub:`` id, a ``torch.nn.Module`` or a :class:`~stpredict.models.Backbone`.
    weights
        Local weights file for the backbone.
    patch_size_um
        Window side in µm (default: the backbone's, 112 µm).
    {keys}
    {mpp}
    {device}
    {batch}
    {progress}
    key_added
        ``obsm`` key; default ``"X_<backbone name>"``.
    {inplace}

    Returns
    -------
    ``None``; writes ``table.obsm[key_added]`` (NaN for rows not annotating the spots) and the parameters in
    ``table.uns["stpredict"]["embeddings"][key_added]``. With ``inplace=False``, the ``(n_spots, dim)`` array.
    Embeddings already cached with the same backbone and patch settings are reused.

    Examples
    --------
    >>> import stpredict as stp
    >>> sdata = stp.datasets.synthetic(image_size=512, n_genes=5, seed=0)
    >>> stp.tl.embed(sdata, "handcrafted", progress=False)
    >>> sdata.tables["table"].obsm["X_handcrafted"].shape[1]
    54
    """
    from ..models.backbones import get_backbone

    slide, geo = build_slide(
        sdata,
        image_key=image_key,
        spots_key=spots_key,
        table_key=table_key,
        microns_per_pixel=microns_per_pixel,
        genes=None,
        layer=None,
        need_targets=False,
    )
    bb = get_backbone(backbone, weights=weights)
    patch_um = float(patch_size_um if patch_size_um is not None else bb.default_patch_um)
    table = sdata.tables[geo.table_key] if geo.table_key else None
    key = key_added or embedding_key(bb.name)
    t0 = time.perf_counter()
    logger.info("embed: %d spots, backbone %s, %g µm windows.", geo.n_spots, bb.name, patch_um)
    emb, rec, reused = spot_embeddings(
        table if key == embedding_key(bb.name) else None,
        geo,
        slide.image_levels,
        bb,
        patch_size_um=patch_um,
        cache=False,
        device=device,
        batch_size=batch_size,
        num_workers=num_workers,
        progress=progress,
    )
    if not inplace:
        return emb
    if table is None:
        msg = "There is no table to write embeddings into; use inplace=False to get the array."
        raise ValueError(msg)
    if not reused:
        full = np.full((table.n_obs, emb.shape[1]), np.nan, dtype=np.float32)
        full[geo.rows] = emb
        table.obsm[key] = full
        table.uns.setdefault(UNS_KEY, {}).setdefault("embeddings", {})[key] = uns_safe(rec)
    logger.info("Added table %r obsm[%r] (%.1f s).", geo.table_key, key, time.perf_counter() - t0)
    return None


@doc_params()
def fit(
    sdata: SpatialData | Sequence[SpatialData],
    model: Any = "ridge",
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
    max_epochs: int | None = None,
    seed: int | None = 0,
    device: str | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    progress: bool | None = None,
    cache_embeddings: bool = True,
    **model_kwargs: Any,
) -> Predictor:
    """Fit a predictor on the measured spots of one or more slides.

    Targets are the counts normalised to 10,000 per spot and log1p-transformed (recorded with the model).

    Parameters
    ----------
    {sdata}
        Or a list of them (one predictor fitted on all their spots).
    model
        A registered name (see :func:`stpredict.models.list_predictors`) or an unfitted predictor.
    genes
        Gene panel: a list, or an integer ``n`` for the top ``n`` highly variable genes (seurat_v3 on the raw
        counts of the training spots, batch-aware across slides). Default: ``n_genes``.
    n_genes
        Panel size when ``genes`` is ``None``.
    backbone
        Backbone for predictors that consume embeddings; default the predictor's (``handcrafted`` for ridge).
    weights
        Local weights for the backbone.
    patch_size_um
        Window side in µm (default: the backbone's, 112 µm).
    {keys}
    {mpp}
    layer
        Layer holding raw counts (``None``: ``X``).
    max_epochs
        Training budget for iterative predictors (ignored by closed-form ones).
    {seed}
    {device}
    {batch}
    {progress}
    cache_embeddings
        Store the spots' embeddings in ``obsm`` for reuse (the only change made to ``sdata``).
    **model_kwargs
        Options of the predictor (see its class).

    Returns
    -------
    The fitted predictor; ``.genes``, ``.preprocessing`` and ``.backbone`` say what it learned from what.
    Save it with ``predictor.save(path)``.

    Examples
    --------
    >>> import stpredict as stp
    >>> sdata = stp.datasets.synthetic(image_size=512, n_genes=5, seed=0)
    >>> pred = stp.tl.fit(sdata, "ridge", progress=False)
    >>> len(pred.genes)
    5
    """
    sdatas = list(sdata) if isinstance(sdata, list | tuple) else [sdata]
    predictor, fitted = resolve_model(model, model_kwargs)
    if fitted:
        msg = "fit() takes a model name or an unfitted predictor; this one is already fitted."
        raise ValueError(msg)
    t0 = time.perf_counter()
    tr = Training(
        sdatas,
        predictor,
        genes=genes,
        n_genes=n_genes,
        backbone=backbone,
        weights=weights,
        patch_size_um=patch_size_um,
        image_key=image_key,
        spots_key=spots_key,
        table_key=table_key,
        microns_per_pixel=microns_per_pixel,
        layer=layer,
    )
    logger.info(
        "fit: %s on %d spots of %d slide(s), %d genes.",
        predictor.name,
        sum(s.n for s in tr.slides),
        len(sdatas),
        len(tr.genes),
    )
    tr.embed(device=device, batch_size=batch_size, num_workers=num_workers, progress=progress)
    set_device(predictor, device, progress)
    tr.annotate(predictor)
    genes_, prep, bb, training = predictor.genes, predictor.preprocessing, predictor.backbone, predictor.training
    fit_predictor(predictor, tr.slides, tr.genes, max_epochs=max_epochs, seed=seed)
    predictor.genes, predictor.preprocessing, predictor.backbone = genes_, prep, bb
    predictor.training = {**training, **predictor.training, "seed": seed, "max_epochs": max_epochs}
    predictor.training["fit_seconds"] = round(time.perf_counter() - t0, 3)
    if cache_embeddings:
        tr.cache_embeddings()
    logger.info("fit: done in %.1f s.", time.perf_counter() - t0)
    return predictor
