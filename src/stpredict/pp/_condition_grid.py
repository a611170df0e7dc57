"""Condition a grid of :func:`~stpredict.pp.make_grid` (or cells) on the measured spots of a :class:`SpotGeometry`.

The geometry front of :func:`~stpredict.pp.condition_on_spots`: the grid's centres and the spots are converted
to µm, and cells (polygons) bring their own polygon ∩ disk overlap areas.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ._condition import condition_on_spots

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from ._condition import ConditionResult
    from ._grid import GridPoints
    from ._spots import SpotGeometry

__all__ = ["condition_grid"]


def condition_grid(
    pred: ArrayLike,
    grid: GridPoints,
    geo: SpotGeometry,
    measured: ArrayLike,
    **kwargs: Any,
) -> ConditionResult:
    """:func:`condition_on_spots` for a :class:`GridPoints` of the spots in ``geo`` (converted to µm).

    Parameters
    ----------
    pred
        ``(grid.n, n_genes)`` image-only prediction for the grid's regions, linear normalised units.
    grid
        The grid from :func:`make_grid` (level-0 pixels; its centres are converted with ``geo.px_to_um``,
        so anisotropic pixels are handled; its ``kind`` and ``size_um`` give the region shape), or cells
        (``kind="polygon"``): their overlap with each spot disk is the polygon ∩ disk area
        (:func:`~stpredict.pp._cells.polygon_disk_overlap`, in µm²), the same rule as for bins, and
        ``coverage`` is the share of each polygon's own area inside measured spots.
    geo
        The measured spots (:func:`spots`): centres and diameter, converted to µm.
    measured
        ``(geo.n_spots, n_genes)`` measured normalised expression in the row order of ``geo``, linear units.
    **kwargs
        Passed to :func:`condition_on_spots` (``std``, ``gate``, ``spot_pattern``, ...).

    Returns
    -------
    A :class:`ConditionResult` in the grid's region order.
    """
    if grid.kind == "polygon":
        from ._cells import polygon_disk_overlap, polygons_to_um

        polys = polygons_to_um(grid.polygons, geo.microns_per_pixel_xy)
        area = polygon_disk_overlap(geo.centers_um, geo.diameter_um, polys)
        res = condition_on_spots(
            pred,
            geo.px_to_um(grid.centers),
            geo.centers_um,
            measured,
            region_kind="circle",  # only sizes the records: the overlap is the polygons' own
            region_size_um=float(grid.size_um),
            spot_diameter_um=geo.diameter_um,
            overlap=area,
            **kwargs,
        )
        import shapely

        res.coverage = np.asarray(area.sum(0)).ravel() / shapely.area(polys)
        return res
    return condition_on_spots(
        pred,
        geo.px_to_um(grid.centers),
        geo.centers_um,
        measured,
        region_kind=grid.kind,
        region_size_um=float(grid.size_um),
        spot_diameter_um=geo.diameter_um,
        **kwargs,
    )
