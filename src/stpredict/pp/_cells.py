"""Cells as super-resolution regions: any polygons (or circles) of a shapes element, resolved in image pixels.

A cell segmentation (Xenium cell boundaries, Visium HD's segmentation GeoJSON read as polygons, any shapes
element) becomes a :class:`~stpredict.pp.GridPoints` of kind ``"polygon"``: one region per geometry, in the
shapes element's order, with its polygon in the H&E's level-0 pixels and its centroid as centre. Circles
(a ``radius`` column) are turned into polygons (64-gon disks, ellipses if the transformation is anisotropic).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from .._image import image_levels
from .._logging import get_logger
from ._spots import _affine, _coordinate_systems

if TYPE_CHECKING:
    from spatialdata import SpatialData

    from ._grid import GridPoints
    from ._spots import SpotGeometry

__all__ = ["CELLS_GRID", "CellShapes", "cells_grid", "check_cells_touch_spots", "polygon_disk_overlap", "resolve_cells"]

logger = get_logger(__name__)

#: ``grid=`` value of :func:`stpredict.tl.superresolve` that predicts the polygons of a shapes element
CELLS_GRID = "cells"
_CIRCLE_SEGMENTS = 16  # quarter-circle segments of a buffered circle (64 vertices)


@dataclass
class CellShapes:
    """The polygons of a shapes element in an image's level-0 pixels, in the element's row order.

    Attributes
    ----------
    shapes_key
        The shapes element.
    index
        Its index values (the table's instance ids), in row order.
    polygons_px
        ``(n,)`` shapely polygons / multipolygons in level-0 pixels of the image.
    centers_px
        ``(n, 2)`` their centroids (x, y) in level-0 pixels.
    coordinate_system
        The coordinate system through which the shapes were mapped onto the image.
    source_kind
        ``"polygon"`` or ``"circle"`` (circles turned into polygons).
    """

    shapes_key: str
    index: np.ndarray
    polygons_px: np.ndarray
    centers_px: np.ndarray
    coordinate_system: str
    source_kind: str

    @property
    def n(self) -> int:
        """Number of cells."""
        return int(len(self.index))


def resolve_cells(
    sdata: SpatialData,
    shapes_key: str | None,
    *,
    image_key: str,
    coordinate_system: str | None = None,
) -> CellShapes:
    """Read the polygons of ``sdata.shapes[shapes_key]`` in the level-0 pixels of ``image_key``; cheap checks only.

    Parameters
    ----------
    sdata
        The SpatialData.
    shapes_key
        Shapes element of the cells: polygons / multipolygons, or circles (points with a ``radius`` column).
    image_key
        The H&E image the cells are read on.
    coordinate_system
        Preferred coordinate system shared by the shapes and the image (e.g. the spots'); any shared one
        otherwise.

    Returns
    -------
    A :class:`CellShapes`.

    Raises
    ------
    ValueError
        Without ``shapes_key``; for points without radius or other non-polygon geometries, empty or zero-area
        geometries, a non-unique index; when the shapes share no coordinate system with the image, or when no
        centroid lies inside the image.
    KeyError
        If ``shapes_key`` names no shapes element (the message says if it is a points element).
    """
    import shapely

    if shapes_key is None:
        msg = (
            "grid='cells' predicts the polygons of a shapes element: pass shapes_key=... naming it "
            f"(shapes: {list(sdata.shapes)})."
        )
        raise ValueError(msg)
    if shapes_key not in sdata.shapes:
        other = [k for k in ("points", "labels", "images", "tables") if shapes_key in getattr(sdata, k)]
        hint = (
            f" {shapes_key!r} is a {other[0][:-1]} element: cells must be polygons or circles in sdata.shapes"
            + (" (points are e.g. transcripts, not regions)" if other[0] == "points" else "")
            + "."
            if other
            else ""
        )
        msg = f"No shapes element {shapes_key!r} for grid='cells'; shapes: {list(sdata.shapes)}.{hint}"
        raise KeyError(msg)
    gdf = sdata.shapes[shapes_key]
    if len(gdf) == 0:
        msg = f"Shapes {shapes_key!r} holds no geometry."
        raise ValueError(msg)
    if not gdf.index.is_unique:
        msg = f"Shapes {shapes_key!r} has a non-unique index: the table's rows are named by it. Reset its index."
        raise ValueError(msg)
    geoms = np.asarray(gdf.geometry.array)
    types = shapely.get_type_id(geoms)
    is_point = types == shapely.GeometryType.POINT
    is_poly = np.isin(types, [shapely.GeometryType.POLYGON, shapely.GeometryType.MULTIPOLYGON])
    if is_point.any() and "radius" not in gdf.columns:
        msg = (
            f"Shapes {shapes_key!r} holds points without a 'radius' column: cells must be polygons or circles "
            "(points with a radius), not points."
        )
        raise ValueError(msg)
    if not (is_point | is_poly).all():
        bad = sorted({shapely.GeometryType(t).name for t in np.unique(types[~(is_point | is_poly)])})
        msg = f"Shapes {shapes_key!r} holds {bad} geometries: cells must be polygons, multipolygons or circles."
        raise ValueError(msg)
    if shapely.is_empty(geoms).any():
        msg = f"Shapes {shapes_key!r} holds {int(shapely.is_empty(geoms).sum())} empty geometries; drop them."
        raise ValueError(msg)
    if is_point.any():
        radius = gdf["radius"].to_numpy(dtype=float)
        geoms = np.where(
            is_point, shapely.buffer(geoms, np.where(is_point, radius, 0.0), quad_segs=_CIRCLE_SEGMENTS), geoms
        )

    image = sdata.images[image_key]
    shared = sorted(set(_coordinate_systems(gdf)) & set(_coordinate_systems(image)))
    if not shared:
        msg = (
            f"Shapes {shapes_key!r} and image {image_key!r} share no coordinate system (shapes: "
            f"{_coordinate_systems(gdf)}; image: {_coordinate_systems(image)}): add a transformation of the cells "
            "to one of the image's coordinate systems (e.g. the spots' with set_transformation)."
        )
        raise ValueError(msg)
    cs = coordinate_system if coordinate_system in shared else ("global" if "global" in shared else shared[0])
    a = np.linalg.inv(_affine(image, cs)) @ _affine(gdf, cs)
    polys = shapely.transform(geoms, lambda xy: xy @ a[:2, :2].T + a[:2, 2])
    area = shapely.area(polys)
    if (area <= 0).any():
        msg = f"Shapes {shapes_key!r} holds {int((area <= 0).sum())} polygons of zero area; drop them."
        raise ValueError(msg)
    cent = shapely.get_coordinates(shapely.centroid(polys))
    h, w = image_levels(image)[0].shape_yx
    inside = (cent[:, 0] >= 0) & (cent[:, 0] <= w) & (cent[:, 1] >= 0) & (cent[:, 1] <= h)
    if not inside.any():
        lo, hi = cent.min(0), cent.max(0)
        msg = (
            f"No cell of {shapes_key!r} has its centroid inside image {image_key!r} ({w}×{h} px) through "
            f"coordinate system {cs!r} (centroids span x {lo[0]:.0f}–{hi[0]:.0f}, y {lo[1]:.0f}–{hi[1]:.0f} px): "
            "the segmentation does not overlap the image. Check its transformations."
        )
        raise ValueError(msg)
    if not inside.all():
        logger.warning(
            "%d of %d cells of %r have their centroid outside image %r; their windows are padded white.",
            int((~inside).sum()), len(inside), shapes_key, image_key,
        )  # fmt: skip
    return CellShapes(
        shapes_key=shapes_key,
        index=gdf.index.to_numpy(),
        polygons_px=polys,
        centers_px=cent.astype(float),
        coordinate_system=cs,
        source_kind="circle" if is_point.all() else "polygon",
    )


def cells_grid(cells: CellShapes, geo: SpotGeometry) -> GridPoints:
    """The cells as a :class:`GridPoints` of kind ``"polygon"`` beside the measured spots of ``geo``.

    ``size_um``/``size_px`` are the median diameter of the circle of equal area (records, plots); the
    polygons themselves are in ``polygons``. No cell is ``measured``; ``nearest_spot`` is by centroid.
    """
    import shapely
    from scipy.spatial import cKDTree

    from ._grid import GridPoints

    _, nearest = cKDTree(geo.centers).query(cells.centers_px)
    d_px = 2.0 * np.sqrt(shapely.area(cells.polygons_px) / np.pi)
    size_px = float(np.median(d_px))
    return GridPoints(
        name=CELLS_GRID,
        kind="polygon",
        centers=cells.centers_px,
        size_px=np.full(2, size_px),
        size_um=size_px * geo.microns_per_pixel,
        nearest_spot=np.asarray(nearest),
        measured=np.zeros(cells.n, dtype=bool),
        polygons=cells.polygons_px,
    )


def polygons_to_um(polygons_px: np.ndarray, microns_per_pixel_xy: tuple[float, float]) -> np.ndarray:
    """Shapely geometries in level-0 pixels scaled to µm (x and y by their own pixel size)."""
    import shapely

    s = np.asarray(microns_per_pixel_xy, dtype=float)
    return shapely.transform(np.asarray(polygons_px), lambda xy: xy * s)


def polygon_disk_overlap(
    spot_centers: np.ndarray, spot_diameter: float, polygons: np.ndarray, *, quad_segs: int = 64
) -> sp.csr_matrix:
    """Sparse ``(n_spots, n_polygons)`` overlap areas between spot disks and polygons (same unit, e.g. µm²).

    The disks are shapely buffers with ``4 · quad_segs`` vertices (relative area error ~1e-5); candidates come
    from an STR-tree of the polygons. The rule of :func:`~stpredict.pp._condition_core.overlap_matrix` for
    bins and pseudo-spots: entries below 1e-9 of the smaller shape's area are dropped.
    """
    import shapely

    polygons = np.asarray(polygons)
    disks = shapely.buffer(
        shapely.points(np.asarray(spot_centers, dtype=float)), spot_diameter / 2, quad_segs=quad_segs
    )
    tree = shapely.STRtree(polygons)
    rows, cols = tree.query(disks, predicate="intersects")
    area = shapely.area(shapely.intersection(disks[rows], polygons[cols])) if len(rows) else np.zeros(0)
    smallest = np.minimum(shapely.area(polygons[cols]), np.pi * spot_diameter**2 / 4)
    keep = area > 1e-9 * smallest
    return sp.csr_matrix((area[keep], (rows[keep], cols[keep])), shape=(len(disks), len(polygons)))


def check_cells_touch_spots(points: GridPoints, geo: SpotGeometry) -> None:
    """Raise before any work if ``condition="measured"`` cannot hold: no cell overlaps any measured spot disk."""
    area = polygon_disk_overlap(
        geo.centers_um, geo.diameter_um, polygons_to_um(points.polygons, geo.microns_per_pixel_xy)
    )
    if area.nnz == 0:
        msg = (
            f"condition='measured': none of the {points.n} cells overlaps any of the {geo.n_spots} measured spots "
            f"of {geo.spots_key!r}, so there is nothing to condition them on; pass condition='none' for the "
            "image-only prediction."
        )
        raise ValueError(msg)


def describe_cells(cells: CellShapes, geo: SpotGeometry) -> dict[str, Any]:
    """A small record of the cells for ``uns``."""
    import shapely

    area_um2 = shapely.area(cells.polygons_px) * float(np.prod(geo.microns_per_pixel_xy))
    return {
        "shapes_key": cells.shapes_key,
        "coordinate_system": cells.coordinate_system,
        "source_kind": cells.source_kind,
        "n_cells": cells.n,
        "median_area_um2": float(np.median(area_um2)),
    }
