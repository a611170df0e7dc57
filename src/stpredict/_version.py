"""The installed version, importable from every floor without importing the package root."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

#: the distribution's name on the package index (``stpredict`` there is an unrelated project); the import is
#: ``stpredict``
DISTRIBUTION = "stpredict-he"

try:
    __version__ = version(DISTRIBUTION)
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = ["DISTRIBUTION", "__version__"]
