"""Embeddings of spots and grid regions, and the one cache that reads and writes them in ``obsm``/``uns``."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from .._keys import UNS_KEY, embedding_key
from .._logging import get_logger
from .._records import uns_safe
from .._version import __version__
from ._commit import Staged
from ._dense import DenseMaps, check_dense
from ._embedding_loop import compute_embeddings

if TYPE_CHECKING:
    from anndata import AnnData

    from ..models._base import SlideData
    from ..models.backbones import Backbone
    from ..pp._grid import GridPoints
    from ..pp._spots import SpotGeometry
    from ._options import Compute

__all__ = ["EmbeddingCache", "backbone_record", "plan_regions", "region_embeddings", "standardize"]

logger = get_logger(__name__)


def backbone_record(backbone: Backbone, patch_size_um: float, geo: SpotGeometry) -> dict[str, Any]:
    """Parameters that identify cached embeddings (a new stpredict version recomputes them)."""
    rec = dict(backbone.params())
    rec.update(
        {
            "patch_size_um": float(patch_size_um),
            "image_key": geo.image_key,
            "microns_per_pixel": round(float(geo.microns_per_pixel), 6),
            "stpredict_version": __version__,
        }
    )
    return rec


class EmbeddingCache:
    """The one reader and writer of spot embeddings in ``table.obsm`` / ``table.uns["stpredict"]["embeddings"]``.

    :meth:`spots` reuses what a table holds under ``key`` when its record (backbone parameters, window, image,
    pixel size) equals this request's and every spot's features are finite; otherwise it computes them and
    keeps them pending. :meth:`commit` writes the pending ones, so a verb calls it only once its work has
    succeeded and a failing call leaves the tables as they were.

    Parameters
    ----------
    backbone
        The backbone.
    patch_size_um
        Window side in µm.
    key
        ``obsm`` key; default ``X_<backbone name>``.
    """

    def __init__(self, backbone: Backbone, patch_size_um: float, *, key: str | None = None) -> None:
        self.backbone = backbone
        self.patch_size_um = float(patch_size_um)
        self.key = key or embedding_key(backbone.name)
        self.seconds = 0.0
        self._thread_seconds: dict[int, float] = {}
        self._lock = threading.Lock()
        #: the call's dense feature maps, one per slide, shared by spots and grids
        self.maps = DenseMaps(backbone, self.patch_size_um)
        self._pending: list[tuple[AnnData, SpotGeometry, np.ndarray, dict[str, Any]]] = []

    def add_seconds(self, seconds: float) -> None:
        """Count embedding seconds, in total and for the calling thread."""
        tid = threading.get_ident()
        with self._lock:
            self.seconds += seconds
            self._thread_seconds[tid] = self._thread_seconds.get(tid, 0.0) + seconds

    def thread_seconds(self) -> float:
        """Embedding seconds spent in the calling thread: a fold's own, when threads share the cache."""
        with self._lock:
            return self._thread_seconds.get(threading.get_ident(), 0.0)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def spots(
        self, table: AnnData | None, geo: SpotGeometry, levels: list, run: Compute, *, stain: dict | None = None
    ) -> np.ndarray:
        """``(n_spots, dim)`` features of the spots of ``geo`` (reused or computed; see the class).

        ``stain`` is the record of the stain normalisation ``levels`` went through (part of the cache's key).
        """
        check_dense(self.backbone, dense=run.dense)
        centers_um = geo.centers * np.asarray(geo.microns_per_pixel_xy)
        read_px = self.backbone.input_spec(self.patch_size_um)[1]
        dense = self.maps.use(levels, centers_um, read_px, dense=run.dense)
        rec = backbone_record(self.backbone, self.patch_size_um, geo)
        rec.update(self.maps.record() if dense else {"path": "windows"})
        if stain is not None:
            rec["stain"] = stain
        if table is not None and self.key in table.obsm:
            old = table.uns.get(UNS_KEY, {}).get("embeddings", {}).get(self.key)
            if old is not None and _same_record(old, rec):
                emb = np.asarray(table.obsm[self.key])[geo.rows]
                if np.isfinite(emb).all():
                    logger.info("Reusing cached embeddings obsm[%r].", self.key)
                    return emb
        t0 = time.perf_counter()
        if dense:
            emb = self.maps.features(levels, geo.microns_per_pixel_xy, centers_um, self.patch_size_um, run)
        else:
            emb = compute_embeddings(
                levels,
                geo.centers,
                geo.microns_per_pixel_xy,
                self.backbone,
                patch_size_um=self.patch_size_um,
                **run.loop_kwargs(),
            )
        rec["seconds"] = round(time.perf_counter() - t0, 3)
        self.add_seconds(rec["seconds"])
        if table is not None:
            self._pending.append((table, geo, emb, rec))
        return emb

    @property
    def computed(self) -> bool:
        """Whether :meth:`spots` computed features (pending until :meth:`commit`) rather than reusing them."""
        return bool(self._pending)

    def commit(self) -> list[AnnData]:
        """Write the computed embeddings into their tables (NaN for rows that do not annotate the spots).

        A table whose ``obsm[key]`` holds an array without an embeddings record (the user's own) is left as it is.
        Returns the tables written.
        """
        staged = Staged()
        written = self.stage(staged)
        staged.apply()
        return written

    def stage(self, staged: Staged) -> list[AnnData]:
        """Stage the computed embeddings' writes into ``staged`` (see :meth:`commit`); returns their tables.

        The pending list is emptied: a verb stages them with its own results and applies all at once.
        """
        written = []
        for table, geo, emb, rec in self._pending:
            if self.key in table.obsm and self.key not in table.uns.get(UNS_KEY, {}).get("embeddings", {}):
                logger.warning(
                    "obsm[%r] holds an array stpredict did not record as embeddings: left as it is, so these "
                    "features are not cached for reuse (stp.tl.embed(..., key_added=...) caches them elsewhere).",
                    self.key,
                )
                continue
            full = np.full((table.n_obs, emb.shape[1]), np.nan, dtype=np.float32)
            full[geo.rows] = emb
            staged.set(table.obsm, self.key, full)
            staged.set_in(table.uns, (UNS_KEY, "embeddings", self.key), uns_safe(rec))
            written.append(table)
        self._pending.clear()
        return written


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


