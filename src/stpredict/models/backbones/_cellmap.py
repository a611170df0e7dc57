"""A slide's dense feature map: per-pixel statistics summed into square cells, read as window means anywhere.

A :class:`CellMap` holds, for each channel, the mean of a per-pixel map inside every ``cell_um`` square of
a region of the slide. The mean of a channel over any axis-aligned square window whose side is a whole number
of cells is then exact at cell-aligned positions (integral images), and between them it is the bilinear blend
of the four surrounding cell-aligned windows — exact for maps that are constant inside cells, and the
sub-cell position error of a window is at most half a cell otherwise. Spots, pseudo-spots and bins of any
size are all read from the same map, so a slide costs one pass over its pixels whatever the number of
windows.

A channel whose per-pixel map is sparse (nucleus centres: one non-zero pixel per nucleus) can also be kept as
points (``point_channels``): its window means are then exact sums over the points inside each window, whatever
the window's position inside the cells, instead of blends of cell-aligned windows (a count changes by whole
points where a window's edge crosses a cell, which a blend of the cell's mean cannot follow).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["CellMap", "build_cell_map", "map_bounds"]


@dataclass
class CellMap:
    """Cell means of per-pixel maps over a rectangle of the slide.

    Attributes
    ----------
    means
        ``(n_channels, n_y, n_x)`` float32: the mean of each channel inside each cell.
    lo_um
        ``(x, y)`` in µm (from the image origin) of the corner of cell ``(0, 0)``.
    cell_um
        Side of a cell in µm.
    points
        Channel → ``(ij, weight)``: the non-zero pixels of a sparse channel, ``(m, 2)`` int32 pixel indices
        ``(x, y)`` on the lattice of :attr:`pixel_um` from :attr:`lo_um` (pixel ``k`` centred at ``lo_um + (k +
        0.5) * pixel_um``; sorted by ``y``), and ``(m,)`` value × pixel area (µm²); a window mean of the channel is the sum of the
        weights inside the window over its area. Channels not listed are read from the cells.
    pixel_um
        Pixel side of the points' lattice in µm (the analysis resolution).
    """

    means: np.ndarray
    lo_um: np.ndarray
    cell_um: float
    points: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    pixel_um: float = 1.0

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_y, n_x)`` cells."""
        return int(self.means.shape[1]), int(self.means.shape[2])

    @property
    def hi_um(self) -> np.ndarray:
        """``(x, y)`` in µm of the far corner."""
        ny, nx = self.shape
        return np.asarray(self.lo_um, dtype=float) + np.array([nx, ny], dtype=float) * self.cell_um

    @property
    def nbytes(self) -> int:
        """Memory held by the map."""
        return int(self.means.nbytes + sum(ij.nbytes + w.nbytes for ij, w in self.points.values()))

    def covers(self, lo_um: np.ndarray, hi_um: np.ndarray) -> bool:
        """Whether the map spans the rectangle ``[lo_um, hi_um]``."""
        return bool(np.all(self.lo_um <= np.asarray(lo_um) + 1e-9) and np.all(self.hi_um >= np.asarray(hi_um) - 1e-9))

    def window_means(
        self, centers_um: np.ndarray, windows_um: Sequence[float], channels: Sequence[int] | None = None
    ) -> list[np.ndarray]:
        """Means of ``channels`` over square windows of each side in ``windows_um`` centred at ``centers_um``.

        Parameters
        ----------
        centers_um
            ``(n, 2)`` window centres ``(x, y)`` in µm.
        windows_um
            Window sides in µm; each is rounded to a whole number of cells (at least one).
        channels
            Channels to read; all by default.

        Returns
        -------
        One ``(n, n_channels)`` float32 array per window side. Channels kept as :attr:`points` are summed over
        the exact square of each side (pixel centres in ``(c - side / 2, c + side / 2]``, as a window snapped to
        whole pixels holds them).
        """
        centers_um = np.asarray(centers_um, dtype=float).reshape(-1, 2)
        chans = list(range(self.means.shape[0])) if channels is None else list(channels)
        ny, nx = self.shape
        out = [np.zeros((len(centers_um), len(chans)), dtype=np.float32) for _ in windows_um]
        if len(centers_um) == 0:
            return out
        plans = []
        for side in windows_um:
            w = int(max(1, min(round(float(side) / self.cell_um), ny, nx)))
            # fractional index of the window's first cell, then its four cell-aligned neighbours
            sx = (centers_um[:, 0] - self.lo_um[0]) / self.cell_um - w / 2
            sy = (centers_um[:, 1] - self.lo_um[1]) / self.cell_um - w / 2
            plans.append((w, *_bilinear(sx, nx - w + 1), *_bilinear(sy, ny - w + 1)))
        integral = np.zeros((ny + 1, nx + 1), dtype=np.float64)
        for j, c in enumerate(chans):
            np.cumsum(self.means[c], axis=0, dtype=np.float64, out=integral[1:, 1:])
            np.cumsum(integral[1:, 1:], axis=1, out=integral[1:, 1:])
            for v, (w, x0, fx, y0, fy) in enumerate(plans):
                box = (integral[w:, w:] - integral[:-w, w:] - integral[w:, :-w] + integral[:-w, :-w]) / (w * w)
                x1 = np.minimum(x0 + 1, box.shape[1] - 1)
                y1 = np.minimum(y0 + 1, box.shape[0] - 1)
                top = box[y0, x0] * (1 - fx) + box[y0, x1] * fx
                bottom = box[y1, x0] * (1 - fx) + box[y1, x1] * fx
                out[v][:, j] = top * (1 - fy) + bottom * fy
        for j, c in enumerate(chans):
            if c in self.points:
                ij, weight = self.points[c]
                sums = _point_sums(ij, weight, centers_um, windows_um, pixel_um=self.pixel_um, lo_um=self.lo_um)
                for v, side in enumerate(windows_um):
                    out[v][:, j] = sums[:, v] / float(side) ** 2
        return out


