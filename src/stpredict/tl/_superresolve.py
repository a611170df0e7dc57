"""``superresolve``: predictions on a denser grid, written as new shapes and a linked table."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._args import check_flag, check_genes_arg, check_length, check_max_epochs, check_seed, check_table_name
from .._docs import doc_params
from .._keys import LAYER_IMAGE_ONLY, LAYER_STD, UNS_KEY, canonical_grid_name, grid_shapes_key, grid_table_key
from .._logging import get_logger
from .._records import StepTimes, uns_safe
from .._version import __version__
from ..models._base import Regions
from ..pp._cells import CELLS_GRID, cells_grid, check_cells_touch_spots, describe_cells
from ..pp._grid import grid_to_shapes, make_grid, resolve_tissue
from ..pp._grid_lattice import bins_lattice
from ._cells import cells_argument
from ._commit import Staged
from ._condition import CONDITIONED, apply_condition, check_grid_finer, resolve_condition
from ._embeddings import plan_regions, region_embeddings
from ._grid_out import check_output_names, map_element, same_geometry
from ._models import resolve_model, train
from ._pipeline import Compute, Elements, prepare_prediction, prepare_training, require_measured
from ._reuse import fit_or_reuse
from ._rowwise import predict_regions
from ._targets import OUTPUT_SPACE
from ._transfer import Transfer

if TYPE_CHECKING:
    from collections.abc import Sequence

    from spatialdata import SpatialData

    from ..pp._tissue import TissueMask

__all__ = ["superresolve"]

logger = get_logger(__name__)


@doc_params()
def superresolve(
    sdata: SpatialData,
    model: Any = "ridge",
    *,
    grid: str = "ps4",
    bin_size: float | None = None,
    shapes_key: str | None = None,
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
    tissue: TissueMask | np.ndarray | bool | None = None,
    condition: str | None = None,
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
    key_added: str | None = None,
    map_key: str | bool | None = None,
    inplace: bool = True,
    **model_kwargs: Any,
) -> SpatialData | None:
    """Predict expression on a grid denser than the spots: pseudo-spots, square µm bins or segmented cells.

    The grid is built by :func:`stpredict.pp.grid` (``ps4``: half the spot spacing, 4× the density; ``ps16``;
    or ``bin_size`` µm squares inside the tissue) or is the polygons of a shapes element (``grid="cells"``, a
    cell segmentation), the model (fitted here on all measured spots when given by name) predicts every
    region, and the result is written as new elements that squidpy, scanpy and spatialdata-plot use unchanged.

    Parameters
    ----------
    {sdata}
    model
        Registered name (fitted on all measured spots of ``sdata``), fitted predictor, or checkpoint path.
    grid
        ``"ps4"`` (alias ``"pseudospot4"``), ``"ps16"`` (``"pseudospot16"``), ``"bin<N>um"``, or ``"cells"``:
        one region per geometry of ``sdata.shapes[shapes_key]`` — polygons or multipolygons (Xenium cell
        boundaries, Visium HD's segmentation read as polygons, any shapes element) or circles (turned into
        64-gons), in the element's own order and coordinates, mapped onto the image through a coordinate
        system they share with it. Each cell is a region of kind ``"polygon"``: embedding-based predictors
        read one backbone window at its centroid (like a pseudo-spot; from the dense map when ``dense`` asks),
        dense-map predictors (``pixnet``) average their map over the polygon itself (linear space, then
        log1p), neighbour baselines interpolate at the centroid. No tissue mask applies: every cell is kept
        (cells whose centroid is off the image are read from white padding, with a warning). With
        ``condition="measured"`` a cell's weight in a spot is the area of polygon ∩ spot disk (shapely, µm²),
        the rule used for bins; cells outside every spot are gaps, reached by the smooth correction.
    bin_size
        Square bins of this side in µm (overrides ``grid``). Bins under ~2 image pixels are refused. On square
        measured bins (Visium HD) a side that divides theirs or is a whole multiple of it follows their own
        rotated lattice (``bin_size=8`` on 8 µm bins reproduces them, ``4`` nests four in each), and so do
        spots pooled from such bins (:func:`stpredict.pp.pool_to_spots`); otherwise the squares are aligned with
        the image axes. The table's record says which (``"lattice"``) and holds the lattice as plain numbers
        (``"lattice_frame"``, read back by :func:`stpredict.pp.grid_lattice`).
    shapes_key
        With ``grid="cells"`` (required then, refused otherwise): the shapes element of the cells. Refused
        before any work if it is missing, is a points element or holds points without radius, shares no
        coordinate system with the image, or has no centroid inside the image.
    genes
        Panel of a model fitted here (as in :func:`fit`).
    n_genes
        Panel size when ``genes`` is ``None``.
    backbone
        Backbone of embedding-based predictors.
    weights
        Local backbone weights.
    patch_size_um
        Window side in µm.
    {keys}
    {mpp}
    layer
        Layer of raw counts.
    tissue
        Tissue mask for the grid (see :func:`stpredict.pp.grid`): ``None`` detects it, ``False`` keeps all.
    condition
        ``"measured"`` (the default on a slide with counts for the model's genes): the grid agrees with the
        measured spots it refines — pooling it back over each spot (overlap-area weighted, linear units)
        gives the spot's measured value — while the predictor decides how expression is distributed inside
        and between spots, with a per-gene weight on the image's share learned on the slide (a gene the image
        does not explain falls back to a consistent interpolation); see
        :func:`stpredict.pp.condition_on_spots`. ``"denoised"``: the level is each spot's measurement denoised
        toward the image-only prediction by its count noise (:func:`stpredict.pp.denoise_measured`), so a gene
        the image explains keeps its pattern where counts are few. ``"none"``: the image-only prediction (the
        only choice on an H&E-only slide). The image weight is learned from the out-of-fold spot predictions
        that ``stp.tl.predict(sdata, model, oof_folds=5)`` stores (recommended for flexible models such as
        ``histosge``, whose in-sample fit over-trusts the image), else from the grid pooled over the spots.
        A grid coarser than the measured regions (e.g. ``bin_size=16`` on 8 µm bins, cells larger than the
        bins) cannot agree with them: ``"measured"``/``"denoised"`` raise before any work, and the default
        gives it the image-only prediction with a warning.
    max_epochs
        Training budget of iterative predictors.
    {seed}
        Also makes sampling of generative models reproducible.
    {device}
    {batch}
    {progress}
    {dense}
    {transfer}
    {augment}
    key_added
        Table name; default ``f"<model>_<spots_key>_<grid>"`` (``grid="cells"``: ``f"<model>_<spots_key>_cells"``).
    map_key
        Also write the model's dense expression map (models that make one: ``pixnet``) as an image element with
        one channel per gene, for napari or spatialdata-plot: ``True`` names it ``f"<model>_<spots_key>_map"``.
        Values are linear normalised expression (counts per 1e4, no log) at the model's map resolution, over
        the spots' bounding box; the image carries the H&E's transformations scaled to its pixel size.
    {inplace}
    **model_kwargs
        Options of the predictor, when ``model`` is a name.

    Returns
    -------
    ``None``, having added

    - ``sdata.shapes[f"<spots_key>_<grid>"]`` — circles (pseudo-spots) or squares (bins) in the spots'
      coordinates, with their transformations;
    - with ``map_key``, ``sdata.images[map_key]`` (``c`` = genes), its parameters in the table's ``uns``;
    - ``sdata.tables[f"<model>_<spots_key>_<grid>"]`` annotating them: ``X`` the predicted expression on
      the scale recorded in ``uns`` (log1p of counts normalised to 1e4; aggregation, if any, done in linear
      space before the log; with ``condition="measured"``/``"denoised"``, conditioned on the measured
      spots), ``layers["predicted_std"]`` (carried through the conditioning), ``layers["image_only"]`` (the
      unconditioned prediction, when conditioned), ``obsm["spatial"]`` in the image's
      full-resolution pixels, ``obs["nearest_spot"]`` and ``obs["measured"]`` (the region is a measured spot), and
      ``uns["stpredict"]["superresolve"]`` with every parameter (``["condition"]``: the mode, the per-gene
      image weights and the achieved consistency error).

    With ``grid="cells"`` no shapes element is written: ``sdata.tables[f"<model>_<spots_key>_cells"]`` (or
    ``key_added``) annotates ``sdata.shapes[shapes_key]`` itself, one row per cell in the element's order
    (``n_obs`` = number of cells; ``obs_names`` = the shapes' index as str, ``obs["instance_id"]`` = the index
    values, ``obs["region"]`` = ``shapes_key``), ``obsm["spatial"]`` the cells' centroids in the image's
    full-resolution pixels (what ``squidpy.gr.spatial_neighbors(table, coord_type="generic")`` takes),
    ``obs["area_um2"]``, ``obs["measured"]`` all ``False``, ``obs["nearest_spot"]`` by centroid, and
    ``uns["stpredict"]["superresolve"]["cells"]`` (shapes key, coordinate system, median area).

    With ``inplace=False``, a new SpatialData holding only those two elements (cells: the table and the
    user's shapes element, not copied).

    Examples
    --------
    >>> import stpredict as stp
    >>> sdata = stp.datasets.synthetic(image_size=512, n_genes=5, seed=0)
    >>> stp.tl.superresolve(sdata, "ridge", grid="ps4", progress=False)
    >>> sdata.tables["ridge_spots_ps4"].n_obs > 3 * 20
    True
    """
    from spatialdata import SpatialData

    check_seed(seed)
    check_max_epochs(max_epochs)
    check_genes_arg(genes, n_genes)
    check_length("patch_size_um", patch_size_um, hint=" It is the side of the window read around a region.")
    check_length("bin_size", bin_size, hint=" Bins are squares of bin_size µm, e.g. bin_size=8.")
    check_flag("inplace", inplace)
    if isinstance(grid, str) and grid.strip().lower() == CELLS_GRID:
        grid = CELLS_GRID
    predictor, fitted = resolve_model(model, model_kwargs)
    if map_key and not hasattr(predictor, "predict_map"):
        msg = f"map_key: model {predictor.name!r} makes no dense map; only predictors with `predict_map` (e.g. 'pixnet') do."
        raise ValueError(msg)
    run = Compute(device, batch_size, num_workers, progress, dense).check_here()
    elements = Elements(image_key, spots_key, table_key, microns_per_pixel)
    t0 = time.perf_counter()
    # cells are checked before any work (elements, geometry, transformations, overlap with the image)
    cells = cells_argument(sdata, grid, bin_size, shapes_key, elements)
    if cells is not None:
        grid_name = CELLS_GRID
    elif bin_size is not None:
        grid_name = canonical_grid_name(f"bin{float(bin_size):g}um")
    else:
        grid_name = canonical_grid_name(grid)
    if not fitted:
        require_measured(sdata, elements, verb="superresolve", model=predictor.name)
        inputs = prepare_training(
            [sdata], predictor, genes=genes, n_genes=n_genes, backbone=backbone, weights=weights,
            patch_size_um=patch_size_um, elements=elements, layer=layer,
            transfer=Transfer(stain, feature_norm, stain_augment),
        )  # fmt: skip
    else:
        inputs = prepare_prediction(
            sdata, predictor, backbone=backbone, weights=weights, patch_size_um=patch_size_um,
            elements=elements, layer=layer, stain=stain, feature_norm=feature_norm, stain_augment=stain_augment,
        )  # fmt: skip
    slide, geo, bb = inputs.slides[0], inputs.geos[0], inputs.backbone
    asked, condition = condition, resolve_condition(condition, slide, inputs.genes)
    steps = StepTimes()
    # grid first: it validates bin size and lattice before any training
    if cells is None:
        with steps("tissue"):
            mask = resolve_tissue(sdata, geo, tissue)
        with steps("grid"):
            points = make_grid(geo, grid_name, mask=mask, lattice=bins_lattice(sdata, geo, inputs.table(0), grid_name))
        out_shapes = grid_shapes_key(geo.spots_key, grid_name)
    else:
        with steps("grid"):
            points = cells_grid(cells, geo)
            if condition in CONDITIONED:
                check_cells_touch_spots(points, geo)
        out_shapes = cells.shapes_key  # the table annotates the user's segmentation itself
    condition = check_grid_finer(points, geo, condition, asked=asked)
    table_name = key_added if key_added is not None else grid_table_key(predictor.name, geo.spots_key, grid_name)
    image_name = (f"{predictor.name}_{geo.spots_key}_map" if map_key is True else map_key) or None
    # the names of the outputs, checked before any work: only an earlier superresolve's outputs are replaced
    if inplace:
        check_table_name(sdata, table_name, measured=geo.table_key)
        check_output_names(sdata, out_shapes if cells is None else None, image_name, geo.image_key)
    logger.info("superresolve: %s on %s (%d regions from %d spots).", predictor.name, grid_name, points.n, geo.n_spots)
    if bb is not None:
        plan_regions(slide, geo, points, inputs.cache, run)
    reused_fit = None
    if not fitted:
        with steps("spot_features"):
            inputs.embed(run)
        with steps("fit"):
            if isinstance(model, str):  # by name: an identical earlier fit is reused (tl/_reuse.py)
                predictor, reused_fit = fit_or_reuse(predictor, inputs, run, max_epochs=max_epochs, seed=seed)
            else:
                train(predictor, inputs, run, max_epochs=max_epochs, seed=seed)
    else:
        predictor.device, predictor.progress = run.device, run.progress
        if bb is not None and (predictor.uses_slide_embeddings or inputs.transfer.feature_norm == "slide"):
            # the measured spots are the context the grid regions attend over (and their statistics
            # standardise the grid's features)
            with steps("spot_features"):
                slide.embeddings = inputs.spot_embeddings(0, run)
    emb, emb_info = (None, {})
    if bb is not None:
        with steps("grid_features"):
            emb, emb_info = region_embeddings(slide, points, inputs.cache, run=run)
        inputs.cache.maps.release()  # every window is read: the map is not needed again
    regions = Regions(points.centers, points.kind, points.size_um, points.name, emb, polygons_px=points.polygons)
    regions.meta["seed"] = seed
    with steps("predict"):
        mean, std = predict_regions(predictor, slide, regions)
    emb = regions = None  # the grid's features are not needed again
    genes_out = list(predictor.genes)
    image_only = np.asarray(mean, dtype=np.float32)
    cond_record: dict[str, Any] = {"condition": "none"}
    if condition in CONDITIONED:
        with steps("condition"):
            mean, std, cond_record = apply_condition(
                mean, std, slide=slide, geo=geo, points=points, table=inputs.table(0), model=predictor.name,
                genes=genes_out, denoise=condition == "denoised",
            )  # fmt: skip

    # build both elements, then write them together
    import anndata as ad
    from spatialdata.models import TableModel

    t_out = time.perf_counter()
    if cells is None:
        shapes = grid_to_shapes(geo, points)
        obs = pd.DataFrame(index=pd.Index([f"{grid_name}_{i}" for i in range(points.n)]))
        instance_id = np.arange(points.n)
    else:
        shapes = sdata.shapes[out_shapes]
        obs = pd.DataFrame(index=pd.Index(cells.index.astype(str)))
        instance_id = cells.index
    obs["region"] = pd.Categorical([out_shapes] * points.n)
    obs["instance_id"] = instance_id
    obs["nearest_spot"] = np.asarray(geo.obs_names)[points.nearest_spot].astype(str)
    obs["measured"] = points.measured
    if cells is not None:
        import shapely

        obs["area_um2"] = shapely.area(points.polygons) * float(np.prod(geo.microns_per_pixel_xy))
    adata = ad.AnnData(X=np.asarray(mean, dtype=np.float32), obs=obs, var=pd.DataFrame(index=pd.Index(genes_out)))
    if std is not None:
        adata.layers[LAYER_STD] = np.asarray(std, dtype=np.float32)
    if condition in CONDITIONED:
        adata.layers[LAYER_IMAGE_ONLY] = image_only
    adata.obsm["spatial"] = points.centers.astype(np.float64)
    steps.seconds["output"] = round(time.perf_counter() - t_out, 3)
    record = {
        "model": predictor.name,
        "config": predictor.config,
        "mode": "fitted model"
        if fitted
        else ("fitted here on all measured spots" if reused_fit is None else "reused an identical earlier fit"),
        **({"reused_fit": reused_fit} if reused_fit is not None else {}),
        "grid": grid_name,
        "region_kind": points.kind,
        "region_size_um": points.size_um,
        **({"lattice": points.lattice} if points.lattice is not None else {}),
        **({"lattice_frame": points.frame.to_record()} if points.frame is not None else {}),
        "n_regions": points.n,
        "spots_key": geo.spots_key,
        "image_key": geo.image_key,
        "genes": genes_out,
        "output_space": OUTPUT_SPACE,
        "preprocessing": predictor.preprocessing,
        "backbone": predictor.backbone,
        "embeddings": emb_info,
        "condition": cond_record,
        "tissue_mask": "not used (cells)"
        if cells is not None
        else ("detected" if tissue is None else ("none" if tissue is False else "given")),
        "seed": seed,
        "device": str(device or "settings"),
        "stpredict_version": __version__,
        "seconds": round(time.perf_counter() - t0, 3),
        "step_seconds": steps.seconds,
        **{k: v for k, v in predictor.training.items() if k in ("n_samples", "budget")},
    }
    if cells is not None:
        record["cells"] = describe_cells(cells, geo)
    map_image = None
    if image_name is not None:
        map_image, map_info = map_element(sdata, predictor, slide, geo)
        record["map"] = {"key": image_name, **map_info}
    adata.uns[UNS_KEY] = {"superresolve": uns_safe(record)}
    adata = TableModel.parse(adata, region=out_shapes, region_key="region", instance_key="instance_id")
    if not inplace:
        images = {image_name: map_image} if map_image is not None else {}
        return SpatialData(images=images, shapes={out_shapes: shapes}, tables={table_name: adata})
    # everything is built: stage the changes and apply them in one step (undone whole if interrupted)
    staged = Staged()
    if table_name in sdata.tables:
        logger.info("Replacing table %r.", table_name)
    if cells is None and out_shapes in sdata.shapes and not same_geometry(sdata.shapes[out_shapes], shapes):
        logger.warning(
            "Replacing shapes %r with a different grid; tables annotating the old one are now stale.", out_shapes
        )
        staged.set(sdata.shapes, out_shapes, shapes)
    elif out_shapes not in sdata.shapes:
        staged.set(sdata.shapes, out_shapes, shapes)
    staged.set(sdata.tables, table_name, adata)
    if map_image is not None:
        staged.set(sdata.images, image_name, map_image)
    staged.apply()
    logger.info(
        "Added shapes %r and table %r (%d regions × %d genes) in %.1f s.",
        out_shapes, table_name, points.n, len(genes_out), time.perf_counter() - t0,
    )  # fmt: skip
    return None
