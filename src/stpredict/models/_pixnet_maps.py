"""PixNet map inference: overlapping tiles blended by a sin² window into one seamless map, read at regions.

Tiles are laid on the global map grid with a stride of half a tile; each is computed with a context margin of a
quarter tile that is cropped away (the network sees tissue rather than padding) and weighted by a separable sin²
window, whose shifted copies sum to exactly one in the tiled interior. Region means are accumulated tile by tile
in linear space (:class:`stpredict.pp._aggregate.RegionSums`; memory bounded by the tile, not the slide), and the
stitched map itself can be written chunk by chunk into a zarr array. ``geo`` is the predictor's geometry
(``map_um``, ``tile_map_px``, ``tile_px``, ``tile_um``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..pp._aggregate import RegionSums, region_masks
from ._image_tensors import network_input

if TYPE_CHECKING:
    from collections.abc import Iterator

    import torch

    from ._base import Regions, SlideData

__all__ = ["region_means", "stitched_map", "tile_grid", "tile_maps", "window"]


def window(n: int) -> np.ndarray:
    """sin² weights of a tile of ``n`` map pixels; with stride ``n/2`` they sum to one."""
    t = (np.arange(n) + 0.5) / n
    return np.sin(np.pi * t) ** 2


def tile_grid(lo_um: np.ndarray, hi_um: np.ndarray, geo: dict) -> tuple[np.ndarray, int]:
    """Tile origins (µm, on the map grid) covering [lo, hi] with half-tile stride and one tile of margin."""
    map_um, n_map = geo["map_um"], geo["tile_map_px"]
    half = n_map // 2
    start = np.floor(lo_um / map_um) - n_map  # in map px
    stop = np.ceil(hi_um / map_um) + half
    xs = np.arange(start[0], stop[0], half)
    ys = np.arange(start[1], stop[1], half)
    gx, gy = np.meshgrid(xs, ys)
    return np.column_stack([gx.ravel(), gy.ravel()]) * map_um, n_map


def tile_maps(
    net: torch.nn.Module,
    slide: SlideData,
    origins_um: np.ndarray,
    geo: dict,
    dev: Any,
    *,
    out_stride: int,
    windowed: bool = True,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(origin_um, weighted map (G, n, n))`` for each tile, in batches."""
    import torch

    from ..pp._patches import PatchExtractor
    from ._device import autocast

    mpp = np.asarray(slide.microns_per_pixel_xy)
    n_map = geo["tile_map_px"]
    # each tile is computed with a context margin of a quarter tile on every side, then cropped: the
    # network sees real tissue, not padding, around the part of the map that is kept
    ctx = max(2, n_map // 4)
    full = n_map + 2 * ctx
    w1 = window(n_map)
    win = torch.as_tensor(np.outer(w1, w1) if windowed else np.ones((n_map, n_map)), device=dev, dtype=torch.float32)
    centres = (origins_um + geo["tile_um"] / 2) / mpp
    ext = PatchExtractor(
        slide.image_levels, centres, tuple(mpp), size_um=full * geo["map_um"], patch_px=full * out_stride
    )
    net = net.to(dev).eval()
    bs = 16
    with torch.inference_mode(), autocast(dev):
        for s0 in range(0, len(origins_um), bs):
            idx = np.arange(s0, min(s0 + bs, len(origins_um)))
            x = network_input(torch.as_tensor(ext.read(idx), device=dev).float(), dev, divide_first=False)
            maps = net(x).float()[:, :, ctx : ctx + n_map, ctx : ctx + n_map] * win
            for j, i in enumerate(idx):
                yield origins_um[i], maps[j].cpu().numpy()


def region_means(
    net: torch.nn.Module, slide: SlideData, regions: Regions, geo: dict, dev: Any, *, out_stride: int, n_genes: int
) -> np.ndarray:
    """Linear means ``(n, G)`` of the stitched map over each region (circles, squares or polygons).

    Polygons are ``regions.polygons_px`` (``kind="polygon"``; converted with :meth:`Regions.polygons_um`).

    Exact coverage of each region on every tile's map (:func:`~stpredict.pp.region_masks` in µm), weighted by the
    tile's window, summed over tiles (:class:`~stpredict.pp._aggregate.RegionSums`): the mean of the stitched map.
    """
    from scipy.spatial import cKDTree

    map_um, n_map = geo["map_um"], geo["tile_map_px"]
    c_um = regions.centers_um(slide)
    polys = regions.polygons_um(slide)
    half_ext = (
        regions.size_um / 2
        if polys is None
        else max(max(p.bounds[2] - p.bounds[0], p.bounds[3] - p.bounds[1]) for p in polys) / 2
    )
    lo, hi = c_um.min(0) - half_ext, c_um.max(0) + half_ext
    origins, _ = tile_grid(lo, hi, geo)
    sums = RegionSums(regions.n, n_genes)
    w1 = window(n_map)
    win = np.outer(w1, w1)
    tree = cKDTree(c_um)
    reach = geo["tile_um"] * 0.75 + half_ext
    for origin, wmap in tile_maps(net, slide, origins, geo, dev, out_stride=out_stride):
        centre = origin + geo["tile_um"] / 2
        hits = tree.query_ball_point(centre, reach)
        if not hits:
            continue
        hits = np.asarray(hits)
        if polys is None:
            m = region_masks(
                (n_map, n_map), centers=c_um[hits], size=regions.size_um, kind=regions.kind, origin=origin,
                cell_size=map_um,
            )  # fmt: skip
        else:
            m = region_masks((n_map, n_map), polygons=[polys[h] for h in hits], origin=origin, cell_size=map_um)
        if len(m.region) == 0:
            continue
        sums.add(wmap, m, regions=hits, window=win)
    return sums.means()


def stitched_map(
    net: torch.nn.Module,
    slide: SlideData,
    bbox_um: tuple[float, float, float, float],
    geo: dict,
    dev: Any,
    *,
    out_stride: int,
    n_genes: int,
    store: Any = None,
    single_tile: bool = False,
) -> tuple[Any, float, tuple[float, float]]:
    """The stitched linear map over ``bbox_um``: ``(array (G, h, w), map µm/px, origin µm)`` (see ``PixNet.predict_map``)."""
    map_um, n_map = geo["map_um"], geo["tile_map_px"]
    x0, y0, x1, y1 = bbox_um
    g0 = np.floor(np.array([x0, y0]) / map_um)
    g1 = np.ceil(np.array([x1, y1]) / map_um)
    w, h = (g1 - g0).astype(int)
    G = n_genes
    if single_tile:
        n = int(max(w, h))
        n += n % 2
        geo1 = {**geo, "tile_map_px": n, "tile_px": n * out_stride, "tile_um": n * map_um}
        origin = g0 * map_um
        ext_map = next(tile_maps(net, slide, origin[None], geo1, dev, out_stride=out_stride, windowed=False))[1]
        return ext_map[:, :h, :w].astype(np.float32), map_um, (float(origin[0]), float(origin[1]))
    wsum = np.zeros((h, w), np.float32)
    if store is None:
        out = np.zeros((G, h, w), np.float32)
    else:
        import zarr

        out = zarr.open_array(str(store), mode="w", shape=(G, h, w), chunks=(G, 512, 512), dtype="f4")
    w1 = window(n_map)
    win = np.outer(w1, w1).astype(np.float32)
    origins, _ = tile_grid(g0 * map_um, g1 * map_um, geo)
    for origin, wmap in tile_maps(net, slide, origins, geo, dev, out_stride=out_stride):
        o = np.round(origin / map_um).astype(int) - g0.astype(int)
        ys, xs = max(o[1], 0), max(o[0], 0)
        ye, xe = min(o[1] + n_map, h), min(o[0] + n_map, w)
        if ys >= ye or xs >= xe:
            continue
        patch = wmap[:, ys - o[1] : ye - o[1], xs - o[0] : xe - o[0]]
        out[:, ys:ye, xs:xe] = out[:, ys:ye, xs:xe] + patch
        wsum[ys:ye, xs:xe] += win[ys - o[1] : ye - o[1], xs - o[0] : xe - o[0]]
    # normalise by the summed window (exactly one in the interior; corrects the bbox's edges)
    for r0 in range(0, h, 512):
        out[:, r0 : r0 + 512] = out[:, r0 : r0 + 512] / np.maximum(wsum[r0 : r0 + 512], 1e-6)
    return out, map_um, (float(g0[0] * map_um), float(g0[1] * map_um))
