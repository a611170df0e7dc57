"""Datasets: the embedded mouse olfactory bulb demo and a synthetic slide with known truth."""

from __future__ import annotations

from ._mob import mob
from ._synthetic import SyntheticParams, SyntheticTissue, synthetic, synthetic_truth
from ._synthetic_cells import synthetic_cells, synthetic_cells_truth

__all__ = [
    "SyntheticParams",
    "SyntheticTissue",
    "mob",
    "synthetic",
    "synthetic_cells",
    "synthetic_cells_truth",
    "synthetic_truth",
]
