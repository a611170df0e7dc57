"""Embeddings of spots and grid regions, and the one cache that reads and writes them in ``obsm``/``uns``."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from .._keys import UNS_KEY, embedding_key
from .._logging import get_logger
from .._records import uns_safe
from .._settings import settings
from ._embedding_loop import compute_embeddings

if TYPE_CHECKING:
    from anndata import AnnData

    from ..models._base import SlideData
    from ..models.backbones import Backbone
    from ..pp._grid import GridPoints
    from ..pp._spots import SpotGeometry
    from ._pipeline import Compute

__all__ = ["EmbeddingCache", "backbone_record", "region_embeddings"]

logger = get_logger(__name__)


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
        self._pending: list[tuple[AnnData, SpotGeometry, np.ndarray, dict[str, Any]]] = []

    def spots(self, table: AnnData | None, geo: SpotGeometry, levels: list, run: Compute) -> np.ndarray:
        """``(n_spots, dim)`` features of the spots of ``geo`` (reused or computed; see the class)."""
        rec = backbone_record(self.backbone, self.patch_size_um, geo)
        if table is not None and self.key in table.obsm:
            old = table.uns.get(UNS_KEY, {}).get("embeddings", {}).get(self.key)
            if old is not None and _same_record(old, rec):
                emb = np.asarray(table.obsm[self.key])[geo.rows]
                if np.isfinite(emb).all():
                    logger.info("Reusing cached embeddings obsm[%r].", self.key)
                    return emb
        t0 = time.perf_counter()
        emb = compute_embeddings(
            levels,
            geo.centers,
            geo.microns_per_pixel_xy,
            self.backbone,
            patch_size_um=self.patch_size_um,
            **run.loop_kwargs(),
        )
        rec["seconds"] = round(time.perf_counter() - t0, 3)
        self.seconds += rec["seconds"]
        if table is not None:
            self._pending.append((table, geo, emb, rec))
        return emb

    def commit(self) -> None:
        """Write the computed embeddings into their tables (NaN for rows that do not annotate the spots)."""
        for table, geo, emb, rec in self._pending:
            full = np.full((table.n_obs, emb.shape[1]), np.nan, dtype=np.float32)
            full[geo.rows] = emb
            table.obsm[self.key] = full
            table.uns.setdefault(UNS_KEY, {}).setdefault("embeddings", {})[self.key] = uns_safe(rec)
        self._pending.clear()


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
    run: Compute,
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
            **run.loop_kwargs(),
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

        show = settings.progress if run.progress is None else run.progress
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
