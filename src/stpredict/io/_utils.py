"""Small in-place fixes of a SpatialData: physical pixel size and RGB conversion."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np

from .._args import check_flag
from .._image import image_levels, to_multiscale
from .._keys import MICRONS_CS
from .._validate import pick_key

if TYPE_CHECKING:
    from spatialdata import SpatialData

__all__ = ["set_microns_per_pixel", "to_rgb"]


def set_microns_per_pixel(
    sdata: SpatialData,
    microns_per_pixel: float | tuple[float, float],
    *,
    image_key: str | None = None,
) -> None:
    """Record an image's physical pixel size as a ``Scale`` to the ``"micrometers"`` coordinate system.

    The image and every shapes element sharing a coordinate system with it get a transformation to
    ``"micrometers"``; later calls then need no ``microns_per_pixel=``.

    Parameters
    ----------
    sdata
        The SpatialData, modified in place.
    microns_per_pixel
        µm per level-0 pixel (a pair for x and y if they differ).
    image_key
        The image; ``None`` if there is only one.
    """
    from spatialdata.transformations import Affine, Scale, get_transformation, set_transformation

    image_key = pick_key(sdata, "images", image_key)
    mpp = np.broadcast_to(np.asarray(microns_per_pixel, dtype=float), (2,))
    if not np.all(np.isfinite(mpp) & (mpp > 0)):
        msg = f"microns_per_pixel must be positive, got {microns_per_pixel!r}."
        raise ValueError(msg)
    image = sdata.images[image_key]
    image_ts = dict(get_transformation(image, get_all=True))
    updates: list[tuple[Any, Any]] = [(image, Scale([float(mpp[0]), float(mpp[1])], axes=("x", "y")))]
    for shapes in sdata.shapes.values():
        shapes_ts = dict(get_transformation(shapes, get_all=True))
        shared = sorted(set(shapes_ts) & set(image_ts) - {MICRONS_CS})
        if not shared:
            continue
        axes = {"input_axes": ("x", "y"), "output_axes": ("x", "y")}
        a_img = np.asarray(image_ts[shared[0]].to_affine_matrix(**axes))
        a_shp = np.asarray(shapes_ts[shared[0]].to_affine_matrix(**axes))
        m = np.diag([mpp[0], mpp[1], 1.0]) @ np.linalg.inv(a_img) @ a_shp
        updates.append((shapes, Affine(m, input_axes=("x", "y"), output_axes=("x", "y"))))
    for element, t in updates:
        set_transformation(element, t, to_coordinate_system=MICRONS_CS)


def to_rgb(
    sdata: SpatialData,
    image_key: str,
    *,
    key_added: str | None = None,
    background: int = 255,
    inplace: bool = True,
) -> Any:
    """Convert an image to the 8-bit RGB that stpredict reads.

    Greyscale is repeated over three channels; RGBA is composited over a ``background`` grey level;
    16-bit and float images are rescaled by their maximum (float in ``[0, 1]`` is taken as is).

    Parameters
    ----------
    sdata
        The SpatialData.
    image_key
        The image to convert.
    key_added
        Name of the new image; default ``f"{image_key}_rgb"``.
    background
        Grey level (0-255) under transparent pixels.
    inplace
        Add the image to ``sdata``; otherwise return it.

    Returns
    -------
    ``None``, or the converted image element when ``inplace=False``.
    """
    from spatialdata.transformations import get_transformation

    check_flag("inplace", inplace)
    image_key = pick_key(sdata, "images", image_key)
    element = sdata.images[image_key]
    arr = image_levels(element)[0].array
    x = arr.astype(np.float32)
    if arr.dtype == np.uint8:
        scale = 1.0
    elif np.issubdtype(arr.dtype, np.floating):
        # the maximum needs every pixel of level 0: count the non-finite ones in the same pass
        mx, bad = da.compute(arr.max(), (~da.isfinite(arr)).sum())
        if bad:
            msg = (
                f"Image {image_key!r} has {int(bad)} NaN or infinite pixels (of {arr.size} values in level 0): "
                "they have no colour to convert. Fill them first (e.g. with the background: numpy.nan_to_num or "
                "dask.array.nan_to_num with nan=1.0 for a white background in [0, 1]) and parse the image again."
            )
            raise ValueError(msg)
        mx = float(mx)
        scale = 255.0 if mx <= 1.0 else 255.0 / mx
    else:
        scale = 255.0 / max(float(arr.max().compute()), 1.0)
    x = x * scale
    nc = int(arr.shape[0])
    if nc == 1:
        rgb = da.concatenate([x] * 3, axis=0)
    elif nc == 2:  # grey + alpha
        a = x[1:2] / 255.0
        rgb = da.concatenate([x[:1] * a + background * (1 - a)] * 3, axis=0)
    elif nc == 4:
        a = x[3:4] / 255.0
        rgb = x[:3] * a + background * (1 - a)
    elif nc == 3:
        rgb = x
    else:
        msg = f"Image {image_key!r} has {nc} channels; cannot tell which are R, G and B."
        raise ValueError(msg)
    rgb = da.clip(da.round(rgb), 0, 255).astype(np.uint8)
    new = to_multiscale(rgb, transformations=dict(get_transformation(element, get_all=True)))
    if not inplace:
        return new
    sdata.images[key_added or f"{image_key}_rgb"] = new
    return None
