"""Optional imports with install hints, and warnings aimed at the user's code."""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import ModuleType

_PKG_DIR = str(Path(__file__).parent)


def optional_import(module: str, *, extra: str | None = None, purpose: str = "") -> ModuleType:
    """Import ``module`` or raise an :class:`ImportError` saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        hint = f"pip install 'stpredict[{extra}]'" if extra else f"pip install {module.split('.')[0]}"
        msg = f"{purpose + ' needs' if purpose else 'This needs'} the optional package {module!r}: {hint}."
        raise ImportError(msg) from e


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """Warn, attributing the warning to the first frame outside stpredict."""
    warnings.warn(message, category, stacklevel=2, skip_file_prefixes=(_PKG_DIR,))
