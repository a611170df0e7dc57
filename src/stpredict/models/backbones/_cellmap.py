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
        Channel → ``(xy, weight)``: the non-zero pixels of a sparse channel, centres ``(m, 2)`` in µm and
        ``(m,)`` value × pixel area (µm²); a window mean of the channel is the sum of the weights inside the
        window over its area. Channels not listed are read from the cells.
    """

    means: np.ndarray
    lo_um: np.ndarray
    cell_um: float
    points: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

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
        return int(self.means.nbytes + sum(xy.nbytes + w.nbytes for xy, w in self.points.values()))

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
                for v, side in enumerate(windows_um):
                    out[v][:, j] = _point_sums(*self.points[c], centers_um, float(side)) / float(side) ** 2
        return out


def _point_sums(xy: np.ndarray, weight: np.ndarray, centers_um: np.ndarray, side: float) -> np.ndarray:
    """Sums of ``weight`` over the points in squares of ``side`` at ``centers_um`` (edges as in the docstring)."""
    from scipy.spatial import cKDTree

    if len(xy) == 0:
        return np.zeros(len(centers_um))
    tree = cKDTree(xy)
    # a closed square about a centre moved by a hair: a point on the low edge is out, one on the high edge in
    at = centers_um + 1e-6
    if np.all(weight == weight[0]):
        return tree.query_ball_point(at, side / 2, p=np.inf, return_length=True) * float(weight[0])
    hits = tree.query_ball_point(at, side / 2, p=np.inf)
    return np.array([weight[h].sum() for h in hits])


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
            xy = (lo + np.array([tx, ty], dtype=float) * cell_um)[None] + (np.column_stack([q, r]) + 0.5) * mpp
            parts.append((xy, core[c][r, q].astype(np.float64) * mpp * mpp))  # list.append is thread-safe

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
    points = {
        c: (np.concatenate([xy for xy, _ in parts]), np.concatenate([w for _, w in parts]))
        for c, parts in found.items()
    }
    return CellMap(means, lo, float(cell_um), points)
