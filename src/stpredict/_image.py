"""Image-element helpers: pyramid levels, multiscale construction and RGB checks.

Pure data (numpy/dask/xarray); nothing here imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np

if TYPE_CHECKING:
    from collections.abc import Mapping

    from xarray import DataArray, DataTree

__all__ = [
    "ImageLevel",
    "check_pyramid",
    "check_rgb",
    "image_levels",
    "level0_shape",
    "sample_pixels",
    "to_multiscale",
]


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
        w, h = int(arr.sizes["x"]), int(arr.sizes["y"])
        # an empty level gets an infinite factor: check_pyramid refuses it with a message naming the level
        fx, fy = (w0 / w if w else math.inf), (h0 / h if h else math.inf)
        out.append(ImageLevel(data, factor_x=fx, factor_y=fy, name=name))
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
            floating = np.issubdtype(level.dtype, np.floating)
            acc = level[:, 0 : 2 * hh : 2, 0 : 2 * ww : 2].astype(np.float64 if floating else np.uint32)
            acc += level[:, 1 : 2 * hh : 2, 0 : 2 * ww : 2]
            acc += level[:, 0 : 2 * hh : 2, 1 : 2 * ww : 2]
            acc += level[:, 1 : 2 * hh : 2, 1 : 2 * ww : 2]
            level = (acc / 4 if floating else (acc + 2) // 4).astype(image.dtype)
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


def check_pyramid(element: DataArray | DataTree, key: str) -> list[ImageLevel]:
    """The levels of an image element, after checking that they form a pyramid; reads no pixel.

    Every level must have level 0's channels and dtype, be no larger than the level before it, and be
    downsampled alike along x and y (within a pixel of rounding).
    """
    levels = image_levels(element)
    first = levels[0]
    fix = (
        f"Rebuild the pyramid of image {key!r} from its level 0 (e.g. spatialdata.models.Image2DModel.parse(level0, "
        "scale_factors=[2, 2, ...])), or keep only level 0."
    )
    for prev, lvl in zip(levels, levels[1:], strict=False):
        c, h, w = (int(v) for v in lvl.array.shape)
        if c != int(first.array.shape[0]) or lvl.array.dtype != first.array.dtype:
            msg = (
                f"The levels of image {key!r} disagree: {first.name} has {int(first.array.shape[0])} channels of "
                f"{first.array.dtype}, {lvl.name} has {c} of {lvl.array.dtype}. {fix}"
            )
            raise ValueError(msg)
        ph, pw = prev.shape_yx
        if h > ph or w > pw:
            msg = (
                f"Level {lvl.name} of image {key!r} ({w}×{h} px) is larger than the finer level {prev.name} "
                f"({pw}×{ph} px): pyramid levels must go from fine to coarse. {fix}"
            )
            raise ValueError(msg)
        if h == 0 or w == 0 or abs(lvl.factor_x / lvl.factor_y - 1) > 1 / h + 1 / w + 0.01:
            msg = (
                f"Level {lvl.name} of image {key!r} ({w}×{h} px) is not a downsampling of level 0 "
                f"({first.shape_yx[1]}×{first.shape_yx[0]} px): its x and y are scaled by {lvl.factor_x:.3g} and "
                f"{lvl.factor_y:.3g}. {fix}"
            )
            raise ValueError(msg)
    return levels


#: Side of the windows, and their number along each axis, that :func:`check_rgb` samples before reading a level.
_SAMPLE_WINDOW, _SAMPLE_GRID = 8, 4


def _pixel_level(levels: list[ImageLevel]) -> da.Array:
    """A level whose pixels are cheap to sample.

    The coarsest, unless it is computed from level 0 (a pyramid built lazily: their graphs share layers),
    in which case level 0 itself, where a small window costs a chunk or so.
    """
    coarse = levels[-1].array
    if len(levels) > 1 and set(levels[0].array.dask.layers) & set(coarse.dask.layers):
        return levels[0].array
    return coarse


def _sample(arr: da.Array) -> np.ndarray:
    """``(c, n)`` pixels of a few small windows spread over ``arr``: each touches at most four chunks."""
    _, h, w = arr.shape
    ys = np.unique(np.linspace(0, max(h - _SAMPLE_WINDOW, 0), _SAMPLE_GRID).astype(int))
    xs = np.unique(np.linspace(0, max(w - _SAMPLE_WINDOW, 0), _SAMPLE_GRID).astype(int))
    windows = [arr[:, y : y + _SAMPLE_WINDOW, x : x + _SAMPLE_WINDOW] for y in ys for x in xs]
    (values,) = da.compute(windows)
    return np.concatenate([np.asarray(v).reshape(arr.shape[0], -1) for v in values], axis=1)


def sample_pixels(levels: list[ImageLevel]) -> np.ndarray:
    """``(c, n)`` pixels of :data:`_SAMPLE_GRID`² windows of :data:`_SAMPLE_WINDOW` px on a level cheap to read.

    What :func:`check_rgb` and ``read_visium``'s blank-image drop look at before reading a level whole.
    """
    return _sample(_pixel_level(levels))


def check_rgb(element: DataArray | DataTree, key: str) -> None:
    """Raise unless ``element`` is 8-bit RGB, or RGBA whose alpha channel is fully opaque.

    Channels and dtype come from the metadata of every level (:func:`check_pyramid`). The pixels read are a
    few small windows; only when these are all one colour (or all opaque, for RGBA) is the coarsest level read
    whole, to confirm. A pyramid built lazily from level 0 is sampled on level 0, so that the check does not
    compute it.
    """
    levels = check_pyramid(element, key)
    arr = levels[-1].array
    nc = int(arr.shape[0])
    fix = f"Convert it with `stp.io.to_rgb(sdata, {key!r})`, which writes an 8-bit RGB copy."
    if arr.dtype != np.uint8:
        msg = f"Image {key!r} has dtype {arr.dtype}; stpredict reads 8-bit RGB H&E images. {fix}"
        raise ValueError(msg)
    if nc not in (3, 4):
        kind = "greyscale" if nc == 1 else f"{nc}-channel"
        msg = f"Image {key!r} is {kind}; stpredict reads RGB H&E images (3 channels). {fix}"
        raise ValueError(msg)
    sample = sample_pixels(levels)
    if nc == 4:
        sampled = sample[3].min() < 255
        alpha = sample[3] if sampled else np.asarray(arr[3].compute()).ravel()
        if alpha.min() < 255:
            frac = float((alpha < 255).mean())
            msg = (
                f"Image {key!r} is RGBA with transparency ({frac:.1%} of {'sampled ' if sampled else ''}"
                "pixels are not opaque). stpredict reads RGB; an opaque alpha channel is dropped, a transparent one "
                f"is not guessed. {fix}"
            )
            raise ValueError(msg)
    rgb = sample[:3]
    if rgb.min() == rgb.max():  # one colour wherever sampled: read the coarsest level to be sure
        rgb = np.asarray(arr[:3].compute())
    if rgb.min() == rgb.max():
        msg = (
            f"Image {key!r} is blank (every pixel is {int(rgb.min())}): nothing can be predicted from it. "
            "Pass another image_key, or load the slide's full-resolution H&E."
        )
        raise ValueError(msg)
