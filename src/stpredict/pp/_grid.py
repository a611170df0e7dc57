"""Super-resolution grids: pseudo-spot lattices (ps4, ps16) and square µm bins."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy.spatial import cKDTree

from .._docs import doc_params
from .._keys import canonical_grid_name, parse_grid_name
from .._logging import get_logger
from ._tissue import TissueMask, tissue_mask

if TYPE_CHECKING:
    import geopandas as gpd
    from spatialdata import SpatialData

    from ._spots import SpotGeometry

__all__ = ["GridPoints", "Lattice", "fit_lattice", "grid", "make_grid"]

logger = get_logger(__name__)


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


def _encode(keys: np.ndarray) -> np.ndarray:
    k = np.asarray(keys, dtype=np.int64)
    return (k[:, 0] + 2**31) * 2**32 + (k[:, 1] + 2**31)


@dataclass
class GridPoints:
    """Regions of a super-resolution grid, in level-0 pixels.

    Attributes
    ----------
    name
        Canonical grid name (``ps4``, ``ps16``, ``bin8um``...).
    kind
        ``"circle"`` (pseudo-spots) or ``"square"`` (bins).
    centers
        ``(n, 2)`` centres (x, y) in level-0 px.
    size_px
        ``(2,)`` diameter (circles) or side (squares) along x and y in px.
    size_um
        Diameter or side in µm.
    nearest_spot
        Index (into the measured spots) of the nearest measured spot.
    measured
        True where the region coincides with a measured spot (ps grids).
    """

    name: str
    kind: Literal["circle", "square"]
    centers: np.ndarray
    size_px: np.ndarray
    size_um: float
    nearest_spot: np.ndarray
    measured: np.ndarray

    @property
    def n(self) -> int:
        """Number of regions."""
        return len(self.centers)


def make_grid(
    geo: SpotGeometry,
    grid: str = "ps4",
    *,
    bin_size: float | None = None,
    mask: TissueMask | None = None,
    max_distance: float | None = None,
) -> GridPoints:
    """Build a grid from resolved spot geometry (see :func:`grid`).

    The array-level core of :func:`grid`: it works in level-0 pixels, returns the regions as arrays and does
    not detect tissue by itself (pass ``mask``).

    Parameters
    ----------
    geo
        The measured spots, resolved by :func:`spots`: their centres and diameter in level-0 pixels, the
        pixel size in µm and the image's shape.
    grid
        ``"ps4"`` (alias ``"pseudospot4"``): pseudo-spots at half the lattice spacing, of half the spot
        diameter; ``"ps16"`` (``"pseudospot16"``): at a quarter of the spacing and diameter; ``"bin<N>um"``
        (or ``"bin<N>"``): squares of ``N`` µm aligned with the image axes, starting at its origin. Ignored
        when ``bin_size`` is given.
    bin_size
        Side of square bins in µm; overrides ``grid``.
    mask
        Tissue mask: regions whose centre is off tissue are dropped (pseudo-spots at measured spots are
        always kept). ``None`` keeps every region (unlike :func:`grid`, which detects tissue by default).
    max_distance
        Largest distance, in level-0 pixels, from a region's centre to the nearest measured spot's centre;
        farther regions are dropped. ``None``: one lattice pitch for pseudo-spots, the median
        nearest-neighbour spacing of the spots for bins.

    Returns
    -------
    A :class:`GridPoints` in level-0 pixels, sorted by row (y) then x: pseudo-spots that coincide with a
    measured spot sit at its measured centre and are flagged in ``measured``; bins are never ``measured``.

    Raises
    ------
    ValueError
        If ``grid`` is not a known grid name; for pseudo-spot grids, if the spots do not sit on a lattice
        (see :func:`fit_lattice`); for bins, if a bin is narrower than 2 image pixels.
    """
    if bin_size is not None:
        grid = canonical_grid_name(f"bin{float(bin_size):g}um")
    kind, value = parse_grid_name(grid)
    name = canonical_grid_name(grid)
    tree = cKDTree(geo.centers)
    if kind == "ps":
        lat = fit_lattice(geo.centers)
        f = int(value)
        steps = np.arange(-(f - 1), f)
        offsets = np.array([(a, b) for a in steps for b in steps])
        keys = (f * lat.coords[:, None, :] + offsets[None]).reshape(-1, 2)
        keys = np.unique(keys, axis=0)
        pts = keys / f @ lat.basis.T + lat.origin
        reach = lat.pitch if max_distance is None else max_distance
        d, nearest = tree.query(pts)
        keep = d <= reach * (1 + 1e-6)
        measured_keys = f * lat.coords
        enc, enc_measured = _encode(keys), _encode(measured_keys)
        is_measured = np.isin(enc, enc_measured)
        # measured spots sit at their measured centres, not at their fitted lattice positions
        lookup = dict(zip(enc_measured.tolist(), range(len(enc_measured)), strict=True))
        where = np.flatnonzero(is_measured)
        pts[where] = geo.centers[[lookup[k] for k in enc[where].tolist()]]
        if mask is not None:
            keep &= mask.contains(pts) | is_measured
        pts, nearest, is_measured = pts[keep], nearest[keep], is_measured[keep]
        size = np.full(2, geo.diameter / f)
        size_um = geo.diameter_um / f
    else:
        side_um = float(value)
        mpp = np.asarray(geo.microns_per_pixel_xy)
        side_px = side_um / mpp
        if side_px.min() < 2.0:
            msg = (
                f"Bins of {side_um:g} µm are {side_px.min():.2f} image pixels wide at {mpp.max():.3g} µm/px: "
                "below ~2 pixels the image holds no information per bin. Use bin_size ≥ "
                f"{2 * mpp.max():.3g} µm or a finer image."
            )
            raise ValueError(msg)
        h, w = geo.image_shape
        d_nn = tree.query(geo.centers, k=2)[0][:, 1] if geo.n_spots > 1 else np.array([geo.diameter])
        reach = float(np.median(d_nn)) if max_distance is None else max_distance
        lo = np.maximum((geo.centers.min(0) - reach) * mpp, 0.0)
        hi = np.minimum((geo.centers.max(0) + reach) * mpp, np.array([w, h]) * mpp)
        ix = np.arange(np.floor(lo[0] / side_um), np.ceil(hi[0] / side_um))
        iy = np.arange(np.floor(lo[1] / side_um), np.ceil(hi[1] / side_um))
        gx, gy = np.meshgrid(ix, iy)
        pts = (np.column_stack([gx.ravel(), gy.ravel()]) + 0.5) * side_um / mpp
        d, nearest = tree.query(pts)
        keep = d <= reach
        if mask is not None:
            keep &= mask.contains(pts)
        pts, nearest = pts[keep], nearest[keep]
        is_measured = np.zeros(len(pts), dtype=bool)
        size = side_px
        size_um = side_um
    order = np.lexsort((pts[:, 0], pts[:, 1]))
    return GridPoints(
        name=name,
        kind="circle" if kind == "ps" else "square",
        centers=pts[order],
        size_px=np.asarray(size, dtype=float),
        size_um=float(size_um),
        nearest_spot=nearest[order],
        measured=is_measured[order],
    )


def grid_to_shapes(geo: SpotGeometry, pts: GridPoints) -> gpd.GeoDataFrame:
    """The grid as a spatialdata shapes element in the spots' coordinates, their transformations copied."""
    import shapely
    from spatialdata.models import ShapesModel

    ts = dict(geo.shapes_transformations)
    if pts.kind == "circle":
        xy = geo.image_to_shapes(pts.centers)
        scale = float(np.sqrt(abs(np.linalg.det(np.linalg.inv(geo.shapes_to_image)[:2, :2]))))
        radius = np.full(pts.n, float(pts.size_px.mean()) / 2.0 * scale)
        return ShapesModel.parse(xy, geometry=0, radius=radius, index=np.arange(pts.n), transformations=ts)
    import geopandas as gpd

    half = pts.size_px / 2.0
    corners = np.stack(
        [
            pts.centers + [-half[0], -half[1]],
            pts.centers + [half[0], -half[1]],
            pts.centers + [half[0], half[1]],
            pts.centers + [-half[0], half[1]],
        ],
        axis=1,
    )
    corners = geo.image_to_shapes(corners.reshape(-1, 2)).reshape(-1, 4, 2)
    polys = shapely.polygons(corners)
    gdf = gpd.GeoDataFrame(geometry=polys, index=np.arange(pts.n))
    return ShapesModel.parse(gdf, transformations=ts)


