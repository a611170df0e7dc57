"""Spot lattices: the fitted basis of measured spots, and rasters of values in lattice coordinates.

:func:`fit_lattice` finds the basis ``u1, u2`` of a square, hexagonal or centred-rectangular spot array;
:func:`lattice_map` rasterises per-spot values on it (one spot per cell), so that maps of any finer lattice
(``ps4``, ``ps16``) are regular arrays. Pooling (:func:`pool2`) happens in linear space.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from ._aggregate import RegionMasks, aggregate_map

__all__ = ["Lattice", "LatticeMap", "fill", "fit_lattice", "lattice_map", "pool2", "read_regions"]


@dataclass
class Lattice:
    """A spot lattice ``p = origin + basis @ c`` with integer ``c``, in level-0 pixels.

    Attributes
    ----------
    origin
        ``(2,)`` position of lattice point ``c = 0``.
    basis
        ``(2, 2)`` columns ``u1, u2``: the two shortest independent neighbour vectors.
    coords
        ``(n, 2)`` integer lattice coordinates of the measured spots.
    residual
        Median distance (px) of the spots from their fitted lattice positions.
    """

    origin: np.ndarray
    basis: np.ndarray
    coords: np.ndarray
    residual: float

    @property
    def pitch(self) -> float:
        """Length of the longer basis vector (centre-to-centre spacing), in px."""
        return float(np.linalg.norm(self.basis, axis=0).max())


def fit_lattice(centers: np.ndarray) -> Lattice:
    """Fit the measured spots' lattice (square, hexagonal or centred-rectangular alike).

    The basis is taken from the two most frequent directions among near-nearest-neighbour vectors, then the
    full affine ``origin + basis @ c`` is refitted by least squares on all spots, which absorbs anisotropic
    scans. Raises if the spots do not sit on a lattice.

    Neighbour vectors are those between 0.5 and 1.25 times the median nearest-neighbour distance, binned by
    direction in 10° steps; the second basis vector comes from the most frequent direction at least 30°
    away from the first. Missing spots (e.g. off tissue) do not matter, as long as each spot has neighbours.

    Parameters
    ----------
    centers
        ``(n, 2)`` spot centres, x then y, in level-0 pixels (at least 4 spots). Any unit works: the lattice
        comes back in the unit of ``centers``.

    Returns
    -------
    A :class:`Lattice`: ``origin`` and ``basis`` in the unit of ``centers``, the integer lattice ``coords`` of
    every spot (in the order of ``centers``) and the median ``residual`` of the fit.

    Raises
    ------
    ValueError
        If there are fewer than 4 spots, if the neighbour vectors have only one direction (a single row of
        spots), or if the median residual exceeds 0.2 times the median nearest-neighbour distance (the spots
        are not on a regular lattice; square bins still work).

    Examples
    --------
    >>> import numpy as np
    >>> from stpredict.pp import fit_lattice
    >>> xy = np.array([(100.0 * i + 50.0 * (j % 2), 86.6 * j) for j in range(4) for i in range(5)])
    >>> lat = fit_lattice(xy)
    >>> round(lat.pitch)
    100
    """
    centers = np.asarray(centers, dtype=float)
    n = len(centers)
    if n < 4:
        msg = f"At least 4 spots are needed to fit their lattice, got {n}."
        raise ValueError(msg)
    tree = cKDTree(centers)
    k = min(9, n)
    dist, nbr = tree.query(centers, k=k)
    d_min = float(np.median(dist[:, 1]))
    vec = (centers[nbr[:, 1:]] - centers[:, None, :]).reshape(-1, 2)
    length = np.linalg.norm(vec, axis=1)
    vec = vec[(length > 0.5 * d_min) & (length < 1.25 * d_min)]
    # fold into the half plane and cluster by direction
    flip = (vec[:, 1] < 0) | ((vec[:, 1] == 0) & (vec[:, 0] < 0))
    vec[flip] *= -1
    ang = np.degrees(np.arctan2(vec[:, 1], vec[:, 0])) % 180.0
    bins = np.round(ang / 10.0).astype(int) % 18
    counts = np.bincount(bins, minlength=18)
    order = np.argsort(-counts)
    first = order[0]

    def members(b: int) -> np.ndarray:
        # a direction bin and its neighbours (clusters straddling a bin edge)
        sel = np.isin(bins, [(b - 1) % 18, b, (b + 1) % 18])
        a = ang[sel]
        ref = b * 10.0
        close = np.abs(((a - ref + 90) % 180) - 90) <= 10.0
        v = vec[sel][close]
        # align signs with the reference direction
        r = np.array([np.cos(np.radians(ref)), np.sin(np.radians(ref))])
        v[v @ r < 0] *= -1
        return v

    u1 = np.median(members(first), axis=0)
    u2 = None
    for b in order[1:]:
        if counts[b] < max(3, 0.1 * counts[first]):
            break
        diff = abs(((b - first) * 10 + 90) % 180 - 90)
        if diff >= 30:
            u2 = np.median(members(b), axis=0)
            break
    if u2 is None:
        msg = "The spots do not form a 2-D lattice (one neighbour direction only): use square bins (bin_size=...)."
        raise ValueError(msg)
    basis = np.column_stack([u1, u2])
    origin = centers[np.argmin(centers.sum(axis=1))]
    c = np.round(np.linalg.solve(basis, (centers - origin).T).T).astype(np.int64)
    design = np.column_stack([c, np.ones(n)])
    coef, *_ = np.linalg.lstsq(design, centers, rcond=None)
    basis, origin = coef[:2].T, coef[2]
    c = np.round(np.linalg.solve(basis, (centers - origin).T).T).astype(np.int64)
    resid = float(np.median(np.linalg.norm(centers - (c @ basis.T + origin), axis=1)))
    if resid > 0.2 * d_min:
        msg = (
            f"The spots do not sit on a regular lattice (median residual {resid:.1f} px for a {d_min:.1f} px "
            "spacing): pseudo-spot grids need one. Use square bins (bin_size=...) instead."
        )
        raise ValueError(msg)
    return Lattice(origin=origin, basis=basis, coords=c, residual=resid)


@dataclass
class LatticeMap:
    """Spots rasterised in their lattice's coordinates.

    Attributes
    ----------
    values
        ``(G, H, W)`` values (0 where unmeasured).
    mask
        ``(H, W)`` True where a spot was measured.
    origin_px, basis_px
        ``position = origin + basis @ (i, j) * step`` in level-0 pixels, with ``i`` the column.
    step
        Lattice units per map cell (1 for the measured map, 0.5 for 2× finer...).
    offset
        Lattice coordinates of map cell ``(0, 0)``.
    """

    values: np.ndarray
    mask: np.ndarray
    origin_px: np.ndarray
    basis_px: np.ndarray
    step: float
    offset: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)``."""
        return self.mask.shape  # type: ignore[return-value]

    def centers_px(self) -> np.ndarray:
        """Level-0 pixel positions of every cell, ``(H*W, 2)`` row-major."""
        h, w = self.shape
        jj, ii = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        lat = self.offset + np.column_stack([ii.ravel(), jj.ravel()]) * self.step
        return lat @ self.basis_px.T + self.origin_px

    def spacing_px(self) -> float:
        """Shortest side of a map cell, in level-0 pixels."""
        return float(np.min(np.linalg.norm(self.basis_px * self.step, axis=0)))

    def region_masks(self, centers_px: np.ndarray, size_px: float, kind: str = "circle") -> RegionMasks:
        """The cells of this map inside each region, as :class:`~stpredict.pp.RegionMasks` on its ``(H, W)`` raster.

        Lattice cells are parallelograms (hexagonal arrays), so a cell counts whole when its centre lies in the
        region: a circle of diameter ``size_px`` or an axis-aligned square of side ``size_px`` (level-0 pixels),
        grown to at least one cell (half the cell spacing around the centre); a region holding no cell centre
        takes its nearest cell. Every weight is 1: :func:`~stpredict.pp.aggregate_map` then gives the plain mean
        of the covered cells.
        """
        cells = self.centers_px()
        centers_px = np.asarray(centers_px, dtype=float).reshape(-1, 2)
        tree = cKDTree(cells)
        _, nearest = tree.query(centers_px)
        half = max(size_px / 2, self.spacing_px() / 2)
        picked, region = [], []
        for j, c in enumerate(centers_px):
            near = tree.query_ball_point(c, half * 1.5)
            near = np.asarray(near if near else [int(nearest[j])])
            off = cells[near] - c
            inside = (np.abs(off) <= half).all(1) if kind == "square" else np.hypot(*off.T) <= half
            sel = near[inside] if inside.any() else near[[np.argmin(np.hypot(*off.T))]]
            picked.append(sel)
            region.append(np.full(len(sel), j))
        flat = np.concatenate(picked).astype(np.int64) if picked else np.zeros(0, np.int64)
        w = self.shape[1]
        return RegionMasks(
            flat // w,
            flat % w,
            np.concatenate(region).astype(np.int64) if region else np.zeros(0, np.int64),
            np.ones(len(flat)),
            len(centers_px),
        )

    def finer(self, factor: int = 2) -> LatticeMap:
        """An empty map ``factor`` times finer over the same lattice extent (mask: within one fine cell of a measured one)."""
        from scipy.ndimage import binary_dilation

        h, w = self.shape
        H, W = (h - 1) * factor + 1, (w - 1) * factor + 1
        m = np.zeros((H, W), bool)
        m[::factor, ::factor] = self.mask
        m = binary_dilation(m, iterations=factor - 1) if factor > 1 else m
        return LatticeMap(
            np.zeros((self.values.shape[0], H, W), np.float32),
            m,
            self.origin_px,
            self.basis_px,
            self.step / factor,
            self.offset,
        )


