"""Region aggregation of dense maps, in linear space: the one place where a map becomes region means.

A dense map holds normalised expression in linear units (non-negative) on a raster. A region's value is the
mean of the map over the region, each raster cell weighted by the fraction of it the region covers:
``mean_r = Σ_cells w(r, cell) · map(cell) / Σ_cells w(r, cell)``. Logs (log1p) are taken after aggregation,
never before (the mean of logs is not the log of the mean). The weights come from :func:`region_masks`
(circles, squares and polygons on a square raster, exact to ``1 / supersample²``; lengths in µm or pixels
through ``origin`` and ``cell_size``) or from another raster's own mask builder (e.g.
:meth:`stpredict.pp._lattice.LatticeMap.region_masks` for spot-lattice maps); :class:`RegionSums` accumulates
the sums over maps seen piece by piece (tiles), and :func:`aggregate_map` is its one-raster form.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["RegionMasks", "RegionSums", "aggregate_map", "region_masks"]


@dataclass
class RegionMasks:
    """Fractional coverage of regions on a raster, as sparse weights.

    Attributes
    ----------
    rows, cols
        Raster cell of each weight.
    region
        Region of each weight.
    weight
        Covered fraction of the cell (0-1].
    n_regions
        Number of regions.
    """

    rows: np.ndarray
    cols: np.ndarray
    region: np.ndarray
    weight: np.ndarray
    n_regions: int

    def area(self) -> np.ndarray:
        """Covered area of every region, in raster cells."""
        return np.bincount(self.region, weights=self.weight, minlength=self.n_regions)

    def to_dense(self, shape: tuple[int, int]) -> np.ndarray:
        """``(n_regions, rows, cols)`` float32 coverage (for aggregating batches of maps in torch)."""
        dense = np.zeros((self.n_regions, *shape), np.float32)
        dense[self.region, self.rows, self.cols] = self.weight
        return dense


class RegionSums:
    """Running sums ``Σ w · map`` and ``Σ w`` of regions over maps seen piece by piece (e.g. stitched tiles).

    Parameters
    ----------
    n_regions
        Number of regions.
    n_channels
        Channels of the maps (genes).
    """

    def __init__(self, n_regions: int, n_channels: int) -> None:
        self.num = np.zeros((n_regions, n_channels))
        self.area = np.zeros(n_regions)

    def add(
        self,
        values: np.ndarray,
        masks: RegionMasks,
        *,
        regions: np.ndarray | None = None,
        window: np.ndarray | None = None,
    ) -> None:
        """Add a ``(channels, h, w)`` linear map on the masks' raster.

        ``regions`` maps the masks' region numbers to this accumulator's (default: the same numbers).
        ``window`` is an ``(h, w)`` weight the map already carries (a stitching window: overlapping tiles whose
        windows sum to one make the sum over tiles of ``window · map`` the stitched map); the area is counted with
        the same weight, so :meth:`means` is the mean of the stitched map.
        """
        v = np.asarray(values)
        vals = v[:, masks.rows, masks.cols] * masks.weight[None]
        wgt = masks.weight if window is None else masks.weight * window[masks.rows, masks.cols]
        reg = masks.region if regions is None else np.asarray(regions)[masks.region]
        np.add.at(self.num, reg, vals.T)
        np.add.at(self.area, reg, wgt)

    def means(self) -> np.ndarray:
        """``(n_regions, channels)`` float64 weighted means; NaN where a region has no coverage."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.num / self.area[:, None]


