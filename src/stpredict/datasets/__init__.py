"""Datasets: the embedded mouse olfactory bulb demo and a synthetic slide with known truth."""

from __future__ import annotations

from ._mob import mob
from ._synthetic import SyntheticParams, SyntheticTissue, synthetic, synthetic_truth

__all__ = ["SyntheticParams", "SyntheticTissue", "mob", "synthetic", "synthetic_truth"]
