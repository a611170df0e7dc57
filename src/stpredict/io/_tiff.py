"""Lazy (pyramidal, OME-)TIFF levels: the one TIFF reader of every stpredict reader (HEST, Xenium H&E, files).

Each block of the dask array opens the file, reads its region and closes it. No handle lives with the array:
dropping the array leaves nothing open (no ResourceWarning), and a worker forked from a process holding the
array (a DataLoader's) never shares an open file, and its offset, with that process. The cost is one open
(the file's header and the level's IFDs) per block of ``chunks``² pixels, small beside decoding its tiles.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

__all__ = [
    "TIFF_SUFFIXES",
    "lazy_tiff_image",
    "tiff_cyx",
    "tiff_level",
    "tiff_levels_meta",
    "use_tiff_pyramid",
]

#: File suffixes read as TIFF (lazily) rather than decoded whole with PIL.
TIFF_SUFFIXES = frozenset({".tif", ".tiff", ".btf", ".svs"})

#: Axes of a TIFF level that are spatial; every other axis is a channel-like axis (C, S, Z, ...).
_SPATIAL = "YX"


def tiff_levels_meta(path: str | Path) -> list[tuple[tuple[int, ...], np.dtype, str]]:
    """``(shape, dtype, axes)`` of every level of the TIFF's first series (tifffile's axis letters); reads no pixel."""
    import tifffile

    with tifffile.TiffFile(path) as tf:
        return [(tuple(int(n) for n in lv.shape), np.dtype(lv.dtype), str(lv.axes)) for lv in tf.series[0].levels]


def _axis_chunks(n: int, chunks: int) -> tuple[int, ...]:
    return tuple(min(chunks, n - s) for s in range(0, n, chunks)) or (0,)


def _read_block(path: str, level: int, block_info=None) -> np.ndarray:
    """The region of one block, read from a file opened and closed here (a module function: picklable)."""
    import tifffile
    import zarr

    index = tuple(slice(*loc) for loc in block_info[None]["array-location"])
    with tifffile.TiffFile(path) as tf:
        store = tf.series[0].aszarr(level=level)
        try:
            return np.asarray(zarr.open(store, mode="r")[index])
        finally:
            store.close()


def tiff_level(path: str | Path, level: int = 0, *, chunks: int = 1024) -> da.Array:
    """One level of a TIFF's first series as a lazy dask array, in the file's axis order.

    Blocks are ``chunks`` pixels along Y and X and whole along the other axes; each opens and closes the file
    (see the module docstring). The array's name depends on the file's size and modification time, so a file
    rewritten at the same path is not mistaken for the old one.
    """
    return _level(Path(path), level, chunks)[0]


def tiff_cyx(path: str | Path, level: int = 0, *, chunks: int = 1024) -> da.Array:
    """One level of a TIFF as a lazy ``(c, y, x)`` array, by the file's axis letters (not guessed from sizes).

    Axes of size 1 other than Y and X are dropped; the one other axis left is the channel axis (RGB samples,
    OME channels). Raises a :class:`ValueError` for a TIFF that is not a 2-D, optionally multichannel, image.
    """
    path = Path(path)
    arr, axes = _level(path, level, chunks)
    shape = arr.shape
    keep = [i for i, (a, n) in enumerate(zip(axes, shape, strict=True)) if n > 1 or a in _SPATIAL]
    kept_axes = "".join(axes[i] for i in keep)
    if len(keep) not in (2, 3) or "Y" not in kept_axes or "X" not in kept_axes:
        msg = f"TIFF {str(path)!r} has axes {axes!r} of shape {shape}; expected a 2-D (optionally multichannel) image."
        raise ValueError(msg)
    if len(keep) < len(shape):
        arr = arr[tuple(slice(None) if i in keep else 0 for i in range(len(shape)))]
    if len(keep) == 2:
        return arr[None] if kept_axes == "YX" else arr.T[None]
    order = [j for j, a in enumerate(kept_axes) if a not in _SPATIAL] + [kept_axes.index("Y"), kept_axes.index("X")]
    return arr.transpose(order)


def _level(path: Path, level: int, chunks: int) -> tuple[da.Array, str]:
    from dask.base import tokenize

    metas = tiff_levels_meta(path)
    if not 0 <= level < len(metas):
        msg = f"TIFF {str(path)!r} has {len(metas)} pyramid level(s); there is no level {level}."
        raise IndexError(msg)
    shape, dtype, axes = metas[level]
    block_chunks = tuple(_axis_chunks(n, chunks) if a in _SPATIAL else (n,) for a, n in zip(axes, shape, strict=True))
    stat = path.stat()
    name = "tiff-" + tokenize(str(path.resolve()), level, block_chunks, stat.st_size, stat.st_mtime_ns)
    read = functools.partial(_read_block, str(path), level)
    arr = da.map_blocks(read, dtype=dtype, chunks=block_chunks, meta=np.empty((0,) * len(shape), dtype), name=name)
    return arr, axes


def use_tiff_pyramid(tree: Any, path: Path, *, chunks: int) -> list[str]:
    """Read the coarser levels of ``tree`` from the TIFF's own pyramid where one matches (the rest stay computed).

    A TIFF level matches a level of ``tree`` when its size is the same or one pixel larger (pyramids that round
    odd sizes up); the extra row or column is cropped. Returns the names of the levels replaced.
    """
    from .._image import image_levels, replace_levels

    levels = image_levels(tree)
    c = levels[0].array.shape[0]
    tiff = [tiff_cyx(path, i, chunks=chunks) for i in range(1, len(tiff_levels_meta(path)))]
    arrays = {}
    for lv in levels[1:]:
        h, w = lv.shape_yx
        for t in tiff:
            if t.shape[0] == c and t.dtype == lv.array.dtype and t.shape[1] in (h, h + 1) and t.shape[2] in (w, w + 1):
                arrays[lv.name] = t[:, :h, :w]
                break
    if arrays:
        replace_levels(tree, arrays, chunks=chunks)
    return list(arrays)


def lazy_tiff_image(element: Any, path: str | Path, *, chunks: int = 1024) -> Any:
    """``element`` (an image read from the TIFF ``path`` by another reader) with its pixels read by :func:`tiff_cyx`.

    spatialdata-io reads a Visium (HD) full-resolution TIFF with dask-image, one task for the whole frame: every
    computation that touches it, a single patch included, decodes the whole slide. The copy returned has the
    same levels (sizes, channel names, transformations), level 0 read lazily in blocks of ``chunks`` pixels and
    the coarser levels from the TIFF's own pyramid where it has them. ``element`` itself is returned when
    ``path`` is not a TIFF or does not hold that image (another size or dtype).
    """
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import get_transformation

    from .._image import image_levels

    path = Path(path)
    if path.suffix.lower() not in TIFF_SUFFIXES or not path.is_file():
        return element
    levels = image_levels(element)
    try:
        level0 = tiff_cyx(path, 0, chunks=chunks)
    except ValueError:  # not a 2-D image: leave it to the reader that read it
        return element
    if level0.shape != levels[0].array.shape or level0.dtype != levels[0].array.dtype:
        return element
    arr0 = next(iter(element["scale0"].ds.data_vars.values())) if hasattr(element, "children") else element
    factors = [round(prev.shape_yx[0] / lv.shape_yx[0]) for prev, lv in zip(levels, levels[1:], strict=False)]
    tree = Image2DModel.parse(
        level0,
        dims=("c", "y", "x"),
        c_coords=arr0.coords["c"].values.tolist(),
        transformations=dict(get_transformation(element, get_all=True)),
        scale_factors=factors or None,
        chunks=(level0.shape[0], chunks, chunks),
    )
    if factors:
        use_tiff_pyramid(tree, path, chunks=chunks)
    return tree
