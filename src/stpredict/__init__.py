"""stpredict: predict and super-resolve spatial gene expression from H&E histology.

Submodules are imported lazily so that ``import stpredict`` stays cheap and never imports torch.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING

from ._settings import settings
from ._version import __version__

_SUBMODULES = ("datasets", "get", "io", "metrics", "models", "pl", "pp", "tl")

if TYPE_CHECKING:
    from . import datasets, get, io, metrics, models, pl, pp, tl


def __getattr__(name: str):
    if name in _SUBMODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        setattr(sys.modules[__name__], name, module)
        return module
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted([*globals(), *_SUBMODULES])


__all__ = ["__version__", "datasets", "get", "io", "metrics", "models", "pl", "pp", "settings", "tl"]
