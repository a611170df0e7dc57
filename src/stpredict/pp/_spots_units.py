"""Coordinate transformations of the spots and the image, and the physical size (µm) of the image's pixels."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from .._keys import MICRONS_CS
from .._logging import get_logger

__all__ = ["VISIUM_SPOT_UM", "micrometers_affine"]

logger = get_logger(__name__)

VISIUM_SPOT_UM = 55.0
_HD_BARCODE = re.compile(r"^s_\d{3}um_\d+_\d+")


def _affine(element: Any, cs: str) -> np.ndarray:
    from spatialdata.transformations import get_transformation

    t = get_transformation(element, to_coordinate_system=cs)
    return np.asarray(t.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")), dtype=float)


def _coordinate_systems(element: Any) -> list[str]:
    from spatialdata.transformations import get_transformation

    return list(get_transformation(element, get_all=True))


def micrometers_affine(shapes: Any, shapes_key: str) -> np.ndarray:
    """The 3×3 affine from the shapes' intrinsic coordinates to ``"micrometers"``; raise without one.

    Anisotropic units (a different µm per unit along x and y) are allowed, with a warning: circles drawn in
    these units take the geometric mean.
    """
    if MICRONS_CS not in _coordinate_systems(shapes):
        msg = (
            f"Shapes {shapes_key!r} have no transformation to the {MICRONS_CS!r} coordinate system (they have "
            f"{sorted(_coordinate_systems(shapes))}), so spot sizes in µm cannot be placed: record the pixel size "
            f"with `stp.io.set_microns_per_pixel(sdata, value, image_key=...)` or set_transformation(..., "
            f"{MICRONS_CS!r})."
        )
        raise ValueError(msg)
    m = _affine(shapes, MICRONS_CS)
    sx, sy = np.linalg.norm(m[:2, :2], axis=0)
    if not np.isclose(sx, sy, rtol=1e-3):
        logger.warning(
            "Shapes %r have anisotropic µm units (%.4g vs %.4g µm per unit along x and y): circle radii use their "
            "geometric mean.",
            shapes_key, sx, sy,
        )  # fmt: skip
    return m


def _is_visium(table: Any) -> bool:
    """Visium spots (55 µm circles); Visium HD bins (barcodes ``s_008um_…``) are not."""
    if table is not None and table.n_obs and _HD_BARCODE.match(str(table.obs_names[0])):
        return False
    spatial = table.uns.get("spatial", {}) if table is not None else {}
    for lib in spatial.values() if isinstance(spatial, dict) else []:
        meta = lib.get("metadata", {}) if isinstance(lib, dict) else {}
        version = meta.get("software_version", "")
        version = version.decode() if isinstance(version, bytes) else str(version)
        if "spaceranger" in version.lower():
            return True
    return table is not None and {"array_row", "array_col", "in_tissue"} <= set(table.obs.columns)


def _explicit_mpp(explicit: float) -> tuple[tuple[float, float], str]:
    value = float(explicit)
    if not np.isfinite(value) or value <= 0:
        msg = f"microns_per_pixel must be a positive number, got {explicit!r}."
        raise ValueError(msg)
    return (value, value), "explicit"


def _no_mpp_error(image_key: str) -> ValueError:
    msg = (
        f"No physical pixel size for image {image_key!r}: pass microns_per_pixel=..., or record it once with "
        f"`stp.io.set_microns_per_pixel(sdata, value, image_key={image_key!r})` (a Scale to the "
        f"{MICRONS_CS!r} coordinate system)."
    )
    return ValueError(msg)


def _resolve_mpp(
    sdata, image, shapes, table, cs, *, a_image, a_shapes, diameter_px, circles, explicit, image_key
) -> tuple[tuple[float, float], str]:
    if explicit is not None:
        return _explicit_mpp(explicit)
    image_cs = _coordinate_systems(image)
    m = None
    if MICRONS_CS in image_cs:
        m = _affine(image, MICRONS_CS)
    elif MICRONS_CS in _coordinate_systems(shapes):
        # image px -> shared cs -> spots' intrinsic -> µm
        m = _affine(shapes, MICRONS_CS) @ np.linalg.inv(a_shapes) @ a_image
    if m is not None:
        lin = m[:2, :2]
        mpp = (float(np.linalg.norm(lin[:, 0])), float(np.linalg.norm(lin[:, 1])))
        return mpp, "micrometers"
    if circles and _is_visium(table):
        value = VISIUM_SPOT_UM / diameter_px
        return (value, value), "visium"
    raise _no_mpp_error(image_key)
