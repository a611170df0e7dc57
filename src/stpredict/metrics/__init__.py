"""Per-gene scores within one slide, map similarity and domain agreement (numpy/scipy/scikit-learn only).

The per-gene scores are in :mod:`._per_gene`, the map scores in :mod:`._maps`, domain agreement in
:mod:`._domains`.

Conventions (the honest ones, applied to every method alike):

- correlations are computed **per gene within one slide**, never pooled across slides;
- a gene whose truth is constant has an undefined correlation: ``NaN``, counted and reported, and such
  genes are dropped from summaries for every method;
- a prediction that is constant where the truth varies scores ``0`` (a method that predicts nothing
  scores nothing), not ``NaN``;
- out-of-fold predictions are scored **per fold, then averaged over folds** (``folds=``): each fold was
  predicted by its own model, so pooling the folds into one correlation mixes the models' offsets with the
  signal — a training mean that moves opposite to the held-out spots turns a constant prediction into an
  anti-correlation. Each gene's average is weighted by fold size over the folds where its score is defined
  (a gene constant within a fold is NaN for that fold and left out of that fold's weight); a gene that is
  NaN in every fold is NaN.
"""

from __future__ import annotations

from ._domains import ari, nmi
from ._maps import map_pearson, map_ssim, rasterize
from ._per_gene import (
    fold_scores,
    mae_per_gene,
    mse_per_gene,
    pearson_per_gene,
    score_table,
    spearman_per_gene,
    summarize,
)

__all__ = [
    "ari",
    "fold_scores",
    "map_pearson",
    "map_ssim",
    "mae_per_gene",
    "mse_per_gene",
    "nmi",
    "pearson_per_gene",
    "rasterize",
    "score_table",
    "spearman_per_gene",
    "summarize",
]
