"""``embed`` and ``fit``."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .._args import check_flag, check_genes_arg, check_length, check_max_epochs, check_seed
from .._docs import doc_params
from .._logging import get_logger
from ._cohort_client import check_client, check_resources
from ._cohort_run import check_slides, open_store, persist
from ._models import resolve_model, train
from ._pipeline import Compute, Elements, embed_slide, prepare_training
from ._transfer import fit_transfer

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import numpy as np
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
    dense: bool | None = None,
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
    {dense}
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

    check_length("patch_size_um", patch_size_um, hint=" It is the side of the window read around a spot.")
    check_flag("inplace", inplace)
    run = Compute(device, batch_size, num_workers, progress, dense).check_here()
    elements = Elements(image_key, spots_key, table_key, microns_per_pixel)
    bb = get_backbone(backbone, weights=weights)
    t0 = time.perf_counter()
    emb, cache, geo = embed_slide(sdata, bb, patch_size_um, elements, run, key_added=key_added, inplace=inplace)
    if not inplace:
        return emb
    cache.commit()
    logger.info("Added table %r obsm[%r] (%.1f s).", geo.table_key, cache.key, time.perf_counter() - t0)
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
    dense: bool | None = None,
    stain: str | None = None,
    feature_norm: str | None = None,
    stain_augment: int = 0,
    cache_embeddings: bool = True,
    client: Any = None,
    resources: Mapping[str, float] | None = None,
    **model_kwargs: Any,
) -> Predictor:
    """Fit a predictor on the measured spots of one or more slides.

    Targets are the counts normalised to 10,000 per spot and log1p-transformed (recorded with the model).

    Parameters
    ----------
    {sdata}
        Or a list of them (one predictor fitted on all their spots), or paths of SpatialData zarr stores: a store
        is read lazily (the images stay on disk, read as windows are cut) and the embeddings computed for it are
        written back into it (:func:`stpredict.io.write_back`), so the next fit on the same stores reads them.
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
    {dense}
    {transfer_fit}
    {augment}
    cache_embeddings
        Store the spots' embeddings in ``obsm`` for reuse (the only change made to ``sdata``; for a store, in
        the store).
    client
        A ``dask.distributed.Client``: for stores and an embedding-based predictor, embed the stores on its
        workers first (:func:`~stpredict.tl.embed_cohort`, one task per store, features cached in each store),
        then train here on the cached features (``stain`` then defaults to ``"none"``). Ignored with
        ``stain="macenko"|"reinhard"`` or ``stain_augment`` (the embeddings are
        of the normalised slides, whose reference needs all of them).
    {resources}
        The stores' embedding tasks ask for them; ``training["resources"]`` records them when they ran there.
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
    check_seed(seed)
    check_max_epochs(max_epochs)
    check_genes_arg(genes, n_genes)
    check_length("patch_size_um", patch_size_um, hint=" It is the side of the window read around a spot.")
    check_client(client, "fit")
    res = check_resources(client, resources, "fit")
    items = check_slides(sdata, writes=False)
    predictor, fitted = resolve_model(model, model_kwargs)
    if fitted:
        msg = "fit() takes a model name or an unfitted predictor; this one is already fitted."
        raise ValueError(msg)
    run = Compute(device, batch_size, num_workers, progress, dense).check_here()
    elements = Elements(image_key, spots_key, table_key, microns_per_pixel)
    t0 = time.perf_counter()
    stores = [it for it in items if isinstance(it, str)]
    if client is not None and stores and stain is None:
        stain = "none"  # the default on a client: the stores' embeddings are computed on its workers
    on_client = False
    if client is not None and stores and stain == "none" and not stain_augment:
        on_client = _embed_on_client(
            stores, predictor, backbone=backbone, weights=weights, patch_size_um=patch_size_um, elements=elements,
            run=run, client=client, resources=res,
        )  # fmt: skip
    sdatas = [open_store(it) if isinstance(it, str) else it for it in items]
    inputs = prepare_training(
        sdatas,
        predictor,
        genes=genes,
        n_genes=n_genes,
        backbone=backbone,
        weights=weights,
        patch_size_um=patch_size_um,
        elements=elements,
        layer=layer,
        transfer=fit_transfer(stain, feature_norm, stain_augment),
    )
    logger.info(
        "fit: %s on %d spots of %d slide(s), %d genes.",
        predictor.name,
        sum(s.n for s in inputs.slides),
        len(sdatas),
        len(inputs.genes),
    )
    inputs.embed(run, keep_maps=False)  # training reads spots only: one slide's map at a time
    train(predictor, inputs, run, max_epochs=max_epochs, seed=seed)
    predictor.training.update({"seed": seed, "max_epochs": max_epochs})
    if on_client:
        predictor.training["resources"] = res
    predictor.training["fit_seconds"] = round(time.perf_counter() - t0, 3)
    if cache_embeddings:
        for i in inputs.commit():
            if isinstance(items[i], str):
                _cache_in_store(sdatas[i], inputs.geos[i].table_key, items[i])
    logger.info("fit: done in %.1f s.", time.perf_counter() - t0)
    return predictor


def _cache_in_store(sdata: SpatialData, table_key: str, path: str) -> None:
    """Write a store's new features into it; a store that refuses (read-only, locked) costs the cache, not the fit."""
    from ..io import StoreLockedError

    try:
        persist(sdata, [table_key])
    except (OSError, StoreLockedError) as e:
        logger.warning("fit: the features of %s were not cached in the store (%s); the fit is unaffected.", path, e)


def _embed_on_client(
    stores: list[str],
    predictor: Predictor,
    *,
    backbone: Any,
    weights: Any,
    patch_size_um: float | None,
    elements: Elements,
    run: Compute,
    client: Any,
    resources: Mapping[str, float] | None,
) -> bool:
    """Embed the stores on the client's workers, caching the features where ``fit`` will look for them.

    Returns whether there was anything to embed (``False`` for a predictor that reads pixels).
    """
    from ._cohort import embed_on_client
    from ._models import resolve_backbone

    bb = resolve_backbone(predictor, backbone, weights)
    if bb is None:
        logger.info("fit: %s reads pixels, not embeddings: nothing to embed on the client.", predictor.name)
        return False
    embed_on_client(
        stores, bb, patch_size_um=patch_size_um, elements=elements, run=run, client=client, resources=resources
    )
    return True