def lattice_map(centers_px: np.ndarray, values: np.ndarray) -> LatticeMap:
    """Rasterise spots (``values`` ``(n, G)``) in their fitted lattice's coordinates."""
    lat = fit_lattice(centers_px)
    c = lat.coords
    lo = c.min(0)
    ij = c - lo
    w, h = ij.max(0) + 1
    vals = np.zeros((values.shape[1], h, w), np.float32)
    mask = np.zeros((h, w), bool)
    vals[:, ij[:, 1], ij[:, 0]] = np.asarray(values, np.float32).T
    mask[ij[:, 1], ij[:, 0]] = True
    return LatticeMap(vals, mask, lat.origin, lat.basis, 1.0, lo.astype(float))


def pool2(values: np.ndarray, mask: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """2 × 2 pooling of a log1p map over its measured cells, as a spot twice the size would measure it.

    Values are log1p of normalised expression; the pooled value is the log1p of their mean in linear space,
    weighted by ``weights`` (each cell's library size, when given): exactly the normalised expression of the
    summed counts. Averaging the log values instead would make the training inputs smaller than real coarse
    measurements (Jensen), and the model would learn a residual that biases its refinements upwards.
    """
    G, h, w = values.shape
    H, W = (h + 1) // 2, (w + 1) // 2
    wt = np.where(mask, 1.0 if weights is None else np.asarray(weights, np.float64), 0.0)
    v = np.zeros((G, 2 * H, 2 * W), np.float64)
    m = np.zeros((2 * H, 2 * W), np.float64)
    v[:, :h, :w] = np.expm1(np.asarray(values, np.float64)) * wt
    m[:h, :w] = wt
    s = v.reshape(G, H, 2, W, 2).sum((2, 4))
    n = m.reshape(H, 2, W, 2).sum((1, 3))
    out = np.log1p(np.divide(s, n, out=np.zeros_like(s), where=n > 0)).astype(np.float32)
    return out, n > 0


def fill(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Unmeasured cells take the value of the nearest measured cell."""
    from scipy.ndimage import distance_transform_edt

    if mask.all() or not mask.any():
        return values
    idx = distance_transform_edt(~mask, return_distances=False, return_indices=True)
    return values[..., idx[0], idx[1]]


def read_regions(lm: LatticeMap, maps: np.ndarray, centers_px: np.ndarray, size_px: float, kind: str) -> np.ndarray:
    """Values ``(n, m, G)`` of log1p maps ``(n, G, H, W)`` on ``lm``'s lattice at ``m`` regions, log1p after aggregation.

    Regions centred on the lattice's cells (circles within 5 % of the spacing) read their cell; regions no larger
    than 1.5 cells elsewhere (e.g. original spots between the cells of a pooled map) are read by bilinear
    interpolation in linear space; larger regions (µm bins) take the mean of the cells they cover, in linear space
    (:meth:`LatticeMap.region_masks` + :func:`~stpredict.pp.aggregate_map`). ``size_px`` is the diameter
    (circles) or side (squares) in level-0 pixels.
    """
    from scipy.ndimage import map_coordinates

    n, G, H, W = maps.shape
    d, idx = cKDTree(lm.centers_px()).query(centers_px)
    cell_vec = lm.basis_px * lm.step
    spacing = lm.spacing_px()
    if kind == "circle" and np.all(d < 0.05 * spacing):
        vals = maps.reshape(n, G, H * W)[:, :, idx]  # (n, G, m)
    elif size_px <= 1.5 * spacing:
        ij = np.linalg.solve(cell_vec, (centers_px - lm.origin_px).T - lm.basis_px @ lm.offset[:, None])  # (2, m)
        lin = np.expm1(maps)
        coords = [ij[1], ij[0]]
        vals = np.stack(
            [
                np.stack([map_coordinates(lin[k, g], coords, order=1, mode="nearest") for g in range(G)])
                for k in range(n)
            ]
        )
        vals = np.log1p(np.maximum(vals, 0.0))
    else:
        masks = lm.region_masks(centers_px, size_px, kind)
        lin = aggregate_map(np.expm1(maps).reshape(n * G, H, W), masks)  # (m, n * G)
        vals = np.log1p(lin.T.reshape(n, G, len(centers_px)))
    return np.transpose(vals, (0, 2, 1))
