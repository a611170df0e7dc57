"""Run records: the one sanitiser for what stpredict writes into ``.uns`` and into checkpoint headers.

A record is a plain dict of parameters. It goes to two places with different rules:

- ``.uns`` of an AnnData, written to zarr (:func:`uns_safe`): no ``None`` (zarr cannot store it), lists of
  strings or numbers as arrays, anything else (paths, devices, dtypes) as ``str``;
- the JSON header of a ``.safetensors`` checkpoint (:func:`jsonable`): ``None`` kept, arrays as lists.

Both walk the record with :func:`sanitize`, so a value is converted the same way in both.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["StepTimes", "jsonable", "read_record", "sanitize", "uns_safe"]


def sanitize(obj: Any, *, target: Literal["json", "uns"]) -> Any:
    """Convert a record for ``target``: ``"json"`` (checkpoint headers) or ``"uns"`` (zarr-writable ``.uns``).

    Parameters
    ----------
    obj
        A record: dicts, lists, tuples, numpy arrays and scalars, paths, strings, numbers, ``None``.
    target
        Where it is written (see the module docstring for the rules of each).

    Returns
    -------
    The converted record; ``obj`` is not modified.
    """
    uns = target == "uns"
    if isinstance(obj, dict):
        return {str(k): sanitize(v, target=target) for k, v in obj.items() if not (uns and v is None)}
    if isinstance(obj, list | tuple):
        vals = [sanitize(v, target=target) for v in obj if not (uns and v is None)]
        if uns and vals and all(isinstance(v, str) for v in vals):
            return np.asarray(vals, dtype=object).astype(str)
        if uns and vals and all(isinstance(v, int | float | bool) for v in vals):
            return np.asarray(vals)
        return vals
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj if uns else obj.tolist()
    if isinstance(obj, str | int | float | bool):
        return obj
    if obj is None:
        return None
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def uns_safe(obj: Any) -> Any:
    """A record writable to zarr ``.uns`` (see :func:`sanitize`)."""
    return sanitize(obj, target="uns")


def jsonable(obj: Any) -> Any:
    """A record serialisable with :func:`json.dumps` (see :func:`sanitize`)."""
    return sanitize(obj, target="json")


class StepTimes:
    """Wall-clock seconds of a verb's named steps, for its ``.uns`` record (``with steps("fit"): ...``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str) -> contextlib.AbstractContextManager[None]:
        """A context that adds the time spent inside it to step ``name``."""
        return self._time(name)

    @contextlib.contextmanager
    def _time(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - t0, 3)


def read_record(table: Any, key: str) -> dict[str, Any]:
    """The run record ``table.uns["stpredict"][key]`` as stored, or ``{}`` when there is none.

    The reader of run records for ``pl`` and ``tl`` where a missing record is not an error (the public reader,
    :func:`stpredict.get.record`, raises instead).
    """
    from ._keys import UNS_KEY

    rec = table.uns.get(UNS_KEY, {}).get(key)
    return rec if isinstance(rec, dict) else {}
