"""The public verbs: embed, fit, predict, superresolve, evaluate, and their cohort forms."""

from __future__ import annotations

from ._cohort import embed_cohort, predict_cohort
from ._cohort_run import CohortError
from ._cv import CVResult, cross_validate
from ._evaluate import evaluate
from ._fit import embed, fit
from ._predict import predict
from ._superresolve import superresolve

__all__ = [
    "CVResult",
    "CohortError",
    "cross_validate",
    "embed",
    "embed_cohort",
    "evaluate",
    "fit",
    "predict",
    "predict_cohort",
    "superresolve",
]
