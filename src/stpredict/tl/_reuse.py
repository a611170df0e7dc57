"""Fits kept in memory for the next call that asks for the same fit.

``superresolve(sdata, "histosge", grid="ps4")`` followed by ``superresolve(sdata, "histosge", bin_size=16)``
fits the same model on the same spots twice; the second call takes the first one's fit instead. A fit is the
same when everything it was made from is: the predictor's class and configuration, the gene panel and its
preprocessing, how inputs were made (backbone parameters, window, stain reference, feature norm, stain
augmentation), each training slide's spots (names and positions), targets and embeddings (hashed), the
images' lazy array tokens, ``max_epochs``, ``seed`` and the stpredict version. Kept per session, in memory,
the ``stp.settings.model_cache`` most recent fits (0 turns it off).
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import numpy as np

from .._logging import get_logger
from .._settings import settings
from .._version import __version__
from ._models import slide_fingerprint, train

if TYPE_CHECKING:
    from ..models._base import Predictor, SlideData
    from ._pipeline import Compute, Inputs

__all__ = ["clear_fits", "fit_or_reuse"]

logger = get_logger(__name__)

_FITS: OrderedDict[str, Predictor] = OrderedDict()


def clear_fits() -> None:
    """Forget every kept fit."""
    _FITS.clear()


def _array_digest(h: Any, a: np.ndarray | None) -> None:
    if a is None:
        h.update(b"none")
        return
    a = np.ascontiguousarray(a)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())


def _slide_digest(h: Any, slide: SlideData) -> None:
    h.update(slide_fingerprint(slide).encode())
    _array_digest(h, slide.y)
    _array_digest(h, slide.library_size)
    _array_digest(h, slide.embeddings)
    h.update(repr(slide.microns_per_pixel_xy).encode())
    for level in slide.image_levels:  # dask's token names the array's content and graph
        h.update(str(getattr(level.array, "name", id(level.array))).encode())


def fit_key(predictor: Predictor, inputs: Inputs, *, max_epochs: int | None, seed: int | None) -> str:
    """A digest of everything a fit of ``predictor`` on all of ``inputs`` is made from."""
    h = hashlib.sha256()
    head = {
        "class": f"{type(predictor).__module__}.{type(predictor).__qualname__}",
        "config": predictor.config,
        "genes": list(inputs.genes or []),
        "preprocessing": inputs.preprocessing,
        "inputs": inputs.backbone_params,
        "stain_augment": inputs.transfer.stain_augment,
        "max_epochs": max_epochs,
        "seed": seed,
        "version": __version__,
    }
    h.update(json.dumps(head, sort_keys=True, default=repr).encode())
    for slide in inputs.slides:
        _slide_digest(h, slide)
    return h.hexdigest()[:20]


def fit_or_reuse(
    predictor: Predictor, inputs: Inputs, run: Compute, *, max_epochs: int | None, seed: int | None
) -> tuple[Predictor, str | None]:
    """``(fitted predictor, key of the kept fit it is, or None when fitted now)``.

    ``predictor`` is fitted on all of ``inputs`` unless an identical fit is kept (:func:`fit_key`); the fit
    made here is kept for later calls. Embeddings must already be computed (they are part of the key).
    """
    n_keep = int(settings.model_cache)
    key = fit_key(predictor, inputs, max_epochs=max_epochs, seed=seed) if n_keep > 0 else None
    if key is not None and key in _FITS:
        _FITS.move_to_end(key)
        logger.info(
            "Reusing the %s fit of an earlier call (same model, panel, inputs and seed: %s).", predictor.name, key
        )
        kept = _FITS[key]
        kept.device, kept.progress = run.device, run.progress
        return kept, key
    train(predictor, inputs, run, max_epochs=max_epochs, seed=seed)
    if key is not None:
        _FITS[key] = predictor
        while len(_FITS) > n_keep:
            _FITS.popitem(last=False)
    return predictor, None
