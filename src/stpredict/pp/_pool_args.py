"""Arguments and source elements of :func:`~stpredict.pp.pool_to_spots`: resolved and checked before any work."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._keys import UNS_KEY
from .._validate import check_element_free, pick_key, table_region

if TYPE_CHECKING:
    from spatialdata import SpatialData

__all__ = [
    "LAYOUTS",
    "check_new_names",
    "lattice_params",
    "resolve_source",
]

#: ``layout -> (lattice, spot diameter µm, centre-to-centre spacing µm)``.
LAYOUTS = {"visium": ("hexagonal", 55.0, 100.0), "st": ("square", 100.0, 200.0)}


def lattice_params(layout: str, diameter_um: float | None, spacing_um: float | None) -> tuple[str, float, float]:
    """``(lattice kind, diameter µm, spacing µm)`` of ``layout``, overridden by the given diameter and spacing."""
    if layout not in LAYOUTS:
        msg = f"layout must be 'visium' (hexagonal, 55 µm / 100 µm) or 'st' (square, 100 µm / 200 µm), got {layout!r}."
        raise ValueError(msg)
    lattice, d, s = LAYOUTS[layout]
    d = d if diameter_um is None else diameter_um
    s = s if spacing_um is None else spacing_um
    for name, v in (("diameter_um", d), ("spacing_um", s)):
        if isinstance(v, bool) or not isinstance(v, int | float | np.number) or not np.isfinite(v) or v <= 0:
            msg = f"{name} must be a positive number of µm, got {v!r}."
            raise ValueError(msg)
    return lattice, float(d), float(s)


def resolve_source(sdata: SpatialData, table_key: str | None, shapes_key: str | None) -> tuple[str, str]:
    """``(table_key, shapes_key)`` of the source regions: the table of counts and the shapes it annotates."""
    if shapes_key is not None:
        pick_key(sdata, "shapes", shapes_key)
    if table_key is None:
        annotating = [
            k
            for k, t in sdata.tables.items()
            if any(r in sdata.shapes and (shapes_key is None or r == shapes_key) for r in table_region(t)[0])
        ]
        if not annotating:
            msg = (
                f"No table annotates {'shapes ' + repr(shapes_key) if shapes_key else 'a shapes element'}; the "
                f"SpatialData has tables {list(sdata.tables)}. Link the counts with TableModel.parse(..., region=...)."
            )
            raise KeyError(msg)
        if len(annotating) > 1:  # tables pooled here annotate their own spots: not high-resolution sources
            source = [k for k in annotating if "pool_to_spots" not in sdata.tables[k].uns.get(UNS_KEY, {})]
            annotating = source or annotating
        if len(annotating) > 1:
            msg = f"Several tables annotate the regions ({', '.join(map(repr, annotating))}): pass table_key=..."
            raise KeyError(msg)
        table_key = annotating[0]
    else:
        pick_key(sdata, "tables", table_key)
    regions, region_key, instance_key = table_region(sdata.tables[table_key])
    if region_key is None or instance_key is None:
        msg = f"Table {table_key!r} has no region/instance keys; parse it with TableModel.parse(region=..., region_key=..., instance_key=...)."
        raise ValueError(msg)
    shape_regions = [r for r in regions if r in sdata.shapes]
    if shapes_key is None:
        if len(shape_regions) != 1:
            msg = f"Table {table_key!r} annotates {regions or 'no region'}; pass shapes_key=... naming the regions."
            raise KeyError(msg)
        shapes_key = shape_regions[0]
    elif shapes_key not in regions:
        msg = (
            f"Table {table_key!r} does not annotate shapes {shapes_key!r} (it annotates {regions}): pass its table_key."
        )
        raise KeyError(msg)
    return table_key, shapes_key


def check_new_names(
    sdata: SpatialData, key: str, table_key_new: str, shapes_key: str, table_key: str, *, overwrite: bool, inplace: bool
) -> None:
    """Raise if the new element names are invalid, replace the sources, or exist (unless ``overwrite``)."""
    from spatialdata._core.validation import check_valid_name

    for name in (key, table_key_new):
        try:
            check_valid_name(name)
        except (TypeError, ValueError) as e:
            msg = f"key_added={key!r} gives an invalid element name {name!r}: {e}"
            raise ValueError(msg) from e
    if {key.lower(), table_key_new.lower()} & {shapes_key.lower(), table_key.lower()}:
        msg = f"key_added={key!r} would replace the source elements {shapes_key!r}/{table_key!r}: choose another name."
        raise ValueError(msg)
    if not inplace:
        return
    for name, kind in ((key, "shapes"), (table_key_new, "tables")):
        check_element_free(sdata, name, kind, overwrite=overwrite)
    if key in sdata.tables[table_key].obs.columns and not overwrite:
        msg = f"Table {table_key!r} already has an obs column {key!r}: pass another key_added or overwrite=True."
        raise KeyError(msg)