def _point_sums(
    ij: np.ndarray,
    weight: np.ndarray,
    centers_um: np.ndarray,
    sides: Sequence[float],
    *,
    pixel_um: float,
    lo_um: np.ndarray,
    block_px: int = 1024,
) -> np.ndarray:
    """Sums ``(n, len(sides))`` of ``weight`` over the lattice points in squares of ``sides`` at ``centers_um``.

    Pixel ``k`` is in a window when its centre is in ``(c - side / 2, c + side / 2]``. Windows are taken block by
    block (``block_px`` blocks of their centres): the block's points are binned on the lattice and summed into one
    integral image, from which every window's sum of every side is exact. Few windows over a large area (spots on
    a whole slide) are counted with a k-d tree instead, the same boxes of lattice indices, whichever the estimate
    (constants timed on the 2-core machine) finds cheaper.
    """
    n = len(centers_um)
    out = np.zeros((n, len(sides)))
    if n == 0 or len(ij) == 0:
        return out
    if np.any(np.diff(ij[:, 1]) < 0):
        by_y = np.argsort(ij[:, 1], kind="stable")
        ij, weight = ij[by_y], np.asarray(weight)[by_y]
    ys = ij[:, 1]
    rel = (np.asarray(centers_um, dtype=float) - np.asarray(lo_um, dtype=float)) / pixel_um - 0.5
    half = [side / 2 / pixel_um for side in sides]
    first = [np.floor(rel - h).astype(np.int64) + 1 for h in half]  # (n, 2): first pixel in, x then y
    stop = [np.floor(rel + h).astype(np.int64) + 1 for h in half]  # one past the last
    block = np.floor(rel / block_px).astype(np.int64)
    block -= block.min(0)
    key = block[:, 0] * (int(block[:, 1].max()) + 1) + block[:, 1]
    n_blocks = len(np.unique(key))
    span = np.maximum(ij.max(0) - ij.min(0) + 1, 1).astype(float)
    visits = n * len(ij) / float(span.prod()) * sum((2 * h) ** 2 for h in half)
    tree_s = 8e-7 * len(ij) + 3.5e-6 * n * len(sides) + 6e-8 * visits
    integral_s = 1e-8 * n_blocks * (block_px + 2 * max(half)) ** 2 + 1e-6 * n * len(sides)
    if tree_s < integral_s:
        from scipy.spatial import cKDTree

        tree = cKDTree(ij)
        equal = bool(np.all(weight == weight[0]))
        for v, (f, s) in enumerate(zip(first, stop, strict=True)):
            # the closed box [first, stop - 1] of integer indices, exactly, as a Chebyshev ball
            mid, rad = (f + s - 1) / 2.0, np.maximum(s - 1 - f, 0) / 2.0
            empty = (s <= f).any(axis=1)
            if equal:
                got = tree.query_ball_point(mid, rad.max(1), p=np.inf, return_length=True) * float(weight[0])
            else:
                got = np.array([np.sum(weight[h]) for h in tree.query_ball_point(mid, rad.max(1), p=np.inf)])
            out[:, v] = np.where(empty, 0.0, got)
        return out
    order = np.argsort(key, kind="stable")
    for idx in np.split(order, np.flatnonzero(np.diff(key[order])) + 1):
        x0, y0 = np.min([f[idx].min(0) for f in first], axis=0)
        x1, y1 = np.max([np.maximum(s[idx].max(0), f[idx].min(0) + 1) for f, s in zip(first, stop, strict=True)], 0)
        lo_i, hi_i = np.searchsorted(ys, y0), np.searchsorted(ys, y1)
        p, pw = ij[lo_i:hi_i], np.asarray(weight[lo_i:hi_i], dtype=np.float64)
        keep = (p[:, 0] >= x0) & (p[:, 0] < x1)
        h_, w_ = int(y1 - y0), int(x1 - x0)
        flat = (p[keep, 1].astype(np.int64) - y0) * w_ + (p[keep, 0] - x0)
        integral = np.zeros((h_ + 1, w_ + 1))
        integral[1:, 1:] = np.bincount(flat, weights=pw[keep], minlength=h_ * w_).reshape(h_, w_)
        integral = integral.cumsum(0).cumsum(1)
        for v, (f, s) in enumerate(zip(first, stop, strict=True)):
            ax, ay = (f[idx] - (x0, y0)).T
            bx, by = (s[idx] - (x0, y0)).T
            out[idx, v] = integral[by, bx] - integral[ay, bx] - integral[by, ax] + integral[ay, ax]
    return out


