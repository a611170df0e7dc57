"""Empirical-Bayes denoising of measured spots toward a prediction: the level ``condition="denoised"`` keeps.

A spot's count of a gene is Poisson around its rate; the image-only prediction at the spot is a prior for that
rate. With a Gamma prior of mean ``prior`` and shape ``a`` (per gene, one multiplicative dispersion ``1/a``),
the posterior mean rate is ``prior · (count + a) / (expected + a)``, ``expected = prior · library / 1e4``.
``1/a`` is estimated per gene from the spots themselves by moments: the variance of ``count − expected``
beyond Poisson noise, relative to ``expected²``. A gene the prediction explains well (little excess variance)
is pulled toward the prediction where its counts are few; a gene it does not explain keeps its measured value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["DenoiseResult", "denoise_measured"]

_SCALE = 1e4  # normalize_total target: measured values are counts per 1e4 of the spot's library


@dataclass
class DenoiseResult:
    """Posterior-mean expression of measured spots (:func:`denoise_measured`).

    Attributes
    ----------
    values
        ``(n_spots, n_genes)`` posterior mean, linear normalised units (counts per 1e4).
    dispersion
        ``(n_genes,)`` estimated ``1/a``: the prior's squared coefficient of variation (0: the prediction
        explains every spot up to Poisson noise; large: the measurement is kept).
    shrinkage
        ``(n_spots, n_genes)`` weight of the prior in each posterior, ``a / (expected + a)`` in [0, 1].
    """

    values: np.ndarray
    dispersion: np.ndarray
    shrinkage: np.ndarray

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable record for ``.uns["stpredict"]``."""
        return {
            "dispersion": self.dispersion.astype(float).tolist(),
            "shrinkage_median": float(np.median(self.shrinkage)) if self.shrinkage.size else float("nan"),
            "shrinkage_mean": float(np.mean(self.shrinkage)) if self.shrinkage.size else float("nan"),
        }


def denoise_measured(
    measured: np.ndarray,
    library_size: np.ndarray,
    prior: np.ndarray,
    *,
    min_dispersion: float = 1e-3,
) -> DenoiseResult:
    """Shrink measured spots toward a prediction by their count noise (Gamma–Poisson posterior mean).

    Parameters
    ----------
    measured
        ``(n_spots, n_genes)`` measured expression normalised to 1e4 per spot (``normalize_total`` over all
        genes), linear units.
    library_size
        ``(n_spots,)`` total counts of each spot over all genes (the library ``measured`` was normalised by).
    prior
        ``(n_spots, n_genes)`` predicted expression of the same spots, same units: out of fold, or at least
        not fitted to these counts alone, or the shrinkage trusts an over-fitted prior.
    min_dispersion
        Floor of the per-gene dispersion ``1/a``: the prior is never trusted beyond a 3 % coefficient of
        variation, however well it fits.

    Returns
    -------
    A :class:`DenoiseResult`.

    Raises
    ------
    ValueError
        If the shapes disagree, or a value is negative or not finite.
    """
    m = np.asarray(measured, dtype=float)
    lib = np.asarray(library_size, dtype=float).ravel()
    mu = np.asarray(prior, dtype=float)
    if m.ndim != 2 or mu.shape != m.shape or lib.shape != (m.shape[0],):
        msg = f"measured {m.shape}, prior {mu.shape} and library_size {lib.shape} do not match (spots × genes)."
        raise ValueError(msg)
    for name, a in (("measured", m), ("library_size", lib), ("prior", mu)):
        if not np.all(np.isfinite(a)) or (a < 0).any():
            msg = f"{name} holds negative or non-finite values; pass linear normalised expression and counts."
            raise ValueError(msg)
    # a prior of 0 would pin a spot with counts to 0: floor it at a small share of the gene's mean
    floor = 1e-2 * np.maximum(m.mean(0), 1e-12)
    mu = np.maximum(mu, floor)
    depth = (lib / _SCALE)[:, None]
    counts, expected = m * depth, mu * depth
    excess = ((counts - expected) ** 2 - expected).sum(0)
    phi = np.maximum(excess / np.maximum((expected**2).sum(0), 1e-300), min_dispersion)
    a = 1.0 / phi
    shrink = a / (expected + a)
    values = mu * (counts + a) / (expected + a)
    return DenoiseResult(values=values, dispersion=phi, shrinkage=shrink)
