"""``predict``: per-spot predictions into the spots table."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._args import (
    check_flag,
    check_genes_arg,
    check_length,
    check_max_epochs,
    check_oof_folds,
    check_predict_key,
    check_seed,
)
from .._docs import doc_params
from .._keys import LAYER_PREDICTED, UNS_KEY
from .._logging import get_logger
from .._records import uns_safe
from .._version import __version__
from ..models._base import Regions
from ..models._checkpoint import digest
from ._commit import Staged
from ._models import resolve_model, slide_fingerprint
from ._oof import cross_fit
from ._pipeline import Compute, Elements, prepare_prediction, prepare_training, require_measured, spot_kind
from ._targets import OUTPUT_SPACE
from ._transfer import Transfer

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData
    from spatialdata import SpatialData

    from ..pp._spots import SpotGeometry

__all__ = ["predict"]

logger = get_logger(__name__)

#: the table ``predict`` creates on a slide without one (H&E only)
PREDICTIONS_TABLE = "predictions"


def check_new_table(sdata: SpatialData, table: AnnData | None) -> None:
    """On an H&E-only slide, the new table may replace only predictions an earlier ``predict`` wrote."""
    if table is not None or PREDICTIONS_TABLE not in sdata.tables:
        return
    if UNS_KEY not in sdata.tables[PREDICTIONS_TABLE].uns:
        msg = (
            f"This slide has no table of counts, so predict writes a new table {PREDICTIONS_TABLE!r}, and the "
            f"SpatialData already has a table {PREDICTIONS_TABLE!r} that predict did not write: rename it first."
        )
        raise ValueError(msg)


@doc_params()
def predict(
    sdata: SpatialData,
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
    oof_folds: int = 5,
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
    key_added: str = LAYER_PREDICTED,
    inplace: bool = True,
    **model_kwargs: Any,
) -> AnnData | None:
    """Predict expression at every spot and write it into the spots table.

    With a model **name** (or an unfitted predictor), the model is fitted on the measured spots of
    ``sdata`` and every measured spot gets an **out-of-fold** prediction: the spots are cut into spatial
    blocks dealt to ``oof_folds`` folds, and each fold is predicted by a model fitted on the other folds — so
    no spot is predicted by a model that saw its counts. With a **fitted** predictor or a **checkpoint** path,
    that model predicts every spot (a slide it was trained on is flagged as in-sample in ``.uns``).

    Parameters
    ----------
    {sdata}
    model
        Registered name, fitted predictor, or path of a saved ``.safetensors`` checkpoint.
    genes
        Panel for a model fitted here: a list (``var_names``, Ensembl ids with or without version, or symbols
        of a ``var`` symbol column such as ``gene_symbol``), or ``n`` highly variable genes (seurat_v3 on this
        slide's raw counts). Default: ``n_genes``. A fitted model predicts its own panel.
    n_genes
        Panel size when ``genes`` is ``None``.
    backbone
        Backbone for embedding-based predictors (default the predictor's, or the one a fitted model used).
    weights
        Local weights for the backbone.
    patch_size_um
        Window side in µm (default the backbone's, 112 µm; a fitted model uses its own).
    {keys}
    {mpp}
    layer
        Layer of raw counts (``None``: ``X``).
    oof_folds
        Folds of the spatially blocked cross-fitting (at least 2).
    max_epochs
        Training budget of iterative predictors.
    {seed}
    {device}
    {batch}
    {progress}
    {dense}
    {transfer}
    {augment}
    key_added
        Name of the layers: ``layers[key_added]`` and ``layers[f"{key_added}_std"]``.
    {inplace}
    **model_kwargs
        Options of the predictor, when ``model`` is a name.

    Returns
    -------
    ``None``, having written into ``sdata.tables[table_key]``:

    - ``layers["predicted"]`` — float32, NaN for genes the model does not predict (and rows not annotating
      the spots); on the scale recorded in ``uns`` (log1p of counts normalised to 1e4 by default);
    - ``layers["predicted_std"]`` — predictive standard deviation, when the model gives one;
    - ``var["predicted"]`` — True for the genes of the panel;
    - ``obsm["predicted"]`` — DataFrame of the whole panel, including genes the table does not measure;
    - ``uns["stpredict"]["predicted"]`` — model, panel, preprocessing, backbone, folds, seed, timings.

    On a slide without a table (H&E only), a table ``"predictions"`` annotating the spots is created, with the
    predictions as ``X``. With ``inplace=False`` the table is returned as a new AnnData instead.

    Examples
    --------
    >>> import stpredict as stp
    >>> sdata = stp.datasets.synthetic(image_size=512, n_genes=5, seed=0)
    >>> stp.tl.predict(sdata, "ridge", progress=False)
    >>> sdata.tables["table"].layers["predicted"].shape
    (20, 5)
    """
    check_seed(seed)
    check_max_epochs(max_epochs)
    check_genes_arg(genes, n_genes)
    check_length("patch_size_um", patch_size_um, hint=" It is the side of the window read around a spot.")
    check_flag("inplace", inplace)
    predictor, fitted = resolve_model(model, model_kwargs)
    run = Compute(device, batch_size, num_workers, progress, dense).check_here()
    elements = Elements(image_key, spots_key, table_key, microns_per_pixel)
    t0 = time.perf_counter()
    record: dict[str, Any] = {"model": predictor.name, "config": predictor.config}
    if not fitted:
        check_oof_folds(oof_folds)
        require_measured(sdata, elements, verb="predict", model=predictor.name)
        inputs = prepare_training(
            [sdata], predictor, genes=genes, n_genes=n_genes, backbone=backbone, weights=weights,
            patch_size_um=patch_size_um, elements=elements, layer=layer,
            transfer=Transfer(stain, feature_norm, stain_augment),
        )  # fmt: skip
        slide = inputs.slides[0]
        check_oof_folds(oof_folds, slide.n)
        check_predict_key(inputs.table(0), inputs.geos[0].table_key, key_added, layer=layer)
        logger.info(
            "predict: %s, %d spots, %d genes, %d-fold spatially blocked cross-fitting.",
            predictor.name,
            slide.n,
            len(inputs.genes),
            oof_folds,
        )
        inputs.embed(run)
        fits: list[dict[str, Any]] = []
        mean, std, folds, block = cross_fit(
            predictor, inputs, run, slide, n_folds=oof_folds, max_epochs=max_epochs, seed=seed, trainings=fits
        )
        has_std = std is not None
        genes_out = inputs.genes
        record.update(
            {
                "mode": "out-of-fold",
                "oof_folds": oof_folds,
                "oof_block_um": round(block, 2),
                "oof_fold": folds.astype(np.int32),
                "gene_selection": inputs.gene_selection,
                "backbone": inputs.backbone_params,
                # iterative predictors: the training budget every fold used, and each fold's fit time
                "budget": next((f["budget"] for f in fits if "budget" in f), None),
                "fold_fit_seconds": [f["fit_seconds"] for f in fits],
            }
        )
        preprocessing = {"normalize_total": 1e4, "log1p": True}
    else:
        inputs = prepare_prediction(
            sdata, predictor, backbone=backbone, weights=weights, patch_size_um=patch_size_um,
            elements=elements, layer=layer, stain=stain, feature_norm=feature_norm, stain_augment=stain_augment,
        )  # fmt: skip
        slide = inputs.slides[0]
        check_predict_key(inputs.table(0), inputs.geos[0].table_key, key_added, layer=layer)
        check_new_table(sdata, inputs.table(0))
        # context for predictors that attend over the measured spots
        slide.embeddings = inputs.spot_embeddings(0, run)
        regions = Regions(slide.centers_px, spot_kind(slide), slide.spot_diameter_um, "spots", slide.embeddings)
        predictor.device, predictor.progress = run.device, run.progress
        mean, std = predictor.predict(slide, regions)
        has_std = std is not None
        genes_out = predictor.genes
        in_sample = slide_fingerprint(slide) in predictor.training.get("fingerprints", [])
        if in_sample:
            logger.warning(
                "The model was trained on this slide: its predictions of the measured spots are in-sample. "
                "Use stp.tl.predict(sdata, model=<name>) for out-of-fold predictions."
            )
        record.update(
            {
                "mode": "fitted model",
                "in_sample": bool(in_sample),
                "backbone": predictor.backbone,
                "model_sha256": digest(predictor),
            }
        )
        preprocessing = predictor.preprocessing
    record.update(
        {
            "genes": list(genes_out),
            "output_space": OUTPUT_SPACE,
            "preprocessing": preprocessing,
            "seed": seed,
            "device": str(device or "settings"),
            "stpredict_version": __version__,
            "seconds": round(time.perf_counter() - t0, 3),
            "std": bool(has_std),
        }
    )
    geo = inputs.geos[0]
    staged = Staged()
    out = _write_table(
        sdata,
        geo,
        genes=genes_out,
        mean=mean,
        std=std if has_std else None,
        record=record,
        key_added=key_added,
        inplace=inplace,
        staged=staged,
    )
    if inplace and not fitted:
        inputs.stage(staged)
    # everything is built: the one step that changes sdata (undone whole if interrupted)
    staged.apply()
    logger.info("predict: done in %.1f s.", time.perf_counter() - t0)
    return out


def _write_table(
    sdata: SpatialData,
    geo: SpotGeometry,
    *,
    genes: Sequence[str],
    mean: np.ndarray,
    std: np.ndarray | None,
    record: dict[str, Any],
    key_added: str,
    inplace: bool,
    staged: Staged,
) -> AnnData | None:
    """Stage per-spot predictions into the spots table (or a new table on an H&E-only slide) in ``staged``.

    Nothing is written until ``staged.apply()``. With ``inplace=False`` the new or copied table is returned.
    """
    import anndata as ad

    table_key = geo.table_key

    genes = list(genes)
    record = uns_safe(record)
    if table_key is None or sdata.tables[table_key].n_vars == 0:
        from spatialdata.models import TableModel

        obs = pd.DataFrame(index=pd.Index(geo.obs_names.astype(str)))
        obs["region"] = pd.Categorical([geo.spots_key] * geo.n_spots)
        obs["instance_id"] = geo.shapes_index
        adata = ad.AnnData(X=mean.astype(np.float32), obs=obs, var=pd.DataFrame(index=pd.Index(genes)))
        adata.layers[key_added] = mean.astype(np.float32)
        if std is not None:
            adata.layers[f"{key_added}_std"] = std.astype(np.float32)
        adata.var[key_added] = True
        adata.uns[UNS_KEY] = {key_added: record}
        adata.obsm["spatial"] = geo.centers
        adata = TableModel.parse(adata, region=geo.spots_key, region_key="region", instance_key="instance_id")
        if not inplace:
            return adata
        name = PREDICTIONS_TABLE if table_key is None else table_key
        staged.set(sdata.tables, name, adata)
        logger.info("Adding table %r (X = predictions) annotating %r.", name, geo.spots_key)
        return None
    table = sdata.tables[table_key]
    target = table.copy() if not inplace else table
    col = target.var_names.get_indexer(genes)
    present = col >= 0
    full = np.full((target.n_obs, target.n_vars), np.nan, dtype=np.float32)
    full[np.ix_(geo.rows, col[present])] = mean[:, present]
    layers = {key_added: full}
    if std is not None:
        full_s = np.full_like(full, np.nan)
        full_s[np.ix_(geo.rows, col[present])] = std[:, present]
        layers[f"{key_added}_std"] = full_s
    panel = pd.DataFrame(np.nan, index=target.obs_names, columns=pd.Index(genes), dtype=np.float32)
    panel.iloc[geo.rows] = mean
    # all checks passed and everything computed: stage the writes (applied together by the caller)
    flag = np.zeros(target.n_vars, dtype=bool)
    flag[col[present]] = True
    if not inplace:
        for k, v in layers.items():
            target.layers[k] = v
        if std is None and f"{key_added}_std" in target.layers:
            del target.layers[f"{key_added}_std"]
        target.var[key_added] = flag
        target.obsm[key_added] = panel
        target.uns.setdefault(UNS_KEY, {})[key_added] = record
    else:
        for k, v in layers.items():
            staged.set(target.layers, k, v)
        if std is None:
            staged.delete(target.layers, f"{key_added}_std")
        staged.set(target.var, key_added, flag)
        staged.set(target.obsm, key_added, panel)
        staged.set_in(target.uns, (UNS_KEY, key_added), record)
    if not present.all():
        logger.info(
            "%d predicted genes are not in table %r: they are in obsm[%r] only.",
            int((~present).sum()),
            table_key,
            key_added,
        )
    if inplace:
        logger.info(
            "Adding table %r layers[%r]%s, var[%r], obsm[%r], uns[%r][%r].",
            table_key,
            key_added,
            f", layers[{key_added + '_std'!r}]" if std is not None else "",
            key_added,
            key_added,
            UNS_KEY,
            key_added,
        )
        return None
    return target
