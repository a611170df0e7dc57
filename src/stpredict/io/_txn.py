"""All-or-nothing replacement of elements in a SpatialData zarr store: a lock, staging, a journal, swaps.

The protocol (see :func:`stpredict.io.write_back`):

1. **Lock.** ``<store>/.stpredict-write/lock`` is created with ``O_CREAT | O_EXCL`` and holds the writer's pid,
   host, time and a token. A second writer is refused (:class:`StoreLockedError`); a lock whose pid is dead on
   this host is stale and is broken (renamed away, checked, removed).
2. **Recover** what an interrupted writer left (below).
3. **Stage.** Every element is written whole into ``<store>/.stpredict-write/<txn>/<type>/<name>``, a zarr
   group the store's readers never visit (spatialdata reads only ``images/``, ``labels/``, ``points/``,
   ``shapes/`` and ``tables/``, and the consolidated metadata does not list it).
4. **Commit.** ``<txn>/journal.json`` is written atomically (temporary file, ``os.replace``): it lists each
   element with the device and inode of its staged folder. From this instant the write goes forward.
5. **Swap.** Each staged folder takes its place: ``renameat2(RENAME_EXCHANGE)`` (Linux; ``renamex_np``
   with ``RENAME_SWAP`` on macOS) swaps the old and the new folder in one atomic step, so ``<type>/<name>`` is
   always the old or the new element whole; a new element is one ``rename``. Where the filesystem cannot
   exchange, the old folder is renamed into ``<txn>/old/`` and the new one into place (two renames: for an
   instant the element is absent, and the journal says how to finish).
6. **Consolidate** the store's metadata (zarr writes ``zarr.json`` through a temporary file and a rename).
   Before that, spatialdata's reader lists the elements of the old consolidated metadata and reads each one
   from its folder: a replaced element reads new, a new element is not yet listed.
7. **Clean up**: remove the journal, then the transaction folder (now holding the old versions), then the lock.

Recovery (``recover``, and the first step of every ``write_back``): a transaction folder without a journal is
removed (either nothing was swapped, or everything was and it held only old versions); one with a journal is
rolled forward: each element whose live folder is not the staged inode is swapped (or renamed) into place,
the metadata is consolidated, then the folder is removed. Leftover ``zarr.*.partial`` files of an interrupted
metadata write are removed.

The lock is in :mod:`._txn_lock`, the atomic exchange in :mod:`._txn_swap`, the journal and recovery in
:mod:`._txn_recover`; this module holds the transaction (stage, commit, undo) and re-exports the rest.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
import uuid
from typing import TYPE_CHECKING, Any

from ._txn_lock import LOCK_NAME, WORK_DIR, StoreLock, StoreLockedError
from ._txn_recover import (
    ELEMENT_TYPES,
    JOURNAL,
    _write_json_atomic,
    consolidate,
    elements_on_disk,
    has_consolidated_metadata,
    recover,
    recover_locked,
)
from ._txn_swap import _ident, _put_in_place, exchange

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "ELEMENT_TYPES",
    "JOURNAL",
    "KILL_ENV",
    "LOCK_NAME",
    "WORK_DIR",
    "StoreLock",
    "StoreLockedError",
    "Transaction",
    "consolidate",
    "elements_on_disk",
    "has_consolidated_metadata",
    "recover",
    "recover_locked",
]

#: test hook: SIGKILL the writer at its N-th step (or the step with this label); never set it otherwise
KILL_ENV = "STPREDICT_TEST_KILL_AT"


class _Steps:
    """Counts a write's steps; with :data:`KILL_ENV` set, SIGKILLs the process at the chosen one (tests)."""

    def __init__(self) -> None:
        self.n = 0
        self.spec = os.environ.get(KILL_ENV)

    def __call__(self, label: str) -> None:
        self.n += 1
        if self.spec is not None and self.spec in (str(self.n), label):
            os.kill(os.getpid(), signal.SIGKILL)


class Transaction:
    """One all-or-nothing write of elements into a locked store (see the module's docstring)."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.txn = store / WORK_DIR / f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.entries: list[dict[str, Any]] = []
        self.step = _Steps()

    def stage(self, sdata: Any, name: str, kind: str, *, replace: bool) -> None:
        """Write element ``name`` whole into the transaction folder."""
        import zarr

        if kind == "tables":
            from spatialdata._core.validation import validate_table_attr_keys

            validate_table_attr_keys(sdata[name])
        if not self.txn.exists():
            self.txn.mkdir(parents=True)
            zarr.open_group(self.txn, mode="w-")
        sdata._write_element(
            element=sdata[name], zarr_container_path=self.txn, element_type=kind, element_name=name, overwrite=False
        )
        dev, ino = _ident(self.txn / kind / name)
        self.entries.append({"type": kind, "name": name, "replace": replace, "dev": dev, "ino": ino})
        self.step(f"staged:{name}")

    def abort(self) -> None:
        """Remove the staged copies (nothing was committed)."""
        shutil.rmtree(self.txn, ignore_errors=True)

    def commit(self, *, consolidate_metadata: bool) -> None:
        """Journal, swap every staged element into place, consolidate, clean up."""
        import zarr

        for kind in {e["type"] for e in self.entries}:
            if not (self.store / kind / "zarr.json").exists():
                zarr.open_group(self.store, mode="r+", use_consolidated=False).require_group(kind)
        _write_json_atomic(
            self.txn / JOURNAL, {"format": 1, "pid": os.getpid(), "time": time.time(), "entries": self.entries}
        )
        self.step("journal")
        try:
            for e in self.entries:
                kind, name = e["type"], e["name"]
                _put_in_place(self.txn / kind / name, self.store / kind / name, self.txn / "old" / kind / name)
                self.step(f"swapped:{name}")
        except OSError:
            self._undo()
            raise
        if consolidate_metadata:
            consolidate(self.store)
            self.step("consolidated")
        (self.txn / JOURNAL).unlink()
        self.step("journal removed")
        shutil.rmtree(self.txn)
        self.step("cleaned")

    def _undo(self) -> None:
        """Put every old element back after a swap failed in this process, then drop the transaction."""
        for e in reversed(self.entries):
            kind, name = e["type"], e["name"]
            live, stage, backup = self.store / kind / name, self.txn / kind / name, self.txn / "old" / kind / name
            if _ident(live) == (e["dev"], e["ino"]):
                if stage.exists() and exchange(stage, live):  # the old one was exchanged to the stage
                    continue
                live.rename(stage)
            if not live.exists() and backup.exists():
                backup.rename(live)
        (self.txn / JOURNAL).unlink(missing_ok=True)
        self.abort()
