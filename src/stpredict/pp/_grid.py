"""Super-resolution grids: pseudo-spot lattices (ps4, ps16) and square µm bins."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from scipy.spatial import cKDTree

from .._args import check_length
from .._docs import doc_params
from .._keys import canonical_grid_name, parse_grid_name
from .._logging import get_logger
from ._bin_lattice import IMAGE_AXES, lattice_bin_centers, measured_bin_lattice
from ._grid_lattice import FRAME_KEY, GridLattice, bins_lattice
from ._lattice import Lattice, fit_lattice
from ._tissue import TissueMask, tissue_mask

if TYPE_CHECKING:
    import geopandas as gpd
    from spatialdata import SpatialData

    from ._bin_lattice import BinLattice
    from ._spots import SpotGeometry

__all__ = ["GridPoints", "Lattice", "fit_lattice", "grid", "make_grid"]

logger = get_logger(__name__)


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
        ``"circle"`` (pseudo-spots), ``"square"`` (bins) or ``"polygon"`` (cells of a shapes element, see
        :func:`stpredict.pp._cells.cells_grid`).
    centers
        ``(n, 2)`` centres (x, y) in level-0 px (centroids of polygons).
    size_px
        ``(2,)`` diameter (circles) or side (squares) along x and y in px; polygons: the median diameter of
        the circle of equal area.
    size_um
        Diameter or side in µm (polygons: the median equal-area diameter).
    nearest_spot
        Index (into the measured spots) of the nearest measured spot.
    measured
        True where the region coincides with a measured spot (ps grids).
    polygons
        ``(n,)`` shapely polygons in level-0 px when ``kind == "polygon"``, else ``None``.
    rotation_deg
        Squares: their angle from the image axes in degrees, in µm (0 unless laid on rotated measured bins).
    lattice
        Squares: ``"image axes"`` or the measured bins' lattice they follow, e.g.
        ``"measured bins (rotation 0.40°)"``; ``None`` for other grids.
    frame
        Squares: that lattice as a :class:`~stpredict.pp.GridLattice` (origin, axes, side, pitch, rotation in
        µm of the image frame), the one :func:`~stpredict.pp.grid_lattice` reads back; ``None`` for other grids.
    """

    name: str
    kind: Literal["circle", "square", "polygon"]
    centers: np.ndarray
    size_px: np.ndarray
    size_um: float
    nearest_spot: np.ndarray
    measured: np.ndarray
    polygons: Any = None
    rotation_deg: float = 0.0
    lattice: str | None = None
    frame: GridLattice | None = None

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
    indices: np.ndarray | None = None,
    lattice: BinLattice | None = None,
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
        (or ``"bin<N>"``): squares of ``N`` µm (see :func:`grid` for their alignment). Ignored when
        ``bin_size`` is given.
    bin_size
        Side of square bins in µm; overrides ``grid``.
    mask
        Tissue mask: regions whose centre is off tissue are dropped (pseudo-spots at measured spots are
        always kept). ``None`` keeps every region (unlike :func:`grid`, which detects tissue by default).
    max_distance
        Largest distance, in level-0 pixels, from a region's centre to the nearest measured spot's centre;
        farther regions are dropped. ``None``: one lattice pitch for pseudo-spots, the median
        nearest-neighbour spacing of the spots for bins.
    indices
        ``(n_spots, 2)`` integer ``(array_col, array_row)`` of square measured bins (Visium HD), in the order of
        ``geo``: the exact lattice of the bins that ``bin<N>um`` squares then follow. ``None``: fitted from the
        bins' centres.
    lattice
        The measured bins' lattice to lay ``bin<N>um`` squares on when ``geo``'s own regions are not those bins,
        e.g. the bins its spots were pooled from (found by :func:`grid` and :func:`stpredict.tl.superresolve`);
        ``None``: fitted on ``geo``'s bins when they are squares.

    Returns
    -------
    A :class:`GridPoints` in level-0 pixels, sorted by row (y) then x (squares on measured bins' lattice: by
    its row, then column), with the lattice in ``lattice`` and ``rotation_deg`` for bins: pseudo-spots that coincide with a
    measured spot sit at its measured centre and are flagged in ``measured``; bins are never ``measured``.

    Raises
    ------
    ValueError
        If ``grid`` is not a known grid name; for pseudo-spot grids, if the spots do not sit on a lattice
        (see :func:`fit_lattice`); for bins, if a bin is narrower than 2 image pixels.
    """
    if bin_size is not None:
        check_length("bin_size", bin_size, hint=" Bins are squares of bin_size µm, e.g. bin_size=8.")
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
        rotation, described, on_bins, rank = 0.0, IMAGE_AXES, None, None
        lat = lattice if lattice is not None else measured_bin_lattice(geo, indices)
        if lat is not None:
            on_bins = lattice_bin_centers(lat, side_um, geo.centers_um, reach * mpp.max(), np.array([w, h]) * mpp)
            if on_bins is None:
                logger.info(
                    "Bins of %g µm neither split nor group the %g µm measured bins: image axes.", side_um, lat.side_um
                )
        if on_bins is not None:
            pts, rank = geo.um_to_px(on_bins[0]), on_bins[2]  # sorted by lattice row, then column
            side_um, rotation, described = on_bins[1], lat.rotation_deg, lat.describe()
            side_px = side_um / mpp
            frame = GridLattice.on_bins(lat, side_um)
        else:
            lo = np.maximum((geo.centers.min(0) - reach) * mpp, 0.0)
            hi = np.minimum((geo.centers.max(0) + reach) * mpp, np.array([w, h]) * mpp)
            ix = np.arange(np.floor(lo[0] / side_um), np.ceil(hi[0] / side_um))
            iy = np.arange(np.floor(lo[1] / side_um), np.ceil(hi[1] / side_um))
            gx, gy = np.meshgrid(ix, iy)
            pts = (np.column_stack([gx.ravel(), gy.ravel()]) + 0.5) * side_um / mpp
            frame = GridLattice.image_axes(side_um)
        d, nearest = tree.query(pts)
        # on the bins' lattice, squares one pitch from a bin are kept whatever the rounding of their distance
        keep = d <= (reach * (1 + 1e-6) if on_bins is not None else reach)
        if mask is not None:
            keep &= mask.contains(pts)
        pts, nearest = pts[keep], nearest[keep]
        rank = pts if on_bins is None else rank[keep]
        is_measured = np.zeros(len(pts), dtype=bool)
        size = side_px
        size_um = side_um
        if len(pts) == 0:
            span = (geo.centers.max(0) - geo.centers.min(0)) * mpp
            msg = (
                f"Bins of {side_um:g} µm leave no bin whose centre lies within {reach * mpp.mean():.3g} µm of a "
                f"measured spot{' on tissue' if mask is not None else ''} (the spots span {span[0]:.0f} × "
                f"{span[1]:.0f} µm): use a bin_size well below that, e.g. bin_size=8 (or tissue=False)."
            )
            raise ValueError(msg)
    order = np.lexsort((pts[:, 0], pts[:, 1]) if kind == "ps" else (rank[:, 0], rank[:, 1]))
    return GridPoints(
        name=name,
        kind="circle" if kind == "ps" else "square",
        centers=pts[order],
        size_px=np.asarray(size, dtype=float),
        size_um=float(size_um),
        nearest_spot=nearest[order],
        measured=is_measured[order],
        **({"rotation_deg": rotation, "lattice": described, "frame": frame} if kind != "ps" else {}),
    )


def square_corners(geo: SpotGeometry, pts: GridPoints) -> np.ndarray:
    """``(n, 4, 2)`` corners of a square grid in level-0 px: turned by ``pts.rotation_deg`` in µm, then to px."""
    t = np.radians(pts.rotation_deg)
    half = pts.size_um / 2.0
    u, v = half * np.array([np.cos(t), np.sin(t)]), half * np.array([-np.sin(t), np.cos(t)])
    if t == 0.0:  # axis-aligned: exactly the half-sides in px (anisotropic pixels included)
        u, v = np.array([pts.size_px[0] / 2.0, 0.0]), np.array([0.0, pts.size_px[1] / 2.0])
    else:
        u, v = geo.um_to_px(u), geo.um_to_px(v)
    return pts.centers[:, None, :] + np.stack([-u - v, u - v, u + v, v - u])[None]


def grid_to_shapes(geo: SpotGeometry, pts: GridPoints) -> gpd.GeoDataFrame:
    """The grid as a spatialdata shapes element in the spots' coordinates, their transformations copied.

    Squares carry their lattice in ``attrs``: ``"lattice"`` (its description) and ``"lattice_frame"``
    (:meth:`GridLattice.to_record`).
    """
    import shapely
    from spatialdata.models import ShapesModel

    ts = dict(geo.shapes_transformations)
    if pts.kind == "circle":
        xy = geo.image_to_shapes(pts.centers)
        scale = float(np.sqrt(abs(np.linalg.det(np.linalg.inv(geo.shapes_to_image)[:2, :2]))))
        radius = np.full(pts.n, float(pts.size_px.mean()) / 2.0 * scale)
        return ShapesModel.parse(xy, geometry=0, radius=radius, index=np.arange(pts.n), transformations=ts)
    import geopandas as gpd

    corners = square_corners(geo, pts)
    corners = geo.image_to_shapes(corners.reshape(-1, 2)).reshape(-1, 4, 2)
    polys = shapely.polygons(corners)
    gdf = gpd.GeoDataFrame(geometry=polys, index=np.arange(pts.n))
    shapes = ShapesModel.parse(gdf, transformations=ts)
    if pts.lattice is not None:
        shapes.attrs["lattice"] = pts.lattice
    if pts.frame is not None:
        shapes.attrs[FRAME_KEY] = pts.frame.to_record()
    return shapes


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
    - ``bin_size=N`` (or ``"binNum"``): squares of N µm. When the measured regions are squares on a lattice
      (Visium HD bins) and N divides their side or is a whole multiple of it, the squares follow the measured
      bins' own lattice, rotated and offset in the image as Space Ranger registered it (fitted from the table's
      ``array_row``/``array_col``, else from the bins' centres): ``N`` = side gives the measured bins, side/2
      nests four squares in each, 2 × side groups four whole bins. Spots pooled from such bins
      (:func:`pool_to_spots`, the bins still in ``sdata``) get squares on the bins' lattice too, so each square
      is a measured bin or a union of whole bins. Otherwise (spots, H&E-only, or an N that does not nest) they
      are aligned with the image axes from its origin.

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
    A GeoDataFrame (``ShapesModel``) in the spots' coordinates with their transformations, indexed 0..n-1;
    squares are polygons (rotated with the measured bins' lattice), and ``.attrs["lattice"]`` records which
    alignment bins took (``"image axes"`` or e.g. ``"measured bins (rotation 0.40°)"``) and
    ``.attrs["lattice_frame"]`` the lattice itself as plain numbers. Whether ``attrs`` survive a zarr round trip
    depends on the geopandas writing it: :func:`grid_lattice` finds the lattice either way.

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
    table = sdata.tables[geo.table_key] if geo.table_key is not None else None
    lattice = bins_lattice(sdata, geo, table, grid, bin_size)
    pts = make_grid(geo, grid, bin_size=bin_size, mask=mask, lattice=lattice)
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
