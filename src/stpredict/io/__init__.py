"""Readers returning :class:`~spatialdata.SpatialData`, small fixes of one, and writing results back."""

from __future__ import annotations

from ._arrays import from_arrays
from ._hest import read_hest
from ._hest_write import to_hest
from ._st import read_st
from ._txn import StoreLockedError, recover
from ._utils import set_microns_per_pixel, to_rgb
from ._visium import read_visium
from ._visium_hd import read_visium_hd
from ._write import write_back
from ._xenium import read_xenium
from ._xenium_alignment import read_alignment

__all__ = [
    "StoreLockedError",
    "from_arrays",
    "read_alignment",
    "read_hest",
    "read_st",
    "read_visium",
    "read_visium_hd",
    "read_xenium",
    "recover",
    "set_microns_per_pixel",
    "to_hest",
    "to_rgb",
    "write_back",
]
