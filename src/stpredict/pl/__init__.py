"""Plots: measured vs predicted maps, super-resolved grids and domains over the H&E, score distributions."""

from __future__ import annotations

from ._maps import grid_values, predicted_vs_measured
from ._scores import score_distributions

__all__ = ["grid_values", "predicted_vs_measured", "score_distributions"]
