"""Cohort verbs: ``embed_cohort`` and ``predict_cohort``, one task per slide, resumable, each slide isolated."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._docs import doc_params
from .._keys import LAYER_PREDICTED, UNS_KEY
from .._logging import get_logger
from .._records import jsonable
from .._version import __version__
from ._cohort_client import check_client, check_resources
from ._cohort_run import check_slides, persist, run_cohort
from ._options import Compute, Elements
from ._pipeline import embed_slide

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import pandas as pd
    from spatialdata import SpatialData

    from ..models._base import Predictor
    from ..models.backbones import Backbone

__all__ = ["embed_cohort", "embed_on_client", "predict_cohort"]

logger = get_logger(__name__)

_COHORT_DOC = """\
slides
    Paths of SpatialData zarr stores (or SpatialData objects, for small cohorts). A store is opened where its
    task runs (images stay lazy) and its results are written back into it, all or nothing
    (:func:`stpredict.io.write_back`); an in-memory SpatialData is changed in place (and written into its store
    when it is backed by one). The element names below are the same in every slide.
client
    A ``dask.distributed.Client``: one task per store on its workers (in-memory slides stay in this process).
    ``None``: one slide after the other here. Workers see the stores by their paths (a shared filesystem).
{resources}
progress
    One progress bar over the slides (the per-slide bars stay off).
raise_on_error
    Raise :class:`~stpredict.tl.CohortError` at the end if any slide failed (its ``status`` attribute holds the
    table). Default: report failures in the table and log them."""

_STATUS_DOC = """\
A :class:`pandas.DataFrame`, one row per slide in input order: ``slide`` (path, or ``sdata[i]``), ``status``
(``"done"``; ``"cached"``: found already in the store with the same parameters, nothing recomputed; or
``"failed"``), ``seconds``, ``n_spots``, ``worker`` and ``error`` (type and message). Its
``attrs["resources"]`` records the worker resources each slide's task asked for (``None`` without a client)."""


# ------------------------------------------------------------------------------------------------------
# embed_cohort
# ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _EmbedSpec:
    backbone: Backbone
    patch_size_um: float | None
    elements: Elements
    run: Compute
    key_added: str | None


def _embed_task(sdata: SpatialData, spec: _EmbedSpec) -> tuple[str, int]:
    _, cache, geo = embed_slide(
        sdata, spec.backbone, spec.patch_size_um, spec.elements, spec.run, key_added=spec.key_added
    )
    if not cache.computed:
        return "cached", geo.n_spots
    cache.commit()
    persist(sdata, [geo.table_key])
    return "done", geo.n_spots


@doc_params(cohort=_COHORT_DOC, status=_STATUS_DOC)
def embed_cohort(
    slides: Sequence[Any],
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
    dense: bool | None = None,
    key_added: str | None = None,
    client: Any = None,
    resources: Mapping[str, float] | None = None,
    progress: bool | None = None,
    raise_on_error: bool = False,
) -> pd.DataFrame:
    """:func:`~stpredict.tl.embed` every slide of a cohort, caching the features in each slide's store.

    A slide whose table already holds these embeddings (same backbone, weights hash, window, image, pixel size,
    path and stpredict version; every spot finite) is not recomputed, so a rerun after a crash or an
    interruption computes only the slides that were missing. A slide that fails (unreadable store, missing
    image, no spots) is reported in the table with its error; the others finish.

    Parameters
    ----------
    {cohort}
    backbone
        As in :func:`~stpredict.tl.embed`; resolved once, here, before any slide is read.
    weights
        Local weights file for the backbone.
    patch_size_um
        Window side in µm (default: the backbone's).
    {keys}
    {mpp}
    {device}
    batch_size
        Patches per batch.
    {dense}
    key_added
        ``obsm`` key; default ``"X_<backbone name>"``.

    Returns
    -------
    {status}

    Examples
    --------
    >>> import stpredict as stp  # doctest: +SKIP
    >>> from distributed import Client, LocalCluster  # doctest: +SKIP
    >>> client = Client(LocalCluster(n_workers=2, threads_per_worker=1))  # doctest: +SKIP
    >>> status = stp.tl.embed_cohort(["s1.zarr", "s2.zarr"], "handcrafted", client=client)  # doctest: +SKIP
    """
    from ..models.backbones import get_backbone

    check_client(client, "embed_cohort")
    res = check_resources(client, resources, "embed_cohort")
    items = check_slides(slides)
    run = Compute(device, batch_size, None, progress=False, dense=dense)
    bb = get_backbone(backbone, weights=weights)
    spec = _EmbedSpec(bb, patch_size_um, Elements(image_key, spots_key, table_key, microns_per_pixel), run, key_added)
    return run_cohort(
        _embed_task, items, spec, client=client, resources=res, progress=progress, desc="embed_cohort",
        raise_on_error=raise_on_error,
    )  # fmt: skip


