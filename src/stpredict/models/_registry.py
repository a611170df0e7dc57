"""The predictor registry: registration, entry-point plugins, look-up by name, creation and loading."""

from __future__ import annotations

import fnmatch
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

import pandas as pd

from .._args import close_matches
from .._logging import get_logger
from ._predictor import Predictor

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

__all__ = [
    "ENTRY_POINT_GROUP",
    "create_predictor",
    "get_predictor_class",
    "list_predictors",
    "load",
    "predictors_table",
    "read_header",
    "register_predictor",
]

logger = get_logger(__name__)

_REGISTRY: dict[str, type[Predictor]] = {}
_ENTRY_POINTS_LOADED = False
ENTRY_POINT_GROUP = "stpredict.predictors"


def register_predictor(
    name: str | None = None, *, override: bool = False
) -> Callable[[type[Predictor]], type[Predictor]]:
    """Class decorator registering a :class:`Predictor` subclass under ``name``.

    A duplicate name raises unless ``override=True``.

    Parameters
    ----------
    name
        Registry key, used by :func:`create_predictor` and ``stp.tl.predict(model=...)``. ``None`` uses the
        class's ``name`` attribute. The decorator sets the class's ``name`` to the key.
    override
        Replace a different class already registered under ``name``. Registering the same class again is
        always allowed.

    Returns
    -------
    The decorator. It returns the class itself (registered, with its ``name`` set) and raises, when applied:

    - :class:`TypeError` if what it decorates is not a :class:`Predictor` subclass;
    - :class:`ValueError` if another class holds ``name`` and ``override`` is ``False``.

    Examples
    --------
    >>> from stpredict.models import Predictor, register_predictor
    >>> @register_predictor("my_model")
    ... class MyModel(Predictor): ...
    """

    def decorator(cls: type[Predictor]) -> type[Predictor]:
        key = name or cls.name
        if not isinstance(cls, type) or not issubclass(cls, Predictor):
            msg = f"register_predictor decorates Predictor subclasses, got {cls!r}."
            raise TypeError(msg)
        if key in _REGISTRY and _REGISTRY[key] is not cls and not override:
            msg = f"A predictor named {key!r} is already registered ({_REGISTRY[key].__module__}); pass override=True."
            raise ValueError(msg)
        cls.name = key
        _REGISTRY[key] = cls
        return cls

    return decorator


def _load_entry_points() -> None:
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as e:  # noqa: BLE001 - a broken plugin must not break the package
            logger.warning("Could not load predictor plugin %r (%s): %s", ep.name, ep.value, e)
            continue
        if isinstance(obj, type) and issubclass(obj, Predictor) and ep.name not in _REGISTRY:
            register_predictor(ep.name)(obj)


def list_predictors(pattern: str = "*") -> list[str]:
    """Registered predictor names matching an fnmatch ``pattern`` (built-ins and entry-point plugins).

    The first call loads the plugins declared in the ``stpredict.predictors`` entry-point group; a plugin that
    fails to import is logged as a warning and skipped.

    Parameters
    ----------
    pattern
        Shell-style wildcard (:func:`fnmatch.fnmatch`): ``"*"`` for all, ``"n*"`` for the names starting
        with n...

    Returns
    -------
    The matching names, sorted.

    Examples
    --------
    >>> import stpredict as stp
    >>> "ridge" in stp.models.list_predictors()
    True
    """
    _load_entry_points()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def predictors_table() -> pd.DataFrame:
    """One row per registered predictor: what it consumes, its default backbone, whether it gives a std."""
    rows = []
    for n in list_predictors():
        cls = _REGISTRY[n]
        doc = (cls.__doc__ or "").strip().splitlines()
        rows.append(
            {
                "name": n,
                "consumes": cls.consumes,
                "default_backbone": cls.default_backbone,
                "std": cls.provides_std,
                "description": doc[0] if doc else "",
            }
        )
    return pd.DataFrame(rows).set_index("name")


def get_predictor_class(name: str) -> type[Predictor]:
    """The class registered under ``name``; a KeyError lists the registered names and close matches.

    Names match case-insensitively when that is unambiguous (``"HisToSGE"`` is ``"histosge"``).

    Parameters
    ----------
    name
        Registered name (see :func:`list_predictors`). Entry-point plugins are loaded first.

    Returns
    -------
    The :class:`Predictor` subclass, not an instance (see :func:`create_predictor`).

    Raises
    ------
    KeyError
        If no predictor is registered under ``name``; the message suggests close matches.
    """
    _load_entry_points()
    if name not in _REGISTRY and isinstance(name, str):
        folded = [k for k in _REGISTRY if k.casefold() == name.casefold()]
        if len(folded) == 1:  # "HisToSGE", the method's own spelling, is "histosge"
            return _REGISTRY[folded[0]]
    if name not in _REGISTRY:
        close = close_matches(name, _REGISTRY, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        msg = f"Unknown model {name!r}.{hint} Registered predictors: {', '.join(sorted(_REGISTRY))}."
        raise KeyError(msg)
    return _REGISTRY[name]


def create_predictor(name: str, **config: Any) -> Predictor:
    """Instantiate the predictor registered under ``name`` with its configuration.

    Parameters
    ----------
    name
        Registered name (see :func:`list_predictors`).
    **config
        Keyword arguments of the predictor class's constructor (its JSON-able options; see the class's
        documentation).

    Returns
    -------
    A new, unfitted :class:`Predictor`.

    Raises
    ------
    KeyError
        If no predictor is registered under ``name``.
    TypeError
        If the class does not accept ``config``.

    Examples
    --------
    >>> import stpredict as stp
    >>> stp.models.create_predictor("ridge").is_fitted
    False
    """
    cls = get_predictor_class(name)
    try:
        return cls(**config)
    except TypeError as e:
        msg = f"Bad options for model {name!r}: {e}. See help(stp.models.{cls.__name__})."
        raise TypeError(msg) from e


def read_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of a checkpoint; see :func:`stpredict.models._checkpoint.read_header`."""
    from ._checkpoint import read_header as _read_header

    return _read_header(path)


def load(path: str | Path) -> Predictor:
    """Load a predictor saved with :meth:`Predictor.save`.

    Parameters
    ----------
    path
        The checkpoint; ``.safetensors`` is added when ``path`` does not exist as given (as ``save`` does).

    Returns
    -------
    The fitted predictor, with its genes, preprocessing and backbone settings.

    Raises
    ------
    FileNotFoundError
        If no checkpoint exists at ``path`` (the message lists the paths tried).
    CheckpointError
        If the file is not a readable stpredict checkpoint (see :func:`read_header`), names a predictor that is
        not registered, holds options its predictor does not take, or tensors missing, unexpected or of the
        wrong shape for it.
    """
    from ._checkpoint import load as _load

    return _load(path, lookup=get_predictor_class)
