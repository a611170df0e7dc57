"""Build predictor inputs from a SpatialData: targets, gene panels, embeddings, regions (tl-internal)."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._image import image_levels
from .._keys import UNS_KEY, embedding_key
from .._logging import get_logger
from .._settings import settings
from .._validate import check_counts
from ..pp._spots import spots as resolve_spots

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

    from anndata import AnnData
    from spatialdata import SpatialData

    from ..models._base import Predictor, Regions, SlideData
    from ..models.backbones import Backbone
    from ..pp._grid import GridPoints
    from ..pp._spots import SpotGeometry

logger = get_logger(__name__)

TARGET_SUM = 1e4
OUTPUT_SPACE = "log1p(normalize_total(1e4))"


def preprocessing_record(genes: Sequence[str], how: str) -> dict[str, Any]:
    """What the targets are, recorded with the predictor and in ``.uns``."""
    return {
        "normalize_total": TARGET_SUM,
        "log1p": True,
        "output_space": OUTPUT_SPACE,
        "gene_selection": how,
        "n_genes": len(genes),
    }


def counts_matrix(table: AnnData, layer: str | None) -> sp.csr_matrix:
    """Raw counts as CSR float64."""
    X = table.layers[layer] if layer else table.X
    return sp.csr_matrix(X, dtype=np.float64)


def targets(table: AnnData, rows: np.ndarray, genes: Sequence[str], layer: str | None) -> tuple[np.ndarray, ...]:
    """``(log1p, linear, library_size)`` of ``genes`` for table rows: normalize_total(1e4) over all genes."""
    X = counts_matrix(table, layer)[rows]
    lib = np.asarray(X.sum(1)).ravel()
    scale = np.divide(TARGET_SUM, lib, out=np.zeros_like(lib), where=lib > 0)
    idx = table.var_names.get_indexer(list(genes))
    lin = np.asarray(X[:, idx].todense()) * scale[:, None]
    return np.log1p(lin).astype(np.float32), lin.astype(np.float32), lib


def select_genes(
    tables: Sequence[tuple[AnnData, np.ndarray]],
    genes: Sequence[str] | int | None,
    *,
    layer: str | None = None,
    n_genes: int = 50,
) -> tuple[list[str], str]:
    """The gene panel: an explicit list, or the top ``n`` highly variable genes (seurat_v3) of the given rows.

    ``tables`` are ``(table, rows)`` pairs of the *training* spots only; with several slides the selection
    is batch-aware (``batch_key`` = slide) over the genes present in all of them. Only genes detected in at least
    ``max(3, 1%)`` of the spots are candidates.

    Parameters
    ----------
    tables
        ``(table, rows)`` of each training slide.
    genes
        A list of gene names (returned as given), a number of genes, or ``None`` (``n_genes``).
    layer
        Layer of raw counts (default ``X``).
    n_genes
        Number of genes when ``genes`` is ``None``.

    Returns
    -------
    ``(panel, how)``: the genes, and how they were chosen. When at most ``n`` genes are detected, all of them are
    taken (no ranking). When seurat_v3's loess fit fails (tiny panels: a few genes give it singular fits), the
    genes are ranked by dispersion (variance / mean of counts normalised to 1e4; the mean rank over slides with
    several) instead, with a logged warning; ``how`` names the method actually used.
    """
    import anndata as ad
    import scanpy as sc

    common = None
    for t, _ in tables:
        common = t.var_names if common is None else common.intersection(t.var_names, sort=False)
    if genes is not None and not isinstance(genes, int):
        genes = [str(g) for g in genes]
        if not genes:
            msg = "genes=[] asks for an empty panel: pass gene names, a number of genes, or None for n_genes."
            raise ValueError(msg)
        missing = [g for g in genes if g not in common]
        if missing:
            msg = (
                f"{len(missing)} requested genes are not measured in every training table (e.g. {missing[:5]}); "
                "a model cannot learn genes without measurements."
            )
            raise KeyError(msg)
        return genes, "given"
    n = int(genes) if isinstance(genes, int) else int(n_genes)
    parts = []
    for i, (t, rows) in enumerate(tables):
        X = counts_matrix(t, layer)[rows][:, t.var_names.get_indexer(common)]
        a = ad.AnnData(X=X, var=pd.DataFrame(index=common))
        a.obs["slide"] = str(i)
        parts.append(a)
    # spot names repeat across slides (Visium barcodes; the parts' default names always do): suffix the slide
    a = ad.concat(parts, index_unique="-") if len(parts) > 1 else parts[0]
    detected = np.asarray((a.X > 0).sum(0)).ravel()
    min_spots = max(3, int(0.01 * a.n_obs))
    a = a[:, detected >= min_spots].copy()
    if a.n_vars == 0:
        msg = (
            f"No gene is detected in at least {min_spots} of the {a.n_obs} training spots "
            f"({len(common)} genes shared by the training tables): no panel can be learned. Check that the "
            "counts layer is right (layer=...) and that the tables share gene names, or pass genes=[...]."
        )
        raise NoGenesError(msg)
    if a.n_vars <= n:
        return list(a.var_names), f"all {a.n_vars} detected genes"
    kw = {"batch_key": "slide"} if len(parts) > 1 else {}
    try:
        hvg = sc.pp.highly_variable_genes(a, flavor="seurat_v3", n_top_genes=n, inplace=False, **kw)
    except ValueError as e:  # skmisc's loess on a few genes: "There are other near singularities", "svddc failed"
        reason = e.args[0].decode(errors="replace") if e.args and isinstance(e.args[0], bytes) else str(e)
        logger.warning(
            "Highly variable genes (seurat_v3) failed on %d candidate genes (%s); ranking them by dispersion instead.",
            a.n_vars,
            reason,
        )
        return _top_dispersion(a, n, batch=len(parts) > 1), (
            f"top {n} of {a.n_vars} detected genes by dispersion (variance / mean of normalised counts) of the "
            "training spots (seurat_v3 failed)"
        )
    hvg.index = a.var_names
    rank_col = "highly_variable_rank"
    top = hvg[hvg["highly_variable"]].sort_values(rank_col) if rank_col in hvg else hvg[hvg["highly_variable"]]
    return list(top.index[:n]), f"top {n} highly variable genes (seurat_v3) of the training spots"


def _dispersion(X: sp.csr_matrix) -> np.ndarray:
    """Variance / mean of each gene's counts normalised to 1e4 (0 where the mean is 0)."""
    X = sp.csr_matrix(X, dtype=np.float64)
    lib = np.asarray(X.sum(1)).ravel()
    scale = np.divide(TARGET_SUM, lib, out=np.zeros_like(lib), where=lib > 0)
    Xn = sp.diags(scale) @ X
    mean = np.asarray(Xn.mean(0)).ravel()
    var = np.asarray(Xn.multiply(Xn).mean(0)).ravel() - mean**2
    return np.divide(var, mean, out=np.zeros_like(mean), where=mean > 0)