@doc_params()
def grid(
    sdata: SpatialData,
    grid: str = "ps4",
    *,
    bin_size: float | None = None,
    image_key: str | None = None,
    spots_key: str | None = None,
    table_key: str | None = None,
    microns_per_pixel: float | None = None,
    tissue: TissueMask | np.ndarray | bool | None = None,
) -> gpd.GeoDataFrame:
    """A denser grid of regions for super-resolution, as spatialdata shapes beside the spots.

    - ``"ps4"`` (alias ``"pseudospot4"``): from the fitted lattice basis ``u1, u2`` of the measured spots, the
      points ``v + (a·u1 + b·u2)/2`` — half the spacing, 4× the density (square, hexagonal and
      centred-rectangular lattices alike), circles of half the spot diameter. The measured spots are among them.
    - ``"ps16"``: the same at a quarter of the spacing, circles of a quarter of the diameter.
    - ``bin_size=N`` (or ``"binNum"``): squares of N µm, aligned with the image axes from its origin.

    Points are kept where the tissue mask is set and within one lattice pitch (bins: one nearest-neighbour
    spacing) of a measured spot, so the grid never extrapolates far from measured tissue.

    Parameters
    ----------
    {sdata}
    grid
        ``"ps4"``, ``"ps16"`` or ``"bin<N>um"``.
    bin_size
        Square bin side in µm (overrides ``grid``).
    {keys}
    {mpp}
    tissue
        A :class:`TissueMask`, a boolean array over level 0, ``False`` to keep every point, or ``None`` to
        detect tissue with :func:`tissue_mask`.

    Returns
    -------
    A GeoDataFrame (``ShapesModel``) in the spots' coordinates with their transformations, indexed 0..n-1.

    Examples
    --------
    >>> import stpredict as stp
    >>> sdata = stp.datasets.synthetic(image_size=768, n_genes=5, seed=0)
    >>> ps4 = stp.pp.grid(sdata, "ps4")
    >>> len(ps4) > 2 * len(sdata.shapes["spots"])
    True
    """
    from ._spots import spots

    geo = spots(
        sdata, image_key=image_key, spots_key=spots_key, table_key=table_key, microns_per_pixel=microns_per_pixel
    )
    mask = resolve_tissue(sdata, geo, tissue)
    pts = make_grid(geo, grid, bin_size=bin_size, mask=mask)
    return grid_to_shapes(geo, pts)


def resolve_tissue(
    sdata: SpatialData,
    geo: SpotGeometry,
    tissue: TissueMask | np.ndarray | bool | None,  # noqa: FBT001
) -> TissueMask | None:
    """Turn the ``tissue=`` argument into a :class:`TissueMask` (or ``None`` for no masking)."""
    if tissue is False:
        return None
    if isinstance(tissue, TissueMask):
        return tissue
    if tissue is None or tissue is True:
        return tissue_mask(sdata, image_key=geo.image_key, microns_per_pixel=geo.microns_per_pixel)
    arr = np.asarray(tissue, dtype=bool)
    h, w = geo.image_shape
    return TissueMask(arr, factor_x=w / arr.shape[1], factor_y=h / arr.shape[0])