def region_masks(
    shape: tuple[int, int],
    *,
    centers: np.ndarray | None = None,
    size: float | np.ndarray | None = None,
    kind: str = "circle",
    polygons: Sequence[Any] | None = None,
    supersample: int = 4,
    origin: Sequence[float] | np.ndarray | None = None,
    cell_size: float = 1.0,
) -> RegionMasks:
    """Coverage of regions on a raster of ``shape`` (rows, cols), in raster-cell units.

    Circles (diameter ``size``) and squares (side ``size``) are centred at ``centers`` (x, y in cell units,
    cell ``(r, c)`` spanning ``[c, c + 1) × [r, r + 1)``); polygons are shapely geometries in the same units.
    Coverage is the fraction of ``supersample²`` sub-points of each cell inside the region (exact to
    ``1 / supersample²``). Parts outside the raster are dropped (callers can compare :meth:`RegionMasks.area`
    with the full area to handle regions cut by the raster's border).

    Lengths are in raster cells unless ``origin`` / ``cell_size`` say otherwise: with them, ``centers``,
    ``size`` and ``polygons`` are in any unit (µm, image pixels), the raster's corner ``(0, 0)`` sits at
    ``origin`` and one cell is ``cell_size`` wide.

    Parameters
    ----------
    shape
        ``(rows, cols)`` of the raster, i.e. its height and width in cells.
    centers
        ``(n, 2)`` region centres, x (column) then y (row), in cell units: the centre of cell ``(r, c)`` is
        ``(c + 0.5, r + 0.5)``. Required unless ``polygons`` is given.
    size
        Diameter of the circles or side of the squares, in cells: one value for all regions, or ``(n,)``.
    kind
        ``"circle"`` or ``"square"`` (axis-aligned; its edges are half-open like the cells). Ignored with
        ``polygons``.
    polygons
        Shapely polygons or multipolygons in cell units (x = column, y = row); holes are excluded. When given,
        ``centers``, ``size`` and ``kind`` are ignored.
    supersample
        Sub-points per cell side: coverage is counted on ``supersample²`` points per cell.
    origin
        ``(x, y)`` of the raster's corner in the unit of ``centers`` (default: 0, 0).
    cell_size
        Side of a raster cell in the unit of ``centers``, ``size`` and ``polygons``.

    Returns
    -------
    A :class:`RegionMasks` holding one weight per (region, cell) pair with non-zero coverage. Regions are
    numbered in the order of ``centers`` (or ``polygons``); ``n_regions`` counts them all, including regions
    that miss the raster entirely and so have no weights.

    Raises
    ------
    ValueError
        If ``kind`` is neither ``"circle"`` nor ``"square"``.

    Examples
    --------
    >>> import numpy as np
    >>> from stpredict.pp import region_masks
    >>> m = region_masks((8, 8), centers=np.array([[4.0, 4.0]]), size=4.0, kind="square")
    >>> m.area()
    array([16.])
    """
    if origin is not None or cell_size != 1.0:
        o = np.zeros(2) if origin is None else np.asarray(origin, dtype=float)
        if polygons is not None:
            from shapely import affinity

            t = [1 / cell_size, 0, 0, 1 / cell_size, -o[0] / cell_size, -o[1] / cell_size]
            polygons = [affinity.affine_transform(p, t) for p in polygons]
        else:
            centers = (np.asarray(centers, dtype=float) - o) / cell_size
            size = np.asarray(size, dtype=float) / cell_size
    h, w = shape
    s = int(supersample)
    sub = (np.arange(s) + 0.5) / s
    rows_l, cols_l, reg_l, wt_l = [], [], [], []
    if polygons is not None:
        from matplotlib.path import Path as MplPath

        for i, poly in enumerate(polygons):
            geoms = getattr(poly, "geoms", [poly])
            x0, y0, x1, y1 = poly.bounds
            c0, c1 = max(int(np.floor(x0)), 0), min(int(np.ceil(x1)), w)
            r0, r1 = max(int(np.floor(y0)), 0), min(int(np.ceil(y1)), h)
            if c1 <= c0 or r1 <= r0:
                continue
            cc, rr = np.meshgrid(np.arange(c0, c1), np.arange(r0, r1))
            full = (*cc.shape, s, s)
            px = np.broadcast_to(cc[..., None, None] + sub[None, None, None, :], full).ravel()
            py = np.broadcast_to(rr[..., None, None] + sub[None, None, :, None], full).ravel()
            inside = np.zeros(px.size, dtype=bool)
            for g in geoms:
                inside |= MplPath(np.asarray(g.exterior.coords)).contains_points(np.column_stack([px, py]))
                for hole in g.interiors:
                    inside &= ~MplPath(np.asarray(hole.coords)).contains_points(np.column_stack([px, py]))
            frac = inside.reshape(cc.shape + (s * s,)).mean(-1)
            keep = frac > 0
            rows_l.append(rr[keep])
            cols_l.append(cc[keep])
            reg_l.append(np.full(int(keep.sum()), i))
            wt_l.append(frac[keep])
    else:
        centers = np.asarray(centers, dtype=float).reshape(-1, 2)
        sizes = np.broadcast_to(np.asarray(size, dtype=float), (len(centers),))
        for i, ((cx, cy), d) in enumerate(zip(centers, sizes, strict=True)):
            r = d / 2
            c0, c1 = max(int(np.floor(cx - r)), 0), min(int(np.ceil(cx + r)), w)
            r0, r1 = max(int(np.floor(cy - r)), 0), min(int(np.ceil(cy + r)), h)
            if c1 <= c0 or r1 <= r0:
                continue
            xs = np.arange(c0, c1)[:, None] + sub[None]  # (nc, s)
            ys = np.arange(r0, r1)[:, None] + sub[None]  # (nr, s)
            if kind == "circle":
                dx2 = (xs - cx) ** 2
                dy2 = (ys - cy) ** 2
                inside = dy2[:, None, :, None] + dx2[None, :, None, :] <= r * r  # (nr, nc, s, s)
                frac = inside.mean(axis=(2, 3))
            elif kind == "square":
                fx = ((xs >= cx - r) & (xs < cx + r)).mean(1)
                fy = ((ys >= cy - r) & (ys < cy + r)).mean(1)
                frac = fy[:, None] * fx[None, :]
            else:
                msg = f"kind must be 'circle' or 'square', got {kind!r}."
                raise ValueError(msg)
            rr, cc = np.nonzero(frac > 0)
            rows_l.append(rr + r0)
            cols_l.append(cc + c0)
            reg_l.append(np.full(len(rr), i))
            wt_l.append(frac[rr, cc])
        polygons = centers
    cat = lambda parts, dt: np.concatenate(parts).astype(dt) if parts else np.zeros(0, dt)  # noqa: E731
    return RegionMasks(
        cat(rows_l, np.int64), cat(cols_l, np.int64), cat(reg_l, np.int64), cat(wt_l, np.float64), len(polygons)
    )