def _top_dispersion(a: AnnData, n: int, *, batch: bool) -> list[str]:
    """The ``n`` genes of highest dispersion; with slides, by mean within-slide rank (pooled dispersion breaks ties)."""
    pooled = _dispersion(a.X)
    if batch:
        slide = a.obs["slide"].to_numpy()
        ranks = [pd.Series(-_dispersion(a.X[slide == b])).rank(method="average").to_numpy() for b in np.unique(slide)]
        order = np.lexsort((-pooled, np.mean(ranks, axis=0)))
    else:
        order = np.argsort(-pooled, kind="stable")
    return list(a.var_names[order[:n]])


class NoGenesError(ValueError):
    """No gene of the training data is detected often enough to be learned."""


# ------------------------------------------------------------------------------------------------------
# embeddings
# ------------------------------------------------------------------------------------------------------
def compute_embeddings(
    slide_levels: list,
    centers_px: np.ndarray,
    mpp_xy: tuple[float, float],
    backbone: Backbone,
    *,
    patch_size_um: float,
    device: Any = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    progress: bool | None = None,
    desc: str = "embed",
    prefetch: bool | None = None,
    sync_every: int = 8,
) -> np.ndarray:
    """Backbone features of windows around ``centers_px``, read lazily and batched.

    On CUDA, batches are read ahead in a thread (without DataLoader workers), cross to the device as uint8
    from pinned memory, and their features are copied back every ``sync_every`` batches; ``prefetch``
    forces the reading thread on or off (default: on CUDA only).
    """
    from tqdm.auto import tqdm

    from ..pp._patches import PatchDataset, PatchExtractor

    n = len(centers_px)
    out = np.zeros((n, backbone.dim), dtype=np.float32)
    if n == 0:
        return out
    read_um, patch_px = backbone.input_spec(patch_size_um)
    ext = PatchExtractor(slide_levels, centers_px, mpp_xy, size_um=read_um, patch_px=patch_px)
    bs = batch_size or settings.batch_size
    nw = settings.num_workers if num_workers is None else int(num_workers)
    show = settings.progress if progress is None else progress
    dev = None
    if hasattr(backbone, "to"):
        from ..models._device import resolve_device

        dev = resolve_device(device)
        backbone.to(dev)
    cuda = dev is not None and dev.type == "cuda"
    # torch backbones leave features on the device (CPU included: one code path everywhere)
    on_device = hasattr(backbone, "embed_tensor")
    bar = tqdm(total=n, disable=not show, desc=desc, unit="spot")
    if nw > 0:
        import torch

        from ..models._device import loader_kwargs, resolve_device

        kw = loader_kwargs(dev or resolve_device("cpu"), nw)
        loader = torch.utils.data.DataLoader(PatchDataset(ext, batch_size=bs), batch_size=None, **kw)
        # keep the (pinned) tensors: they go to the device asynchronously
        batches = ((np.asarray(i), b if on_device else b.numpy()) for i, b in loader)
    else:
        batches = ext.batches(bs)
        if cuda if prefetch is None else prefetch:
            # without workers, read the next batches in a thread while the device computes this one
            batches = prefetched(batches, depth=2)
    pending: list[tuple[np.ndarray, Any]] = []

    def flush() -> None:
        import torch

        if pending:
            rows = np.concatenate([i for i, _ in pending])
            out[rows] = torch.cat([t for _, t in pending]).float().cpu().numpy()
            pending.clear()

    with _cudnn_benchmark(on=cuda):
        try:
            for idx, batch in batches:
                if on_device:
                    # queue a few batches on the device and copy their features back together: one host
                    # synchronisation per ``sync_every`` batches instead of one per batch
                    pending.append((idx, backbone.embed_tensor(batch, device=dev)))
                    if len(pending) >= sync_every:
                        flush()
                else:
                    out[idx] = backbone.embed(batch, device=dev)
                bar.update(len(idx))
            flush()
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()
            bar.close()
    return out


