"""The public verbs: embed, fit, predict, superresolve, evaluate."""

from __future__ import annotations

from ._cv import CVResult, cross_validate
from ._evaluate import evaluate
from ._fit import embed, fit
from ._predict import predict
from ._superresolve import superresolve

__all__ = ["CVResult", "cross_validate", "embed", "evaluate", "fit", "predict", "superresolve"]