def _bilinear(s: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer index and weight of fractional positions ``s`` on ``0 .. n - 1`` (clamped at the ends)."""
    s = np.clip(s, 0.0, max(n - 1, 0))
    i0 = np.minimum(np.floor(s).astype(np.int64), max(n - 1, 0))
    return i0, s - i0


def map_bounds(centers_um: np.ndarray, half_um: float, cell_um: float) -> tuple[np.ndarray, np.ndarray]:
    """The cell-aligned rectangle ``(lo, hi)`` in µm that holds every window of half-side ``half_um``."""
    centers_um = np.asarray(centers_um, dtype=float).reshape(-1, 2)
    lo = np.floor((centers_um.min(0) - half_um) / cell_um - 1) * cell_um
    hi = np.ceil((centers_um.max(0) + half_um) / cell_um + 1) * cell_um
    return lo, hi


def build_cell_map(
    pixel_fn: Callable[[np.ndarray], np.ndarray],
    read_tile: Callable[[np.ndarray, float, int], np.ndarray],
    lo_um: np.ndarray,
    hi_um: np.ndarray,
    *,
    n_channels: int,
    mpp: float,
    cell_um: float,
    tile_um: float = 1024.0,
    margin_um: float = 16.0,
    n_threads: int | None = None,
    progress: bool = False,
    desc: str = "feature map",
    point_channels: Sequence[int] = (),
) -> CellMap:
    """Compute a :class:`CellMap` tile by tile, with a margin for the per-pixel filters.

    Parameters
    ----------
    pixel_fn
        ``(1, 3, h, w)`` uint8 RGB → ``(n_channels, h, w)`` per-pixel maps at ``mpp`` µm/px.
    read_tile
        ``read_tile(center_um_xy, size_um, out_px) -> (1, 3, out_px, out_px)`` uint8 (padded with white outside
        the image, as the patch reader does).
    lo_um, hi_um
        Rectangle to cover, in µm (rounded out to whole cells).
    n_channels
        Channels ``pixel_fn`` returns.
    mpp
        Analysis resolution in µm/px; ``cell_um`` must be a whole number of pixels at it.
    cell_um, tile_um, margin_um
        Cell side, tile side (rounded down to whole cells) and the context read around each tile.
    n_threads
        Tiles computed at once (NumPy and SciPy release the GIL); default: the CPU count, at most 4.
    progress
        Show a progress bar over tiles.
    desc
        The bar's label.
    point_channels
        Sparse channels also kept as points (:attr:`CellMap.points`): their non-zero pixels of each tile's core.
    """
    import os
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    cpx = round(cell_um / mpp)
    if cpx < 1 or abs(cpx * mpp - cell_um) > 1e-6 * cell_um:
        msg = f"cell_um={cell_um:g} must be a whole number of pixels at {mpp:g} µm/px."
        raise ValueError(msg)
    lo = np.floor(np.asarray(lo_um, dtype=float) / cell_um) * cell_um
    hi = np.ceil(np.asarray(hi_um, dtype=float) / cell_um) * cell_um
    n_cx, n_cy = (int(v) for v in np.maximum(np.round((hi - lo) / cell_um), 1))
    means = np.zeros((n_channels, n_cy, n_cx), dtype=np.float32)
    tile_cells = max(1, int(tile_um // cell_um))
    m_px = round(margin_um / mpp)
    margin_um = m_px * mpp
    tiles = [(ty, tx) for ty in range(0, n_cy, tile_cells) for tx in range(0, n_cx, tile_cells)]
    found: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {int(c): [] for c in point_channels}

    def one(tile: tuple[int, int]) -> None:
        ty, tx = tile
        ny, nx = min(tile_cells, n_cy - ty), min(tile_cells, n_cx - tx)
        side_cells = max(ny, nx)
        size_um = side_cells * cell_um + 2 * margin_um
        centre = lo + np.array([tx, ty], dtype=float) * cell_um - margin_um + size_um / 2
        rgb = read_tile(centre, size_um, side_cells * cpx + 2 * m_px)
        maps = pixel_fn(rgb)
        core = maps[:, m_px : m_px + ny * cpx, m_px : m_px + nx * cpx]
        means[:, ty : ty + ny, tx : tx + nx] = core.reshape(n_channels, ny, cpx, nx, cpx).mean(axis=(2, 4))
        for c, parts in found.items():
            r, q = np.nonzero(core[c])
            ij = np.column_stack([q + tx * cpx, r + ty * cpx]).astype(np.int32)  # pixels from lo
            parts.append((ij, core[c][r, q].astype(np.float64) * mpp * mpp))  # list.append is thread-safe

    workers = max(1, min(len(tiles), n_threads or min(4, os.cpu_count() or 1)))
    with tqdm(total=len(tiles), disable=not progress, desc=desc, unit="tile") as bar:
        if workers == 1:
            for t in tiles:
                one(t)
                bar.update()
        else:
            with ThreadPoolExecutor(workers, thread_name_prefix="stpredict-map") as pool:
                for _ in pool.map(one, tiles):
                    bar.update()
    points = {}
    for c, parts in found.items():
        ij, weight = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        by_y = np.argsort(ij[:, 1], kind="stable")  # sorted once: windows read them row band by row band
        points[c] = (ij[by_y], weight[by_y])
    return CellMap(means, lo, float(cell_um), points, float(mpp))
