"""Spatially blocked cross-fitting: out-of-fold predictions of a slide's own measured spots."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from ..models._base import Regions
from ..pp._folds import spatial_folds
from ._models import fresh_copy, train
from ._pipeline import spot_kind

if TYPE_CHECKING:
    from ..models._base import Predictor, SlideData
    from ._pipeline import Compute, Inputs

__all__ = ["cross_fit"]


def cross_fit(
    predictor: Predictor,
    inputs: Inputs,
    run: Compute,
    slide: SlideData,
    *,
    n_folds: int,
    max_epochs: int | None,
    seed: int | None,
    trainings: list[dict[str, Any]] | None = None,
    **train_kwargs: Any,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, float]:
    """``(mean, std, folds, block_um)``: each spot predicted by a copy of ``predictor`` fitted without its block.

    The spots are split into ``n_folds`` spatial blocks (:func:`stpredict.pp.spatial_folds`); for each, a fresh
    copy is trained on the other blocks and predicts the held-out ones, with the training spots as context.
    ``std`` is ``None`` when the predictor gives none. ``train_kwargs`` go to every fit (``genes``,
    ``preprocessing``); each fit's :attr:`~stpredict.models.Predictor.training` record is appended to
    ``trainings`` when given.
    """
    from tqdm.auto import tqdm

    from .._settings import settings

    folds, block = spatial_folds(slide.centers_um, n_folds, seed=seed)
    mean = std = None
    # the fold bar (with its ETA) above the bars an iterative predictor shows for each fit (member, epochs)
    show = settings.progress if run.progress is None else run.progress
    for f in tqdm(range(n_folds), desc=f"{predictor.name} out-of-fold", unit="fold", disable=not show):
        test = np.flatnonzero(folds == f)
        train_idx = np.flatnonzero(folds != f)
        if len(test) == 0:
            continue
        p = fresh_copy(predictor)
        ctx = slide.subset(train_idx)
        t0 = time.perf_counter()
        train(p, inputs, run, slides=[ctx], max_epochs=max_epochs, seed=seed, **train_kwargs)
        if trainings is not None:
            trainings.append({**p.training, "fit_seconds": round(time.perf_counter() - t0, 3)})
        held = slide.subset(test)
        regions = Regions(held.centers_px, spot_kind(slide), slide.spot_diameter_um, "spots", held.embeddings)
        m, s = p.predict(ctx, regions)
        if mean is None:
            mean = np.full((slide.n, np.shape(m)[1]), np.nan, dtype=np.float32)
        mean[test] = m
        if s is not None:
            if std is None:
                std = np.full_like(mean, np.nan)
            std[test] = s
    return mean, std, folds, block
