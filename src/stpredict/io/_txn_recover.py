"""The journal of a committed write and recovery: roll a journalled write forward, remove an unjournalled one.

Also the store's metadata helpers both the write and the recovery use (element folders, consolidation).
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

from .._logging import get_logger
from ._txn_lock import LOCK_NAME, WORK_DIR, StoreLock
from ._txn_swap import _ident, _put_in_place

__all__ = ["consolidate", "elements_on_disk", "has_consolidated_metadata", "recover", "recover_locked"]

logger = get_logger(__name__)

JOURNAL = "journal.json"
ELEMENT_TYPES = ("images", "labels", "points", "shapes", "tables")


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(json.dumps(obj, indent=1).encode())
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def elements_on_disk(store: Path) -> dict[str, str]:
    """``{name: element type}`` of the element folders in ``store`` (hidden names skipped)."""
    out: dict[str, str] = {}
    for kind in ELEMENT_TYPES:
        d = store / kind
        if not d.is_dir():
            continue
        for child in d.iterdir():
            if not child.name.startswith(".") and child.is_dir() and (child / "zarr.json").exists():
                out.setdefault(child.name, kind)
    return out


def consolidate(store: Path) -> None:
    """Rewrite the store's consolidated metadata (zarr writes ``zarr.json`` via a temporary file + rename)."""
    import zarr
    from spatialdata._io.io_zarr import _write_consolidated_metadata

    with warnings.catch_warnings():
        # our work folder and lock file are not zarr nodes
        warnings.filterwarnings("ignore", category=zarr.errors.ZarrUserWarning)
        _write_consolidated_metadata(store)


def has_consolidated_metadata(store: Path) -> bool:
    """Whether the root ``zarr.json`` carries consolidated metadata."""
    try:
        meta = json.loads((store / "zarr.json").read_bytes())
    except (OSError, ValueError):
        return False
    return bool(meta.get("consolidated_metadata"))


def _roll_forward(store: Path, txn: Path, journal: dict[str, Any]) -> list[str]:
    done = []
    for e in journal["entries"]:
        kind, name = e["type"], e["name"]
        live, stage, backup = store / kind / name, txn / kind / name, txn / "old" / kind / name
        new = (e["dev"], e["ino"])
        if _ident(live) == new:
            continue
        if _ident(stage) != new:
            msg = (
                f"Cannot finish the interrupted write recorded in {str(txn / JOURNAL)!r}: the new copy of "
                f"{kind}/{name} is neither in place nor staged. Nothing was removed; inspect {str(txn)!r}."
            )
            raise RuntimeError(msg)
        _put_in_place(stage, live, backup)
        done.append(f"{kind}/{name}")
    return done


def _remove_partials(store: Path) -> None:
    for p in store.glob("zarr.*.partial"):
        p.unlink(missing_ok=True)


def recover_locked(store: Path) -> list[str]:
    """Finish or undo what an interrupted write left in ``store`` (the caller holds the lock)."""
    actions: list[str] = []
    work = store / WORK_DIR
    if work.is_dir():
        for txn in sorted(p for p in work.iterdir() if p.is_dir()):
            journal_path = txn / JOURNAL
            if journal_path.exists():
                journal = json.loads(journal_path.read_bytes())
                moved = _roll_forward(store, txn, journal)
                consolidate(store)
                journal_path.unlink()
                actions.append(
                    f"finished the interrupted write {txn.name} (swapped in {moved or 'nothing more'}, "
                    "consolidated the metadata)"
                )
            else:
                actions.append(f"removed the unfinished or finished write folder {txn.name}")
            shutil.rmtree(txn)
        for p in work.glob(f"{LOCK_NAME}.stale.*"):
            p.unlink(missing_ok=True)
    if any(store.glob("zarr.*.partial")):
        _remove_partials(store)
        actions.append("removed partial metadata files")
    for a in actions:
        logger.warning("Recovered %s: %s.", store, a)
    return actions


def recover(path: str | Path) -> list[str]:
    """Finish or undo an interrupted :func:`~stpredict.io.write_back` in the zarr store at ``path``.

    ``write_back`` does this itself before writing; call it after a crash to make a store clean without writing
    anything. A committed write (all new elements staged) is completed; an uncommitted one is removed; either
    way every element in the store is whole, and the consolidated metadata matches the folders.

    Parameters
    ----------
    path
        The zarr store.

    Returns
    -------
    What was done, one sentence per action (empty when the store was clean).

    Raises
    ------
    StoreLockedError
        If a write into the store is under way (its lock is held by a live process).
    """
    store = Path(path)
    if not (store / "zarr.json").exists():
        msg = f"{str(store)!r} is not a zarr store (no zarr.json)."
        raise FileNotFoundError(msg)
    if not (store / WORK_DIR).exists() and not any(store.glob("zarr.*.partial")):
        return []
    with StoreLock(store):
        return recover_locked(store)
