"""All or nothing in memory: a verb stages every change to the user's SpatialData, then applies them at once.

A verb builds all its results first and writes nothing while it works; its last step is :meth:`Staged.apply`,
which makes the staged assignments and deletions in order and, if anything interrupts it (an error, or a
``KeyboardInterrupt`` between two assignments), undoes those already made before re-raising. So a verb that
fails or is interrupted at any point leaves the object as it was.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Staged"]

_MISSING = object()
_DELETE = object()


class Staged:
    """Changes to mappings (``sdata.tables``, ``table.layers``, ``table.var``, ``uns`` dicts...), applied together."""

    def __init__(self) -> None:
        self._ops: list[tuple[Any, Any, Any]] = []
        self._made: dict[tuple[int, Any], dict] = {}

    def __len__(self) -> int:
        return len(self._ops)

    def set(self, mapping: Any, key: Any, value: Any) -> None:
        """Stage ``mapping[key] = value``."""
        self._ops.append((mapping, key, value))

    def delete(self, mapping: Any, key: Any) -> None:
        """Stage ``del mapping[key]`` (nothing if it is absent then)."""
        self._ops.append((mapping, key, _DELETE))

    def set_in(self, root: dict, path: tuple[Any, ...], value: Any) -> None:
        """Stage ``root[p0][p1]...[pn] = value``, creating the missing dicts on the way (e.g. ``uns`` records)."""
        parent = root
        for p in path[:-1]:
            made = self._made.get((id(parent), p))
            if made is not None:
                parent = made
            elif p in parent and isinstance(parent[p], dict):
                parent = parent[p]
            else:
                new: dict = {}
                self.set(parent, p, new)
                self._made[(id(parent), p)] = new
                parent = new
        self.set(parent, path[-1], value)

    def apply(self) -> None:
        """Make every staged change, in order; on any exception (``KeyboardInterrupt`` too) undo them and re-raise."""
        undo: list[tuple[Any, Any, Any]] = []
        try:
            for mapping, key, value in self._ops:
                old = mapping[key] if key in mapping else _MISSING  # noqa: SIM401 (not every container has .get)
                undo.append((mapping, key, old))
                if value is _DELETE:
                    if old is not _MISSING:
                        del mapping[key]
                else:
                    mapping[key] = value
        except BaseException:
            for mapping, key, old in reversed(undo):
                _restore(mapping, key, old)
            raise
        finally:
            self._ops.clear()
            self._made.clear()


def _restore(mapping: Any, key: Any, old: Any) -> None:
    if old is _MISSING:
        if key in mapping:
            del mapping[key]
    else:
        mapping[key] = old