@contextlib.contextmanager
def _cudnn_benchmark(*, on: bool) -> Iterator[None]:
    """Turn on cuDNN autotuning for the fixed batch shapes of an embedding loop, restored afterwards."""
    if not on:
        yield
        return
    import torch

    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def prefetched(iterable: Iterable[Any], *, depth: int = 2) -> Iterator[Any]:
    """Iterate ``iterable`` in a background thread, up to ``depth`` items ahead of the consumer.

    Patch reading (numpy, dask, zarr decompression) releases the GIL, so it overlaps the device's work on the
    previous batch. Exceptions in the reader are raised in the consumer; closing the generator stops the
    reader.
    """
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    done = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in iterable:
                if not put(("item", item)):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            put(("error", e))
            return
        put(("done", done))

    thread = threading.Thread(target=work, name="stpredict-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, item = q.get()
            if kind == "done":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def backbone_record(backbone: Backbone, patch_size_um: float, geo: SpotGeometry) -> dict[str, Any]:
    """Parameters that identify cached embeddings."""
    rec = dict(backbone.params())
    rec.update(
        {
            "patch_size_um": float(patch_size_um),
            "image_key": geo.image_key,
            "microns_per_pixel": round(float(geo.microns_per_pixel), 6),
        }
    )
    return rec


def spot_embeddings(
    table: AnnData | None,
    geo: SpotGeometry,
    levels: list,
    backbone: Backbone,
    *,
    patch_size_um: float,
    cache: bool,
    device: Any,
    batch_size: int | None,
    num_workers: int | None,
    progress: bool | None,
) -> tuple[np.ndarray, dict[str, Any], bool]:
    """Embeddings of the spots, reused from ``obsm`` when the same backbone and patch settings were cached.

    Returns ``(embeddings, record, reused)``; when ``cache`` is set and they were computed, they are written
    to ``table.obsm[f"X_{backbone}"]`` with the record in ``table.uns["stpredict"]["embeddings"]``.
    """
    rec = backbone_record(backbone, patch_size_um, geo)
    key = embedding_key(backbone.name)
    if table is not None and key in table.obsm:
        old = table.uns.get(UNS_KEY, {}).get("embeddings", {}).get(key)
        if old is not None and _same_record(old, rec):
            emb = np.asarray(table.obsm[key])[geo.rows]
            if np.isfinite(emb).all():
                logger.info("Reusing cached embeddings obsm[%r].", key)
                return emb, rec, True
    t0 = time.perf_counter()
    emb = compute_embeddings(
        levels,
        geo.centers,
        geo.microns_per_pixel_xy,
        backbone,
        patch_size_um=patch_size_um,
        device=device,
        batch_size=batch_size,
        num_workers=num_workers,
        progress=progress,
    )
    rec["seconds"] = round(time.perf_counter() - t0, 3)
    if cache and table is not None:
        full = np.full((table.n_obs, emb.shape[1]), np.nan, dtype=np.float32)
        full[geo.rows] = emb
        table.obsm[key] = full
        table.uns.setdefault(UNS_KEY, {}).setdefault("embeddings", {})[key] = rec
    return emb, rec, False


def _same_record(a: dict, b: dict) -> bool:
    keys = set(a) | set(b)
    keys -= {"seconds"}
    for k in keys:
        va, vb = a.get(k), b.get(k)
        if isinstance(va, np.ndarray) or isinstance(vb, np.ndarray) or isinstance(va, list) or isinstance(vb, list):
            if not np.array_equal(np.asarray(va, dtype=object), np.asarray(vb, dtype=object)):
                return False
        elif va != vb:
            return False
    return True


def region_embeddings(
    slide: SlideData,
    points: GridPoints,
    backbone: Backbone,
    *,
    patch_size_um: float,
    device: Any,
    batch_size: int | None,
    num_workers: int | None,
    progress: bool | None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Embeddings of grid regions: windows at pseudo-spots; a dense path for µm bins.

    Bins never cost one patch each: a backbone with a dense path (``handcrafted``) box-filters its per-pixel
    maps; any other backbone is evaluated on a lattice of windows with a stride of a quarter window (or the
    bin size, if larger) and its features are interpolated bilinearly at the bin centres.
    """
    if points.kind == "circle":
        emb = compute_embeddings(
            slide.image_levels,
            points.centers,
            slide.microns_per_pixel_xy,
            backbone,
            patch_size_um=patch_size_um,
            device=device,
            batch_size=batch_size,
            num_workers=num_workers,
            progress=progress,
            desc=f"embed {points.name}",
        )
        return emb, {"path": "windows at grid points"}
    mpp = np.asarray(slide.microns_per_pixel_xy)
    centers_um = points.centers * mpp
    h, w = slide.image_shape
    extent_um = (w * mpp[0], h * mpp[1])
    if getattr(backbone, "has_dense", False):
        from ..pp._patches import PatchExtractor

        def read_tile(center_um: np.ndarray, size_um: float, out_px: int) -> np.ndarray:
            ext = PatchExtractor(
                slide.image_levels, (np.asarray(center_um) / mpp)[None], tuple(mpp), size_um=size_um, patch_px=out_px
            )
            return ext.read([0])

        show = settings.progress if progress is None else progress
        emb = backbone.dense(read_tile, centers_um, extent_um, window_um=patch_size_um, progress=show)
        return emb, {"path": "dense box-filtered maps"}
    stride = max(points.size_um, patch_size_um / 4.0)
    lo = centers_um.min(0) - stride
    hi = centers_um.max(0) + stride
    gx = np.arange(lo[0], hi[0] + stride, stride)
    gy = np.arange(lo[1], hi[1] + stride, stride)
    GX, GY = np.meshgrid(gx, gy)
    lattice = np.column_stack([GX.ravel(), GY.ravel()])
    # only lattice nodes that some bin interpolates from
    from scipy.spatial import cKDTree

    near = cKDTree(centers_um).query(lattice, distance_upper_bound=1.5 * stride)[0] < np.inf
    node_emb = np.zeros((len(lattice), backbone.dim), dtype=np.float32)
    node_emb[near] = compute_embeddings(
        slide.image_levels,
        lattice[near] / mpp,
        slide.microns_per_pixel_xy,
        backbone,
        patch_size_um=patch_size_um,
        device=device,
        batch_size=batch_size,
        num_workers=num_workers,
        progress=progress,
        desc=f"embed {points.name} lattice",
    )
    grid_emb = node_emb.reshape(len(gy), len(gx), -1)
    fx = (centers_um[:, 0] - gx[0]) / stride
    fy = (centers_um[:, 1] - gy[0]) / stride
    x0 = np.clip(np.floor(fx).astype(int), 0, len(gx) - 2)
    y0 = np.clip(np.floor(fy).astype(int), 0, len(gy) - 2)
    tx, ty = (fx - x0)[:, None], (fy - y0)[:, None]
    emb = (
        grid_emb[y0, x0] * (1 - tx) * (1 - ty)
        + grid_emb[y0, x0 + 1] * tx * (1 - ty)
        + grid_emb[y0 + 1, x0] * (1 - tx) * ty
        + grid_emb[y0 + 1, x0 + 1] * tx * ty
    )
    return emb.astype(np.float32), {"path": f"lattice of windows, stride {stride:g} µm, bilinear"}


# ------------------------------------------------------------------------------------------------------
# slides
# ------------------------------------------------------------------------------------------------------
def resolve_backbone(predictor: Predictor, backbone: Any, weights: Any) -> Backbone | None:
    """The backbone a predictor consumes: the caller's, the one it was fitted with, or its default."""
    from ..models.backbones import get_backbone

    if predictor.consumes != "embeddings":
        return None
    if backbone is None and predictor.backbone.get("backbone"):
        fitted = predictor.backbone["backbone"]
        if fitted == "handcrafted":
            from ..models.backbones import HandcraftedBackbone

            return HandcraftedBackbone(
                mpp=float(predictor.backbone.get("mpp", 1.0)), context=float(predictor.backbone.get("context", 3.0))
            )
        return get_backbone(fitted, weights=weights)
    spec = backbone if backbone is not None else predictor.default_backbone
    if spec is None:
        return None
    if spec == "auto":
        spec = auto_backbone()
    return get_backbone(spec, weights=weights)


def auto_backbone() -> str:
    """``"uni"`` when its weights are available locally, else ``"handcrafted"`` (logged once)."""
    try:
        from ..models.backbones import foundation_weights_available

        path = foundation_weights_available("uni")
    except (ImportError, AttributeError):
        path = None
    if path:
        logger.info("backbone='auto': using UNI from %s.", path)
        return "uni"
    logger.warning(
        "backbone='auto': UNI weights are not available locally, using the weight-free 'handcrafted' backbone. "
        "Set stp.settings.foundation_weights['uni'] = PATH to use UNI."
    )
    return "handcrafted"


def build_slide(
    sdata: SpatialData,
    *,
    image_key: str | None,
    spots_key: str | None,
    table_key: str | None,
    microns_per_pixel: float | None,
    genes: Sequence[str] | None,
    layer: str | None,
    need_targets: bool,
    name: str | None = None,
) -> tuple[SlideData, SpotGeometry]:
    """A :class:`SlideData` of the measured spots (targets of ``genes`` when the table has them)."""
    from ..models._base import SlideData
    from ..pp._spots import resolve_elements

    image_key, spots_key, table_key = resolve_elements(
        sdata, image_key=image_key, spots_key=spots_key, table_key=table_key, need_table=need_targets
    )
    geo = resolve_spots(
        sdata, image_key=image_key, spots_key=spots_key, table_key=table_key, microns_per_pixel=microns_per_pixel
    )
    table = sdata.tables[table_key] if table_key is not None else None
    y = y_lin = lib = None
    if need_targets:
        check_counts(table[geo.rows], table_key, layer=layer)
    if table is not None and genes is not None and table.n_vars > 0 and all(g in table.var_names for g in genes):
        y, y_lin, lib = targets(table, geo.rows, genes, layer)
    slide = SlideData(
        name=name
        or str(table.uns.get("stpredict_source", {}).get("library_id", spots_key) if table is not None else spots_key),
        centers_px=geo.centers,
        microns_per_pixel_xy=geo.microns_per_pixel_xy,
        spot_diameter_px=geo.diameter,
        image_levels=image_levels(sdata.images[geo.image_key]),
        obs_names=geo.obs_names,
        genes=list(genes) if genes is not None else None,
        y=y,
        y_linear=y_lin,
        library_size=lib,
        meta={"image_key": geo.image_key, "spots_key": geo.spots_key, "table_key": geo.table_key},
    )
    return slide, geo


def spatial_folds(
    centers_um: np.ndarray, k: int, *, seed: int | None, block_um: float | None = None
) -> tuple[np.ndarray, float]:
    """Spatially blocked K-fold assignment: square blocks (≈ 4 per fold) dealt to folds at random.

    Returns the fold of each spot and the block side in µm.
    """
    c = np.asarray(centers_um, dtype=float)
    lo, hi = c.min(0), c.max(0)
    area = max(float(np.prod(np.maximum(hi - lo, 1.0))), 1.0)
    side = block_um or float(np.sqrt(area / (4 * k)))
    ij = np.floor((c - lo) / side).astype(int)
    block = ij[:, 1] * (ij[:, 0].max() + 1) + ij[:, 0]
    ids = np.unique(block)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(ids))
    fold_of_block = dict(zip(ids[perm].tolist(), (np.arange(len(ids)) % k).tolist(), strict=True))
    folds = np.array([fold_of_block[b] for b in block.tolist()])
    return folds, side


def uns_safe(obj: Any) -> Any:
    """Make a record writable to zarr: no None, paths/devices/dtypes as str, numpy scalars as Python."""
    if isinstance(obj, dict):
        return {str(k): uns_safe(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list | tuple):
        vals = [uns_safe(v) for v in obj if v is not None]
        if vals and all(isinstance(v, str) for v in vals):
            return np.asarray(vals, dtype=object).astype(str)
        return np.asarray(vals) if vals and all(isinstance(v, int | float | bool) for v in vals) else vals
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray | str | int | float | bool):
        return obj
    return str(obj)


def make_regions(points: GridPoints, embeddings: np.ndarray | None) -> Regions:
    """Regions of a grid."""
    from ..models._base import Regions

    return Regions(
        centers_px=points.centers,
        kind=points.kind,
        size_um=points.size_um,
        name=points.name,
        embeddings=embeddings,
    )