def aggregate_map(values: np.ndarray, masks: RegionMasks) -> np.ndarray:
    """Coverage-weighted mean of a ``(channels, h, w)`` map inside each region → ``(n_regions, channels)``.

    Regions with no coverage get NaN. Aggregate maps in linear units (take logs afterwards).

    Parameters
    ----------
    values
        ``(channels, h, w)`` map (e.g. genes as channels) on the raster the masks were built for: ``(h, w)``
        must be the ``shape`` passed to :func:`region_masks`.
    masks
        Coverage of the regions on that raster, from :func:`region_masks`.

    Returns
    -------
    ``(n_regions, channels)`` float64 means, each cell weighted by its covered fraction. A region cut by the
    raster's border is averaged over its part inside the raster; a region with no coverage is NaN, and NaN in
    ``values`` propagates to the regions covering it.

    Examples
    --------
    >>> import numpy as np
    >>> from stpredict.pp import aggregate_map, region_masks
    >>> m = region_masks((8, 8), centers=np.array([[2.0, 2.0], [6.0, 6.0]]), size=2.0, kind="square")
    >>> aggregate_map(np.ones((3, 8, 8)), m).shape
    (2, 3)
    """
    v = np.asarray(values)
    sums = RegionSums(masks.n_regions, v.shape[0])
    sums.add(v, masks)
    return sums.means()
