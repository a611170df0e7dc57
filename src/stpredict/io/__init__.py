"""Readers returning :class:`~spatialdata.SpatialData`, and small fixes of one."""

from __future__ import annotations

from ._arrays import from_arrays
from ._st import read_st
from ._utils import set_microns_per_pixel, to_rgb
from ._visium import read_visium

__all__ = ["from_arrays", "read_st", "read_visium", "set_microns_per_pixel", "to_rgb"]
