"""Checks run before any heavy work: element keys, table linkage, counts."""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData
    from spatialdata import SpatialData

    from .models._base import SlideData

__all__ = [
    "MIN_SPOT_PX",
    "check_counts",
    "warn_coarse_image",
    "pick_key",
    "table_region",
]


def _listing(keys) -> str:
    keys = list(keys)
    return ", ".join(repr(k) for k in keys) if keys else "none"


def pick_key(sdata: SpatialData, kind: str, key: str | None, *, candidates: list[str] | None = None) -> str:
    """Return ``key`` if it names an element of ``kind``; if ``None``, the only candidate.

    Raises a :class:`KeyError` that lists what exists.
    """
    elements = getattr(sdata, kind)
    arg = {"images": "image_key", "shapes": "spots_key", "tables": "table_key"}.get(kind, f"{kind}_key")
    if key is not None:
        if key not in elements:
            close = difflib.get_close_matches(str(key), [str(k) for k in elements], n=1, cutoff=0.6)
            hint = f" Did you mean {arg}={close[0]!r}?" if close else ""
            msg = f"No {kind[:-1]} element {key!r} in the SpatialData; it has {kind}: {_listing(elements)}.{hint}"
            raise KeyError(msg)
        return key
    pool = list(elements) if candidates is None else candidates
    if len(pool) == 1:
        return pool[0]
    if not pool:
        msg = f"The SpatialData has no {kind} element to use; it has {kind}: {_listing(elements)}."
        raise KeyError(msg)
    msg = f"Several {kind} elements could be meant ({_listing(pool)}): pass {arg}=... to choose one."
    raise KeyError(msg)


def table_region(table: AnnData) -> tuple[list[str], str, str]:
    """``(regions, region_key, instance_key)`` of a spatialdata table."""
    attrs = table.uns.get("spatialdata_attrs", {})
    region = attrs.get("region")
    regions = [region] if isinstance(region, str) else list(region or [])
    return regions, attrs.get("region_key"), attrs.get("instance_key")


def check_counts(table: AnnData, table_key: str, *, layer: str | None = None) -> None:
    """Raise unless the table holds finite, non-negative counts."""
    X = table.layers[layer] if layer else table.X
    where = f"table {table_key!r}" + (f" layer {layer!r}" if layer else " .X")
    if X is None or table.n_obs == 0 or table.n_vars == 0:
        msg = f"The {where} is empty ({table.n_obs} observations × {table.n_vars} genes): nothing to fit on."
        raise ValueError(msg)
    data = X.data if sp.issparse(X) else np.asarray(X)
    if data.size and not np.all(np.isfinite(data)):
        n = int((~np.isfinite(data)).sum())
        msg = f"The {where} has {n} NaN or infinite values; counts must be finite. Fill or drop them first."
        raise ValueError(msg)
    if data.size and data.min() < 0:
        msg = (
            f"The {where} has negative values (min {data.min():g}); stpredict expects raw counts. "
            "If it holds normalised values, pass the raw counts (layer=...)."
        )
        raise ValueError(msg)


#: A spot narrower than this (pixels of the finest image level) shows colour, hardly any histology.
MIN_SPOT_PX = 12.0


def warn_coarse_image(slides: Sequence[SlideData]) -> None:
    """Warn about each slide whose spots are under :data:`MIN_SPOT_PX` pixels across (a low-resolution image)."""
    from ._logging import get_logger

    for s in slides:
        if s.spot_diameter_px < MIN_SPOT_PX:
            mpp = float(np.mean(s.microns_per_pixel_xy))
            get_logger(__name__).warning(
                "Slide %r: a spot is %.1f px across in its finest image (%.2f µm/px), under %g px: the image shows "
                "little beyond colour and predictions from it are near chance. Use the full-resolution H&E (the "
                "original scan, or Space Ranger's hires image), not a low-resolution one.",
                s.name, s.spot_diameter_px, mpp, MIN_SPOT_PX,
            )  # fmt: skip
