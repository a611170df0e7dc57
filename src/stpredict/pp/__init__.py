"""Image-side preparation: spot geometry, grids, tissue masks, patches and stains. No learning."""

from __future__ import annotations

from ._grid import GridPoints, Lattice, fit_lattice, grid, make_grid
from ._patches import PatchDataset, PatchExtractor, choose_level, patches
from ._spots import SpotGeometry, spots
from ._tissue import TissueMask, tissue_mask

__all__ = [
    "GridPoints",
    "Lattice",
    "PatchDataset",
    "PatchExtractor",
    "SpotGeometry",
    "TissueMask",
    "choose_level",
    "fit_lattice",
    "grid",
    "make_grid",
    "patches",
    "spots",
    "tissue_mask",
]
