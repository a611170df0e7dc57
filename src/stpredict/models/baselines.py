"""Simple baselines, registered as predictors so they run through the same code as every method."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy.spatial import cKDTree

from ._base import Predictor, register_predictor

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._base import Regions, SlideData

__all__ = ["MeanBaseline", "NearestBaseline", "NeighborsBaseline"]


@register_predictor("mean")
class MeanBaseline(Predictor):
    """Training mean of each gene (and its standard deviation) everywhere: the floor every method must beat."""

    consumes = "embeddings"
    default_backbone = None
    provides_std = True

    def fit(self, slides: Sequence[SlideData], *, genes: Sequence[str], max_epochs=None, seed=None) -> MeanBaseline:
        """Record the pooled training mean and std."""
        Y = np.concatenate([np.asarray(s.y, dtype=np.float64) for s in slides])
        self.genes = list(genes)
        self._mean, self._std = Y.mean(0), Y.std(0)
        return self

    def predict(self, slide: SlideData, regions: Regions) -> tuple[np.ndarray, np.ndarray]:
        """The training mean, repeated."""
        self._check_fitted()
        m = np.broadcast_to(self._mean, (regions.n, len(self._mean))).astype(np.float32)
        s = np.broadcast_to(self._std, (regions.n, len(self._std))).astype(np.float32)
        return m.copy(), s.copy()

    def get_state(self) -> dict[str, np.ndarray]:
        """Mean and std."""
        return {"mean": self._mean, "std": self._std}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore mean and std."""
        self._mean, self._std = np.asarray(state["mean"]), np.asarray(state["std"])


class _SlideNeighbours(Predictor):
    consumes = "embeddings"
    default_backbone = None
    provides_std = True
    uses_slide_targets = True

    def fit(self, slides: Sequence[SlideData], *, genes: Sequence[str], max_epochs=None, seed=None):
        """Nothing to learn: prediction reads the measured spots of the predicted slide."""
        self.genes = list(genes)
        return self

    def _context(self, slide: SlideData) -> tuple[np.ndarray, np.ndarray]:
        self._check_fitted()
        if slide.y is None or slide.n == 0:
            msg = (
                f"{self.name} interpolates measured spots of the slide it predicts, and slide {slide.name!r} has "
                "none: it is a within-slide baseline (hidden spots, pooled pseudo-spots), not a cross-slide one."
            )
            raise ValueError(msg)
        return slide.centers_um, np.asarray(slide.y, dtype=np.float64)


@register_predictor("neighbors")
class NeighborsBaseline(_SlideNeighbours):
    """Inverse-distance interpolation of the k nearest measured spots of the same slide.

    Weights are ``1 / (1 + d)`` with ``d`` in µm (k = 8 by default); the std is the weighted spread of the
    neighbours' values.

    Parameters
    ----------
    k
        Number of measured neighbours.
    """

    def __init__(self, *, k: int = 8) -> None:
        super().__init__(k=int(k))

    def predict(self, slide: SlideData, regions: Regions) -> tuple[np.ndarray, np.ndarray]:
        """Interpolate the slide's measured spots at the regions."""
        xy, Y = self._context(slide)
        k = min(self.config["k"], len(xy))
        d, idx = cKDTree(xy).query(regions.centers_um(slide), k=k)
        d, idx = d.reshape(regions.n, k), idx.reshape(regions.n, k)
        w = 1.0 / (1.0 + d)
        w /= w.sum(1, keepdims=True)
        vals = Y[idx]  # (m, k, G)
        mean = np.einsum("mk,mkg->mg", w, vals)
        var = np.einsum("mk,mkg->mg", w, (vals - mean[:, None]) ** 2)
        return mean.astype(np.float32), np.sqrt(var).astype(np.float32)


@register_predictor("copy")
class NearestBaseline(_SlideNeighbours):
    """Copy of the nearest measured spot of the same slide (for the pooling task: the enclosing pseudo-spot)."""

    provides_std = False

    def predict(self, slide: SlideData, regions: Regions) -> tuple[np.ndarray, None]:
        """The value of the nearest measured spot."""
        xy, Y = self._context(slide)
        _, idx = cKDTree(xy).query(regions.centers_um(slide), k=1)
        return Y[idx].astype(np.float32), None
