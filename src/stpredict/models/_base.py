"""The predictor contract's import path: re-exports the inputs, the base class and the registry.

The contract lives in :mod:`._inputs` (:class:`SlideData`, :class:`Regions`), :mod:`._predictor`
(:class:`Predictor`) and :mod:`._registry` (``register_predictor``, ``create_predictor``, ``load``...);
predictors and :mod:`stpredict.tl` import it from here.
"""

from __future__ import annotations

from ._inputs import Regions, SlideData
from ._predictor import Consumes, Predictor
from ._registry import (
    _REGISTRY,  # noqa: F401 - the registry dict, which tests clean up through this module
    ENTRY_POINT_GROUP,
    create_predictor,
    get_predictor_class,
    list_predictors,
    load,
    predictors_table,
    read_header,
    register_predictor,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "Consumes",
    "Predictor",
    "Regions",
    "SlideData",
    "create_predictor",
    "get_predictor_class",
    "list_predictors",
    "load",
    "predictors_table",
    "read_header",
    "register_predictor",
]
