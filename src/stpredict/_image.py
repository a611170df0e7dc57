"""Image-element helpers: pyramid levels, multiscale construction and RGB checks.

Pure data (numpy/dask/xarray); nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np

if TYPE_CHECKING:
    from collections.abc import Mapping

    from xarray import DataArray, DataTree

__all__ = ["ImageLevel", "check_rgb", "image_levels", "level0_shape", "to_multiscale"]


@dataclass(frozen=True)
class ImageLevel:
    """One pyramid level: a lazy ``(c, y, x)`` array and its downsampling factors relative to level 0."""

    array: da.Array
    factor_x: float
    factor_y: float
    name: str

    @property
    def shape_yx(self) -> tuple[int, int]:
        """Height and width in pixels."""
        return int(self.array.shape[1]), int(self.array.shape[2])


def _as_dataarray_levels(element: DataArray | DataTree) -> list[tuple[str, DataArray]]:
    if _is_datatree(element):
        out = []
        for name in sorted(element.children, key=lambda n: int(n[5:]) if n[5:].isdigit() else 0):
            node = element[name]
            out.append((name, next(iter(node.ds.data_vars.values()))))
        return out
    return [("scale0", element)]


def _is_datatree(element: Any) -> bool:
    return type(element).__name__ == "DataTree"


def image_levels(element: DataArray | DataTree) -> list[ImageLevel]:
    """Return every pyramid level of an image element, finest first."""
    levels = _as_dataarray_levels(element)
    _, first = levels[0]
    h0, w0 = int(first.sizes["y"]), int(first.sizes["x"])
    out = []
    for name, arr in levels:
        data = arr.transpose("c", "y", "x").data
        if not isinstance(data, da.Array):
            data = da.from_array(np.asarray(data), chunks=(data.shape[0], 1024, 1024))
        out.append(ImageLevel(data, factor_x=w0 / int(arr.sizes["x"]), factor_y=h0 / int(arr.sizes["y"]), name=name))
    return out


def level0_shape(element: DataArray | DataTree) -> tuple[int, int, int]:
    """``(c, y, x)`` shape of level 0."""
    lvl = image_levels(element)[0]
    return tuple(int(s) for s in lvl.array.shape)  # type: ignore[return-value]


def to_multiscale(
    image: np.ndarray | da.Array,
    *,
    transformations: Mapping[str, Any],
    chunks: int = 1024,
    min_size: int = 256,
    c_coords: list[str] | None = None,
) -> DataTree:
    """Build a chunked multiscale ``Image2DModel`` from a ``(c, y, x)`` uint8 array.

    Levels halve the resolution until the shorter side drops below ``2 * min_size``.
    """
    from spatialdata.models import Image2DModel

    c, h, w = image.shape
    factors: list[int] = []
    size = min(h, w)
    while size // 2 >= min_size:
        factors.append(2)
        size //= 2
    in_memory = not isinstance(image, da.Array)
    data = da.from_array(image, chunks=(c, chunks, chunks)) if in_memory else image
    tree = Image2DModel.parse(
        data,
        dims=("c", "y", "x"),
        c_coords=c_coords or (["r", "g", "b"] if c == 3 else None),
        transformations=dict(transformations),
        scale_factors=factors or None,
        chunks=(c, chunks, chunks),
    )
    if in_memory and factors:
        # an image decoded into memory: build the pyramid once with numpy (2x2 box means) so that coarse
        # levels are read without recomputing them from level 0
        level = np.asarray(image)
        arrays = {"scale0": None}
        for i in range(1, len(factors) + 1):
            hh, ww = level.shape[1] // 2, level.shape[2] // 2
            acc = level[:, 0 : 2 * hh : 2, 0 : 2 * ww : 2].astype(np.uint32)
            acc += level[:, 1 : 2 * hh : 2, 0 : 2 * ww : 2]
            acc += level[:, 0 : 2 * hh : 2, 1 : 2 * ww : 2]
            acc += level[:, 1 : 2 * hh : 2, 1 : 2 * ww : 2]
            level = ((acc + 2) // 4).astype(image.dtype)
            arrays[f"scale{i}"] = level
        replace_levels(tree, {k: v for k, v in arrays.items() if v is not None}, chunks=chunks)
    return tree


def replace_levels(tree: DataTree, arrays: Mapping[str, Any], *, chunks: int) -> None:
    """Swap the data of pyramid levels (same shapes) in place, keeping coordinates and transformations."""
    import xarray as xr

    for name, arr in arrays.items():
        node = tree[name]
        var = next(iter(node.ds.data_vars))
        old = node.ds[var]
        if tuple(old.shape) != tuple(arr.shape):
            msg = f"Level {name} has shape {old.shape}, replacement {arr.shape}."
            raise ValueError(msg)
        data = arr if isinstance(arr, da.Array) else da.from_array(arr, chunks=(arr.shape[0], chunks, chunks))
        tree[name] = xr.Dataset({var: old.copy(data=data)})


def check_rgb(element: DataArray | DataTree, key: str) -> None:
    """Raise unless ``element`` is 8-bit RGB, or RGBA whose alpha channel is fully opaque.

    The check reads only the coarsest pyramid level.
    """
    levels = image_levels(element)
    arr = levels[-1].array
    nc = int(arr.shape[0])
    fix = f"Convert it with `stp.io.to_rgb(sdata, {key!r})`, which writes an 8-bit RGB copy."
    if arr.dtype != np.uint8:
        msg = f"Image {key!r} has dtype {arr.dtype}; stpredict reads 8-bit RGB H&E images. {fix}"
        raise ValueError(msg)
    if nc == 4:
        alpha = np.asarray(arr[3].compute())
        if alpha.min() < 255:
            frac = float((alpha < 255).mean())
            msg = (
                f"Image {key!r} is RGBA with transparency ({frac:.1%} of pixels are not opaque). "
                f"stpredict reads RGB; an opaque alpha channel is dropped, a transparent one is not guessed. {fix}"
            )
            raise ValueError(msg)
    elif nc != 3:
        kind = "greyscale" if nc == 1 else f"{nc}-channel"
        msg = f"Image {key!r} is {kind}; stpredict reads RGB H&E images (3 channels). {fix}"
        raise ValueError(msg)
    rgb = np.asarray(arr[:3].compute())
    if rgb.min() == rgb.max():
        msg = (
            f"Image {key!r} is blank (every pixel is {int(rgb.min())}): nothing can be predicted from it. "
            "Pass another image_key, or load the slide's full-resolution H&E."
        )
        raise ValueError(msg)
