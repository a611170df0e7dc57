"""Input checks of the spots' geometry: ids, transformations, centres, sizes, fit to the image, dangling tables."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .._args import close_matches
from .._validate import table_region

if TYPE_CHECKING:
    import pandas as pd
    from spatialdata import SpatialData

__all__ = ["check_centers", "check_not_singular", "check_on_image", "check_sizes", "several_tables_error"]


def _check_unique(index: pd.Index, what: str, fix: str) -> None:
    if index.is_unique:
        return
    dup = index[index.duplicated()]
    msg = f"{what} repeats {len(dup)} ids (e.g. {dup.unique()[:3].tolist()}): {fix}."
    raise ValueError(msg)


def _raise_dangling_tables(sdata: SpatialData) -> None:
    """Raise for a table annotating regions that are not elements of ``sdata`` (a misnamed region)."""
    elements = set(sdata.shapes) | set(sdata.labels) | set(sdata.points)
    for k, t in sdata.tables.items():
        regions, _, _ = table_region(t)
        missing = [r for r in regions if r not in elements]
        if regions and len(missing) == len(regions):
            close = close_matches(missing[0], sdata.shapes, n=1, cutoff=0.5)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            msg = (
                f"Table {k!r} annotates {_names(missing)}, which the SpatialData does not have (its shapes: "
                f"{_names(sdata.shapes)}).{hint} Re-link the table to the spots: "
                "spatialdata.models.TableModel.parse(table, region=<spots_key>, region_key=..., instance_key=...), "
                "with the region column naming that element."
            )
            raise KeyError(msg)


def several_tables_error(sdata: SpatialData, annotating: list[str]) -> KeyError:
    """The error for several tables annotating spots: each table with the shapes it annotates, and the fix.

    Each may annotate its own shapes (after ``stp.pp.pool_to_spots`` the source bins and the pooled spots are
    two measured slides at two scales): which one is meant is the user's choice, not guessed.
    """
    parts = []
    for k in annotating:
        t = sdata.tables[k]
        regions = [r for r in table_region(t)[0] if r in sdata.shapes]
        part = f"{k!r} ({t.n_obs} rows annotating shapes {_names(regions)}"
        pooled = t.uns.get("stpredict", {}).get("pool_to_spots")
        if isinstance(pooled, dict) and "source_table_key" in pooled:
            part += f", pooled from table {pooled['source_table_key']!r} by stp.pp.pool_to_spots"
        parts.append(part + ")")
    example = next((k for k in annotating if "pool_to_spots" in sdata.tables[k].uns.get("stpredict", {})), None)
    hint = f", e.g. table_key={example!r} for the pooled spots" if example else ""
    msg = (
        f"Several tables annotate the spots: {'; '.join(parts)}. Pass table_key=... to choose one, or spots_key=... "
        f"(the table annotating those shapes is then used){hint}."
    )
    return KeyError(msg)


def _names(keys: Any) -> str:
    keys = [str(k) for k in keys]
    return ", ".join(repr(k) for k in keys) if keys else "none"


def check_not_singular(a: np.ndarray, what: str, key: str, cs: str) -> None:
    """Refuse a transformation ``a`` (3x3 affine of ``what`` ``key`` to ``cs``) that maps onto a line or a point."""
    det = float(np.linalg.det(a[:2, :2]))
    if not np.isfinite(det) or abs(det) < 1e-12:
        msg = (
            f"The transformation of {what} {key!r} to {cs!r} is singular (it maps the {what} "
            "onto a line or a point): check it for a Scale of 0, or set the right one with "
            "spatialdata.transformations.set_transformation."
        )
        raise ValueError(msg)


def check_centers(centers: np.ndarray, obs_names: pd.Index, spots_key: str) -> None:
    """Refuse spots whose centre (level-0 pixels) is NaN or infinite."""
    bad = ~np.isfinite(centers).all(axis=1)
    if bad.any():
        msg = (
            f"{int(bad.sum())} of {len(centers)} spots of {spots_key!r} have no finite centre (NaN or infinite "
            f"coordinates), e.g. {obs_names[np.flatnonzero(bad)[:3]].tolist()}: drop them or fix their coordinates."
        )
        raise ValueError(msg)


def check_sizes(diam: np.ndarray, kind: str, obs_names: pd.Index, spots_key: str) -> None:
    """Refuse spots whose diameter (or side, for polygons) is zero, negative or not finite."""
    bad = ~(np.isfinite(diam) & (diam > 0))
    if bad.any():
        what, half = ("radius", 2.0) if kind == "circle" else ("size", 1.0)
        values = [float(v) / half for v in diam[bad][:3]]
        msg = (
            f"{int(bad.sum())} of {len(diam)} spots of {spots_key!r} have a {what} that is zero, negative or not "
            f"finite ({values}; spots {obs_names[np.flatnonzero(bad)[:3]].tolist()}): a spot must have a positive "
            "size. Set the spots' radius column to their radius, in the shapes' own coordinates."
        )
        raise ValueError(msg)


def check_on_image(
    centers: np.ndarray,
    diameter: float,
    shape_yx: tuple[int, int],
    obs_names: pd.Index,
    *,
    spots_key: str,
    image_key: str,
    cs: str,
) -> None:
    """Refuse spots larger than the image (level 0, ``shape_yx``) or centred outside it: mismatched units or frames."""
    h, w = shape_yx
    if diameter > max(h, w):
        msg = (
            f"Spots {spots_key!r} are {diameter:.4g} px across, larger than image {image_key!r} ({w}×{h} px): "
            "their radius is not in the shapes' coordinate units (a diameter or µm given for pixels?), or the "
            "transformations of spots and image disagree. Set the radius column to the spots' radius."
        )
        raise ValueError(msg)
    outside = (centers[:, 0] < 0) | (centers[:, 0] > w) | (centers[:, 1] < 0) | (centers[:, 1] > h)
    if outside.any():
        msg = (
            f"{int(outside.sum())} of {len(centers)} spots of {spots_key!r} lie outside image {image_key!r} "
            f"({w}×{h} px), e.g. {obs_names[np.flatnonzero(outside)[:3]].tolist()}: the spots and the image do "
            f"not match through coordinate system {cs!r}. Check their transformations or pass the right image_key."
        )
        raise ValueError(msg)
