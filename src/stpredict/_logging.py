"""The ``"stpredict"`` logger: one handler, level set by :attr:`stpredict.settings.verbosity`."""

from __future__ import annotations

import logging

_root = logging.getLogger("stpredict")
if not _root.handlers:
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(levelname)s stpredict: %(message)s"))
    _root.addHandler(_handler)
    _root.propagate = False


def get_logger(name: str) -> logging.Logger:
    """Return a child of the package logger for module ``name``."""
    return logging.getLogger(name if name.startswith("stpredict") else f"stpredict.{name}")
