"""Square tiles of a slide read by their centre in µm: what dense feature maps are computed from."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["tile_reader"]


def tile_reader(levels: Sequence, mpp_xy: Sequence[float]) -> Callable[[np.ndarray, float, int], np.ndarray]:
    """A ``read_tile(center_um_xy, size_um, out_px) -> (1, 3, out_px, out_px)`` uint8 reader of an image pyramid.

    Tiles are read like patches (:class:`~stpredict.pp.PatchExtractor`: the pyramid level nearest the requested
    resolution, white padding outside the image), so dense maps see the same pixels as windows. A resampled tile
    covers exactly the square asked for (``subpixel``): its pixels lie on the slide-wide lattice of the analysis
    resolution, not on one shifted by up to half a level pixel and stretched by the rounding of its side. All
    tiles of one size share one bounded chunk cache (:attr:`stpredict.settings.chunk_cache_mb`): the chunks under
    a tile's context margin are decoded once, not again for each neighbouring tile.
    """
    from ._patches import PatchExtractor

    mpp = np.asarray(mpp_xy, dtype=float)
    readers: dict[tuple[float, int], PatchExtractor] = {}

    def read_tile(center_um: np.ndarray, size_um: float, out_px: int) -> np.ndarray:
        centre_px = (np.asarray(center_um, dtype=float) / mpp)[None]
        key = (float(size_um), int(out_px))
        if key not in readers:
            readers[key] = PatchExtractor(
                levels, centre_px, tuple(mpp), size_um=size_um, patch_px=out_px, subpixel=True
            )
        return readers[key].with_centers(centre_px).read([0])

    return read_tile
