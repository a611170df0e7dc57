"""Predictions of a large grid in blocks of regions, for predictors whose regions do not depend on each other."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..models._base import Regions, SlideData
    from ..models._predictor import Predictor

__all__ = ["PREDICT_ELEMENTS", "ROWWISE", "predict_regions"]

#: predictors whose ``predict`` reads each region alone (its embedding, its centre), deterministically: their
#: predictions of a block of regions are those rows of the whole grid's
ROWWISE = frozenset({"ridge", "ridge_neighbors"})
#: embedding values per block (2²²: 16 MB in float32; a predictor's float64 temporaries are a few times that)
PREDICT_ELEMENTS = 2**22


def predict_regions(predictor: Predictor, slide: SlideData, regions: Regions) -> tuple[np.ndarray, np.ndarray | None]:
    """``predictor.predict(slide, regions)``, in blocks of regions for the predictors of :data:`ROWWISE`.

    A whole-slide grid (686k 8 µm bins) would otherwise hold the predictor's float64 temporaries (standardised
    features, projections) for every region at once; block by block only the float32 results are whole.
    """
    emb = regions.embeddings
    if predictor.name not in ROWWISE or emb is None:
        return predictor.predict(slide, regions)
    rows = max(1024, PREDICT_ELEMENTS // max(int(np.shape(emb)[1]), 1))
    if regions.n <= rows:
        return predictor.predict(slide, regions)
    mean = std = None
    for start in range(0, regions.n, rows):
        sl = slice(start, start + rows)
        part = dataclasses.replace(
            regions,
            centers_px=regions.centers_px[sl],
            embeddings=emb[sl],
            polygons_px=None if regions.polygons_px is None else regions.polygons_px[sl],
        )
        m, s = predictor.predict(slide, part)
        if mean is None:
            mean = np.empty((regions.n, *np.shape(m)[1:]), dtype=np.asarray(m).dtype)
            std = None if s is None else np.empty((regions.n, *np.shape(s)[1:]), dtype=np.asarray(s).dtype)
        mean[sl] = m
        if std is not None:
            std[sl] = s
    return mean, std