def embed_on_client(
    stores: Sequence[str],
    backbone: Backbone,
    *,
    patch_size_um: float | None,
    elements: Elements,
    run: Compute,
    client: Any,
    resources: Mapping[str, float] | None,
) -> pd.DataFrame:
    """Embed ``stores`` on the client's workers (:func:`embed_cohort`), the features cached in each store.

    What :func:`~stpredict.tl.fit` and :func:`~stpredict.tl.cross_validate` do with a client before reading the
    stores' embeddings through their cache, each store's task asking for ``resources`` (as
    :func:`~stpredict.tl._cohort_client.check_resources` resolved them); a store that fails raises
    :class:`~stpredict.tl.CohortError`. Returns the status table.
    """
    return embed_cohort(
        stores,
        backbone,
        patch_size_um=patch_size_um,
        image_key=elements.image_key,
        spots_key=elements.spots_key,
        table_key=elements.table_key,
        microns_per_pixel=elements.microns_per_pixel,
        device=run.device,
        batch_size=run.batch_size,
        dense=run.dense,
        client=client,
        resources=resources,
        progress=run.progress,
        raise_on_error=True,
    )


# ------------------------------------------------------------------------------------------------------
# predict_cohort
# ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _PredictSpec:
    model: Predictor
    request: str
    options: dict[str, Any]
    key_added: str


def _request(digest: str, options: dict[str, Any], key_added: str) -> str:
    """Hash of everything that decides a cohort prediction: the model, the options and the stpredict version."""
    text = json.dumps(
        jsonable({"model": digest, "options": options, "key": key_added, "v": __version__}), sort_keys=True
    )
    return hashlib.sha256(text.encode()).hexdigest()


def _predict_task(sdata: SpatialData, spec: _PredictSpec) -> tuple[str, int]:
    from ._pipeline import spot_geometry
    from ._predict import predict

    elements = Elements(*(spec.options[k] for k in ("image_key", "spots_key", "table_key", "microns_per_pixel")))
    geo = spot_geometry(sdata, elements, need_targets=False, layer=None)
    name = geo.table_key if geo.table_key is not None else "predictions"
    table = sdata.tables.get(name)
    if table is not None:
        rec = table.uns.get(UNS_KEY, {}).get(spec.key_added, {})
        if rec.get("cohort_request") == spec.request and spec.key_added in table.layers:
            return "cached", geo.n_spots
    predict(sdata, spec.model, **spec.options, key_added=spec.key_added, progress=False)
    sdata.tables[name].uns[UNS_KEY][spec.key_added]["cohort_request"] = spec.request
    persist(sdata, [name])
    return "done", geo.n_spots


@doc_params(cohort=_COHORT_DOC, status=_STATUS_DOC)
def predict_cohort(
    slides: Sequence[Any],
    model: Any,
    *,
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
    dense: bool | None = None,
    stain: str | None = None,
    feature_norm: str | None = None,
    key_added: str = LAYER_PREDICTED,
    client: Any = None,
    resources: Mapping[str, float] | None = None,
    progress: bool | None = None,
    raise_on_error: bool = False,
) -> pd.DataFrame:
    """:func:`~stpredict.tl.predict` every slide of a cohort with one fitted model, into each slide's store.

    Each slide's table gets what :func:`~stpredict.tl.predict` writes for a fitted model (``layers[key_added]``,
    its ``_std``, ``var``/``obsm``/``uns`` entries; a table ``"predictions"`` on an H&E-only slide), and
    ``uns["stpredict"][key_added]["cohort_request"]``: a hash of the model's
    :func:`~stpredict.models.digest`, these options and the stpredict version. A slide whose table already
    carries that hash is not predicted again, so a rerun does only the slides that are missing.

    Parameters
    ----------
    {cohort}
    model
        A fitted predictor (``stp.tl.fit(stores, ...)``) or the path of a saved checkpoint. It is sent to each
        worker once.
    backbone, weights, patch_size_um
        Only to point at local weights of the backbone the model was fitted with (see
        :func:`~stpredict.tl.predict`).
    {keys}
    {mpp}
    layer
        Layer of raw counts (``None``: ``X``).
    {device}
    batch_size
        Patches per batch.
    {dense}
    stain, feature_norm
        Only to repeat what the model was fitted with (``None``: the model's).
    key_added
        Name of the prediction layers.

    Returns
    -------
    {status}
    """
    from ..models._checkpoint import digest
    from ._models import resolve_model

    check_client(client, "predict_cohort")
    res = check_resources(client, resources, "predict_cohort")
    items = check_slides(slides)
    predictor, fitted = resolve_model(model, {})
    if not fitted:
        msg = (
            "predict_cohort takes a fitted predictor or a checkpoint path: fit one first, e.g. "
            "stp.tl.fit(training_stores, model) (per-slide out-of-fold predictions: stp.tl.predict on each slide)."
        )
        raise ValueError(msg)
    Compute(device, batch_size, None, progress=False, dense=dense)  # refuse bad values before any slide is read
    options = {
        "backbone": backbone,
        "weights": weights,
        "patch_size_um": patch_size_um,
        "image_key": image_key,
        "spots_key": spots_key,
        "table_key": table_key,
        "microns_per_pixel": microns_per_pixel,
        "layer": layer,
        "device": device,
        "batch_size": batch_size,
        "dense": dense,
        "stain": stain,
        "feature_norm": feature_norm,
    }
    recorded = {k: v for k, v in options.items() if k not in ("device", "batch_size")}
    spec = _PredictSpec(predictor, _request(digest(predictor), recorded, key_added), options, key_added)
    return run_cohort(
        _predict_task,
        items,
        spec,
        client=client,
        resources=res,
        progress=progress,
        desc="predict_cohort",
        raise_on_error=raise_on_error,
    )
