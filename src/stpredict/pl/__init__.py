"""Plots: measured vs predicted maps, super-resolved grids and domains over the H&E."""

from __future__ import annotations

from ._maps import grid_values, predicted_vs_measured

__all__ = ["grid_values", "predicted_vs_measured"]
