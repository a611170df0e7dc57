"""Opening a post-Xenium H&E without decoding it: lazy (OME-)TIFF levels, PIL images and arrays as ``(c, y, x)``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ._tiff import TIFF_SUFFIXES, tiff_cyx

__all__ = ["open_he"]


def open_he(he_image: Any, chunks: int) -> tuple[Any, tuple[int, int, int], np.dtype]:
    """``(opener, (c, h, w), dtype)`` of the H&E without decoding it (opener returns a (c, y, x) array)."""
    import dask.array as da

    from ._build import _to_cyx, load_image

    if isinstance(he_image, str | Path):
        path = Path(he_image)
        if not path.is_file():
            msg = f"H&E image {str(path)!r} does not exist."
            raise FileNotFoundError(msg)
        if path.suffix.lower() in TIFF_SUFFIXES:
            arr = tiff_cyx(path, 0, chunks=chunks)
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
