"""Condition a grid of :func:`~stpredict.pp.make_grid` (or cells) on the measured spots of a :class:`SpotGeometry`.

The geometry front of :func:`~stpredict.pp.condition_on_spots`: the grid's centres and the spots are converted
to µm, and cells (polygons) bring their own polygon ∩ disk overlap areas.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ._condition import ConditionResult
from ._condition_plan import RegionSource, plan_condition

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from ._condition_plan import ConditionPlan
    from ._grid import GridPoints
    from ._spots import SpotGeometry

__all__ = ["condition_grid", "plan_grid"]


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
        so anisotropic pixels are handled; its ``kind``, ``size_um`` and ``rotation_deg`` give the region
        shape: squares on a rotated bin lattice overlap each disk by their rotated area), or cells
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
    plan = plan_grid(RegionSource(pred, kwargs.pop("std", None)), grid, geo, measured, **kwargs)
    values, std = plan.values_all()
    return ConditionResult(values=values, std=std, **plan.result_fields())


def plan_grid(
    source: RegionSource, grid: GridPoints, geo: SpotGeometry, measured: ArrayLike, **kwargs: Any
) -> ConditionPlan:
    """:func:`~stpredict.pp._condition_plan.plan_condition` for a grid, as :func:`condition_grid` conditions it.

    ``source`` holds the grid's prediction (and std); the plan's :meth:`~ConditionPlan.values` then gives the
    conditioned values block by block.
    """
    if grid.kind == "polygon":
        from ._cells import polygon_disk_overlap, polygons_to_um

        polys = polygons_to_um(grid.polygons, geo.microns_per_pixel_xy)
        area = polygon_disk_overlap(geo.centers_um, geo.diameter_um, polys)
        plan = plan_condition(
            source,
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

        plan.coverage = np.asarray(area.sum(0)).ravel() / shapely.area(polys)
        return plan
    overlap = kwargs.pop("overlap", None)
    if overlap is None and grid.kind == "square" and grid.rotation_deg:
        from ._condition_core import overlap_matrix

        overlap = overlap_matrix(
            geo.centers_um, geo.diameter_um, geo.px_to_um(grid.centers), "square", float(grid.size_um),
            rotation_deg=grid.rotation_deg,
        )  # fmt: skip
    return plan_condition(
        source,
        geo.px_to_um(grid.centers),
        geo.centers_um,
        measured,
        overlap=overlap,
        region_kind=grid.kind,
        region_size_um=float(grid.size_um),
        spot_diameter_um=geo.diameter_um,
        **kwargs,
    )
