"""Image-side preparation: spot geometry, grids, tissue masks, patches and stains. No learning."""

from __future__ import annotations

from ._aggregate import RegionMasks, aggregate_map, region_masks
from ._condition import ConditionResult, condition_on_spots
from ._condition_grid import condition_grid
from ._denoise import DenoiseResult, denoise_measured
from ._folds import spatial_folds
from ._grid import GridPoints, Lattice, fit_lattice, grid, make_grid
from ._grid_lattice import GridLattice, grid_lattice
from ._patch_dataset import PatchDataset, patches
from ._patches import PatchExtractor, choose_level
from ._pool import pool_to_spots
from ._spots import SpotGeometry, spots
from ._stain import RUIFROK_HED, StainNormalizer, macenko_stains, od_to_rgb, rgb_to_od, stain_concentrations
from ._tissue import TissueMask, tissue_mask

__all__ = [
    "aggregate_map",
    "ConditionResult",
    "DenoiseResult",
    "GridLattice",
    "GridPoints",
    "Lattice",
    "PatchDataset",
    "RegionMasks",
    "PatchExtractor",
    "RUIFROK_HED",
    "SpotGeometry",
    "StainNormalizer",
    "TissueMask",
    "choose_level",
    "condition_grid",
    "condition_on_spots",
    "denoise_measured",
    "fit_lattice",
    "grid",
    "grid_lattice",
    "macenko_stains",
    "make_grid",
    "od_to_rgb",
    "patches",
    "pool_to_spots",
    "region_masks",
    "rgb_to_od",
    "spatial_folds",
    "spots",
    "stain_concentrations",
    "tissue_mask",
]
