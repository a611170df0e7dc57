"""Measured regions that are not circles: centres and diameters of square and other polygons."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["shape_centers", "shape_kind"]


def shape_centers(gdf: Any) -> tuple[np.ndarray, np.ndarray]:
    """Centres ``(n, 2)`` and diameters ``(n,)`` of circles or polygons, in the shapes' own coordinates.

    Circles: their centre and ``2 · radius``. Polygons: their centroid and, for squares (any orientation), the
    side; for any other polygon, the diameter of the circle of equal area (see :func:`shape_kind`).
    """
    geom = gdf.geometry
    if "radius" in gdf.columns:
        xy = np.column_stack([geom.x.to_numpy(), geom.y.to_numpy()]).astype(float)
        return xy, 2.0 * gdf["radius"].to_numpy(dtype=float)
    cent = geom.centroid
    xy = np.column_stack([cent.x.to_numpy(), cent.y.to_numpy()]).astype(float)
    sides = _square_sides(geom)
    if sides is not None:
        return xy, sides
    return xy, 2.0 * np.sqrt(geom.area.to_numpy(dtype=float) / np.pi)


def shape_kind(gdf: Any) -> str:
    """``"circle"`` (a ``radius`` column), ``"square"`` (every geometry a square polygon) or ``"polygon"``."""
    if "radius" in gdf.columns:
        return "circle"
    return "square" if _square_sides(gdf.geometry) is not None else "polygon"


def _square_sides(geom: Any, rtol: float = 1e-6) -> np.ndarray | None:
    """Sides of the geometries if every one is a square without holes (4 equal sides, equal diagonals)."""
    import shapely

    arr = np.asarray(geom.array)
    if len(arr) == 0 or not (shapely.get_type_id(arr) == shapely.GeometryType.POLYGON).all():
        return None
    ring = shapely.get_exterior_ring(arr)
    if shapely.get_num_interior_rings(arr).any() or not (shapely.get_num_coordinates(ring) == 5).all():
        return None
    c = shapely.get_coordinates(ring).reshape(-1, 5, 2)
    edges = np.linalg.norm(np.diff(c, axis=1), axis=2)  # (n, 4)
    side = edges.mean(axis=1)
    d1 = np.linalg.norm(c[:, 2] - c[:, 0], axis=1)
    d2 = np.linalg.norm(c[:, 3] - c[:, 1], axis=1)
    tol = rtol * side
    square = (side > 0) & (np.abs(edges - side[:, None]).max(axis=1) <= tol) & (np.abs(d1 - d2) <= tol)
    return side if square.all() else None
