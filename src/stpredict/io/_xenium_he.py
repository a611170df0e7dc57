"""Opening a post-Xenium H&E without decoding it: lazy (OME-)TIFF levels, PIL images and arrays as ``(c, y, x)``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import dask.array as da

__all__ = ["open_he"]

_TIFF_SUFFIXES = {".tif", ".tiff", ".btf", ".svs"}


def _lazy_tiff(path: Path, chunks: int) -> da.Array:
    """Level 0 of a (pyramidal, OME-)TIFF as a lazy ``(c, y, x)`` array; each block opens and closes the file."""
    import dask.array as da
    import tifffile

    with tifffile.TiffFile(path) as tf:
        level = tf.series[0].levels[0]
        shape, dtype, axes = tuple(int(n) for n in level.shape), level.dtype, str(level.axes)
    keep = [i for i, (a, n) in enumerate(zip(axes, shape, strict=True)) if n > 1 or a in "YX"]
    kept_axes = "".join(axes[i] for i in keep)
    if len(keep) not in (2, 3) or "Y" not in kept_axes or "X" not in kept_axes:
        msg = f"TIFF {str(path)!r} has axes {axes!r} of shape {shape}; expected a 2-D (optionally multichannel) image."
        raise ValueError(msg)
    block_chunks = tuple(
        tuple(min(chunks, shape[i] - s) for s in range(0, shape[i], chunks)) if axes[i] in "YX" else (shape[i],)
        for i in keep
    )

    def read(block_info=None):
        loc = block_info[None]["array-location"]
        index = [0] * len(shape)
        for j, i in enumerate(keep):
            index[i] = slice(*loc[j])
        with tifffile.TiffFile(path) as tf:
            return _read_region(tf, index)

    arr = da.map_blocks(read, dtype=dtype, chunks=block_chunks, meta=np.empty((0,) * len(keep), dtype))
    if len(keep) == 2:
        return arr[None]
    c_axis = next(j for j, i in enumerate(keep) if axes[i] not in "YX")
    return da.moveaxis(arr, c_axis, 0) if c_axis else arr


def _read_region(tf: Any, index: list) -> np.ndarray:
    import zarr

    store = tf.series[0].aszarr(level=0)
    try:
        return np.asarray(zarr.open(store, mode="r")[tuple(index)])
    finally:
        store.close()


def open_he(he_image: Any, chunks: int) -> tuple[Any, tuple[int, int, int], np.dtype]:
    """``(opener, (c, h, w), dtype)`` of the H&E without decoding it (opener returns a (c, y, x) array)."""
    import dask.array as da

    from ._build import _to_cyx, load_image

    if isinstance(he_image, str | Path):
        path = Path(he_image)
        if not path.is_file():
            msg = f"H&E image {str(path)!r} does not exist."
            raise FileNotFoundError(msg)
        if path.suffix.lower() in _TIFF_SUFFIXES:
            arr = _lazy_tiff(path, chunks)
            return (lambda: arr), tuple(int(s) for s in arr.shape), arr.dtype
        from PIL import Image

        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            with Image.open(path) as im:
                w, h = im.size
                bands = len(im.getbands())
                dtype = np.dtype(np.uint8) if im.mode in {"RGB", "RGBA", "L", "LA", "P"} else np.dtype(np.uint16)
        finally:
            Image.MAX_IMAGE_PIXELS = old
        return (lambda: load_image(path)), (bands, h, w), dtype
    arr = he_image if isinstance(he_image, da.Array) else np.asarray(he_image)
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    arr = _to_cyx(arr, channel_axis=None)
    return (lambda: arr), tuple(int(s) for s in arr.shape), arr.dtype
