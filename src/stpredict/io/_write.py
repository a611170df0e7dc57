"""Writing stpredict's results back into the zarr store a SpatialData was read from."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .._keys import UNS_KEY
from .._logging import get_logger
from ._txn import StoreLock, Transaction, elements_on_disk, has_consolidated_metadata, recover_locked

if TYPE_CHECKING:
    from collections.abc import Sequence

    from spatialdata import SpatialData

__all__ = ["write_back"]

logger = get_logger(__name__)

#: element types whose on-disk copy may be replaced: they are held in memory once read
_REPLACEABLE = ("tables", "shapes")


def write_back(
    sdata: SpatialData,
    elements: str | Sequence[str] | None = None,
    *,
    consolidate: bool = True,
) -> list[str]:
    """Write new or updated elements into the zarr store ``sdata`` was read from, all or nothing.

    ``stp.tl`` verbs change the object in memory only (``predict`` adds layers to a table, ``superresolve``
    adds shapes, a table and optionally an image). This writes them into ``sdata.path`` so that the store
    read back holds them. Nothing is deleted before its replacement is whole on disk: the elements are first
    written into a folder of the store that readers never visit, then swapped into place by directory renames,
    so a process killed at any instant leaves each element old or new, whole; the next ``write_back`` (or
    :func:`stpredict.io.recover`) finishes or removes what an interrupted one left. A lock file keeps a second
    writer out. See :mod:`stpredict.io._txn` for the protocol.

    Parameters
    ----------
    sdata
        A SpatialData read from (or written to) a zarr store.
    elements
        Element names to write. ``None``: every element not yet in the store, plus every table carrying
        stpredict results (``uns["stpredict"]``).
    consolidate
        Rewrite the store's consolidated metadata afterwards (spatialdata's readers use it). A store that
        already has consolidated metadata always gets it rewritten: stale metadata would hide the new elements.

    Returns
    -------
    The names written, in order.

    Raises
    ------
    ValueError
        If ``sdata`` is not backed by a zarr store, or an element to replace is an image, labels or points
        element already in the store: those are read lazily from the store itself, so deleting them there
        would destroy the data being written. Nothing is written in that case.
    KeyError
        If a named element is not in ``sdata``.
    StoreLockedError
        If another process is writing into the store (the message names the lock file).
    PermissionError
        If the store cannot be written (read-only filesystem or permissions). Nothing is changed.

    Examples
    --------
    >>> import spatialdata as sd, stpredict as stp  # doctest: +SKIP
    >>> sdata = sd.read_zarr("slide.zarr")  # doctest: +SKIP
    >>> stp.tl.predict(sdata, "ridge")  # doctest: +SKIP
    >>> stp.tl.superresolve(sdata, "ridge", grid="ps4")  # doctest: +SKIP
    >>> stp.io.write_back(sdata)  # doctest: +SKIP
    ['table', 'spots_ps4', 'ridge_spots_ps4']
    """
    if not sdata.is_backed() or sdata.path is None:
        msg = (
            "This SpatialData is not backed by a zarr store (it was not read with spatialdata.read_zarr nor "
            "written with .write): write the whole object with sdata.write(path) instead."
        )
        raise ValueError(msg)
    store = Path(sdata.path)
    in_memory = {p.split("/", 1)[1]: p.split("/", 1)[0] for p in sdata.elements_paths_in_memory()}
    if elements is not None:
        wanted = [elements] if isinstance(elements, str) else list(elements)
        missing = [n for n in wanted if n not in in_memory]
        if missing:
            from .._args import close_matches

            close = {n: close_matches(n, in_memory, n=1) for n in missing}
            hint = "".join(f" Did you mean {c[0]!r} for {n!r}?" for n, c in close.items() if c)
            msg = f"Elements {missing} are not in this SpatialData; it holds {sorted(in_memory)}.{hint}"
            raise KeyError(msg)
    if not _plan(sdata, store, in_memory, elements, elements_on_disk(store))[0]:
        return []
    with StoreLock(store):
        recover_locked(store)
        names, replace = _plan(sdata, store, in_memory, elements, elements_on_disk(store))
        if not names:
            return []
        _check_writable(store, names, replace, in_memory)
        refresh = consolidate or has_consolidated_metadata(store)
        txn = Transaction(store)
        try:
            for n in names:
                txn.stage(sdata, n, in_memory[n], replace=n in replace)
        except BaseException as e:
            txn.abort()
            e.add_note(f"Writing {n!r} into {str(store)!r} failed before any swap: nothing in the store changed.")
            raise
        txn.commit(consolidate_metadata=refresh)
    for n in names:
        logger.info("Wrote %s %r into %s%s.", in_memory[n], n, store, " (replaced)" if n in replace else "")
    return names


def _plan(
    sdata: SpatialData,
    store: Path,
    in_memory: dict[str, str],
    elements: str | Sequence[str] | None,
    on_disk: dict[str, str],
) -> tuple[list[str], set[str]]:
    """The names to write and those among them that replace an element on disk; raises on lazy ones."""
    if elements is None:
        names = [n for n in in_memory if n not in on_disk]
        names += [
            n for n, kind in in_memory.items() if kind == "tables" and n in on_disk and UNS_KEY in sdata.tables[n].uns
        ]
    else:
        names = [elements] if isinstance(elements, str) else list(elements)
    names = list(dict.fromkeys(names))
    other = [n for n in names if n in on_disk and on_disk[n] != in_memory[n]]
    if other:
        msg = (
            f"Elements {[f'{on_disk[n]}/{n}' for n in other]} in {str(store)!r} have the names of in-memory elements "
            f"of another type ({[in_memory[n] for n in other]}): rename the in-memory ones."
        )
        raise ValueError(msg)
    replace = {n for n in names if n in on_disk}
    lazy = [n for n in names if n in replace and in_memory[n] not in _REPLACEABLE]
    if lazy:
        msg = (
            f"Elements {lazy} are already in {sdata.path} and are read lazily from it: they cannot be replaced "
            "in place. Write the object to a new store with sdata.write(new_path) instead."
        )
        raise ValueError(msg)
    return names, replace


def _check_writable(store: Path, names: list[str], replace: set[str], in_memory: dict[str, str]) -> None:
    """Refuse before staging anything if a folder the swaps rename in is not writable."""
    need = [store] + [store / in_memory[n] for n in names if (store / in_memory[n]).exists()]
    need += [store / in_memory[n] / n for n in replace]
    bad = [str(p) for p in dict.fromkeys(need) if not os.access(p, os.W_OK | os.X_OK)]
    if bad:
        msg = f"Cannot write into {str(store)!r}: no write permission on {bad}. Nothing was changed."
        raise PermissionError(errno.EACCES, msg)