def _grid_uses_map(slide: SlideData, points: GridPoints, cache: EmbeddingCache, run: Compute) -> bool:
    """Whether the grid is read from the dense map.

    Bins: the map unless ``dense=False`` asks for the reference (windows); pseudo-spots and cells (polygons,
    read at their centroid): as ``run.dense`` says.
    """
    check_dense(cache.backbone, dense=run.dense)
    want = True if points.kind == "square" and run.dense is not False else run.dense
    centers_um = points.centers * np.asarray(slide.microns_per_pixel_xy)
    read_px = cache.backbone.input_spec(cache.patch_size_um)[1]
    return cache.maps.use(slide.image_levels, centers_um, read_px, dense=want)


def plan_regions(slide: SlideData, geo: SpotGeometry, points: GridPoints, cache: EmbeddingCache, run: Compute) -> None:
    """Before the spots are embedded: if the grid will be read from a map, make it one map for both."""
    if _grid_uses_map(slide, points, cache, run):
        mpp = np.asarray(slide.microns_per_pixel_xy)
        cache.maps.plan(slide.image_levels, points.centers * mpp)
        cache.maps.plan(slide.image_levels, geo.centers * mpp)


def region_embeddings(
    slide: SlideData,
    points: GridPoints,
    cache: EmbeddingCache,
    *,
    run: Compute,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Embeddings of grid regions, from the call's dense map or from windows (see :func:`_region_features`).

    When the slide's spot embeddings were standardised (``feature_norm="slide"``), the regions' are standardised
    with the same statistics (``slide.meta["feature_stats"]``).
    """
    emb, info = _region_features(slide, points, cache, run=run)
    stats = slide.meta.get("feature_stats")
    if stats is not None:
        emb, _ = standardize(emb, stats)
        info = dict(info, feature_norm="slide")
    return emb, info


def _region_features(
    slide: SlideData,
    points: GridPoints,
    cache: EmbeddingCache,
    *,
    run: Compute,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Embeddings of grid regions, from the call's dense map or from windows.

    A backbone with a dense path (``handcrafted``; convolutional timm backbones such as ``resnet18``) reads every
    region from the slide's one feature map (:class:`~stpredict.tl._dense.DenseMaps`, shared with the spots) when
    ``run.dense`` asks for it or, by default, when that is cheaper than a window per region; bins use it unless
    ``dense=False``. Bins of any other backbone (and of any backbone with ``dense=False``) are read from a
    lattice of windows with a stride of a quarter window (or the bin size, if larger), interpolated bilinearly at
    the bin centres; pseudo-spots and cells (polygons, at their centroid) without the map are one window each.
    """
    backbone, patch_size_um = cache.backbone, cache.patch_size_um
    mpp = np.asarray(slide.microns_per_pixel_xy)
    centers_um = points.centers * mpp
    if _grid_uses_map(slide, points, cache, run):
        emb = cache.maps.features(slide.image_levels, slide.microns_per_pixel_xy, centers_um, patch_size_um, run)
        return emb, cache.maps.record()
    if points.kind in ("circle", "polygon"):
        emb = compute_embeddings(
            slide.image_levels,
            points.centers,
            slide.microns_per_pixel_xy,
            backbone,
            patch_size_um=patch_size_um,
            **run.loop_kwargs(),
            desc=f"embed {points.name}",
        )
        return emb, {"path": "windows at grid points"}
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
        **run.loop_kwargs(),
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


def standardize(emb: np.ndarray, stats: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, tuple]:
    """Standardise ``(n, d)`` embeddings with ``stats = (mean, sd)`` (default: their own); returns both.

    Features constant over the slide (sd 0) are centred only.
    """
    emb = np.asarray(emb, dtype=np.float32)
    if stats is None:
        mean = emb.mean(0)
        sd = emb.std(0)
        stats = (mean, np.where(sd > 1e-8, sd, 1.0).astype(np.float32))
    return ((emb - stats[0]) / stats[1]).astype(np.float32), stats
