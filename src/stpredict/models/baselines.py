"""Simple baselines, registered as predictors so they run through the same code as every method."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np
from scipy.spatial import cKDTree

from ._base import Predictor, register_predictor

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._base import Regions, SlideData

__all__ = ["MeanBaseline", "NearestBaseline", "NeighborsBaseline", "RidgeNeighborsBaseline"]


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


def _idw(xy: np.ndarray, Y: np.ndarray, query: np.ndarray, k: int, *, exclude_self: bool = False):
    """Inverse-distance (``1 / (1 + d)``) mean and spread of the ``k`` nearest of ``xy`` at ``query``.

    With ``exclude_self`` the query points are ``xy`` themselves and each one's own value is left out
    (its nearest hit, at distance 0), so that training features look like those of unseen spots.
    """
    extra = int(exclude_self)
    k = min(k, len(xy) - extra)
    if k < 1:
        msg = "neighbour interpolation needs at least 2 measured spots on the slide."
        raise ValueError(msg)
    d, idx = cKDTree(xy).query(query, k=k + extra)
    d, idx = d.reshape(len(query), k + extra)[:, extra:], idx.reshape(len(query), k + extra)[:, extra:]
    w = 1.0 / (1.0 + d)
    w /= w.sum(1, keepdims=True)
    vals = Y[idx]  # (m, k, G)
    mean = np.einsum("mk,mkg->mg", w, vals)
    var = np.einsum("mk,mkg->mg", w, (vals - mean[:, None]) ** 2)
    return mean, var


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
        mean, var = _idw(xy, Y, regions.centers_um(slide), self.config["k"])
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


@register_predictor("ridge_neighbors")
class RidgeNeighborsBaseline(_SlideNeighbours):
    """Ridge on image embeddings plus the neighbour interpolation of every gene: image and context together.

    The features of a spot are its backbone embedding concatenated with the inverse-distance interpolation
    (``k`` nearest measured spots of the same slide, weights ``1 / (1 + d)``, d in µm) of all panel genes;
    a :class:`~stpredict.models.RidgePredictor` maps them to expression. While fitting, each training spot's
    neighbour features leave out its own value, so they look like those of an unmeasured spot. This is the
    "image features plus neighbour values" reference of the hidden-spot task; like ``neighbors`` it reads
    the measured spots of the slide it predicts, so it is a within-slide baseline only.

    Parameters
    ----------
    k
        Number of measured neighbours.
    alphas
        Candidate ridge penalties (see :class:`~stpredict.models.RidgePredictor`).
    """

    default_backbone = "handcrafted"

    def __init__(self, *, k: int = 8, alphas: Sequence[float] | None = None) -> None:
        super().__init__(k=int(k), alphas=None if alphas is None else [float(a) for a in alphas])
        self._ridge = None

    def _make_ridge(self):
        from .ridge import RidgePredictor

        return RidgePredictor(alphas=self.config["alphas"])

    def fit(self, slides: Sequence[SlideData], *, genes: Sequence[str], max_epochs=None, seed=None):
        """Fit the ridge on ``[embedding, leave-self-out neighbour values]`` of every training spot."""
        parts = []
        for s in slides:
            if s.embeddings is None:
                msg = f"ridge_neighbors needs embeddings of slide {s.name!r} (stp.tl builds them from the backbone)."
                raise ValueError(msg)
            Y = np.asarray(s.y, dtype=np.float64)
            nb, _ = _idw(s.centers_um, Y, s.centers_um, self.config["k"], exclude_self=True)
            parts.append(SimpleNamespace(embeddings=np.hstack([np.asarray(s.embeddings, np.float64), nb]), y=Y))
        self._ridge = self._make_ridge().fit(parts, genes=genes)
        self.genes = list(genes)
        self.training = dict(self._ridge.training)
        return self

    def predict(self, slide: SlideData, regions: Regions) -> tuple[np.ndarray, np.ndarray]:
        """Ridge prediction from the regions' embeddings and the slide's measured neighbours."""
        xy, Y = self._context(slide)
        if regions.embeddings is None:
            msg = "ridge_neighbors predicts from embeddings: the regions carry none (stp.tl builds them)."
            raise ValueError(msg)
        nb, _ = _idw(xy, Y, regions.centers_um(slide), self.config["k"])
        feats = np.hstack([np.asarray(regions.embeddings, np.float64), nb])
        return self._ridge.predict(slide, dataclasses.replace(regions, embeddings=feats))

    def get_state(self) -> dict[str, np.ndarray]:
        """The ridge's arrays."""
        return self._ridge.get_state()

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore the ridge."""
        self._ridge = self._make_ridge()
        self._ridge.set_state(state)
        self._ridge.genes = self.genes
