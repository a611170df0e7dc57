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
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import shutil
import signal
import socket
import sys
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

from .._logging import get_logger

__all__ = ["LOCK_NAME", "WORK_DIR", "StoreLock", "StoreLockedError", "recover"]

logger = get_logger(__name__)

#: folder inside the store holding the lock and the transactions of stp.io.write_back
WORK_DIR = ".stpredict-write"
LOCK_NAME = "lock"
JOURNAL = "journal.json"
ELEMENT_TYPES = ("images", "labels", "points", "shapes", "tables")
#: test hook: SIGKILL the writer at its N-th step (or the step with this label); never set it otherwise
KILL_ENV = "STPREDICT_TEST_KILL_AT"
#: a lock file still empty this many seconds after its creation was left by a writer killed while creating it
_EMPTY_LOCK_GRACE_S = 10.0


class StoreLockedError(RuntimeError):
    """Another process is writing into this zarr store (its lock file exists)."""


class _Steps:
    """Counts a write's steps; with :data:`KILL_ENV` set, SIGKILLs the process at the chosen one (tests)."""

    def __init__(self) -> None:
        self.n = 0
        self.spec = os.environ.get(KILL_ENV)

    def __call__(self, label: str) -> None:
        self.n += 1
        if self.spec is not None and self.spec in (str(self.n), label):
            os.kill(os.getpid(), signal.SIGKILL)


# --------------------------------------------------------------------------------------------------------
# the lock
# --------------------------------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True
    with contextlib.suppress(OSError, IndexError):
        # a zombie (killed, not yet reaped) is dead for our purpose
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    return True


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "an unknown process (the lock file is empty or unreadable)"
    return f"pid {holder.get('pid')} on host {holder.get('host')!r} since {holder.get('time')}"


class StoreLock:
    """Exclusive write lock of a zarr store: ``<store>/.stpredict-write/lock``, created with ``O_EXCL``.

    The file holds JSON: ``pid``, ``host``, ``time`` and a random ``token``. A lock held by a pid that is dead
    on this host is stale: it is broken with a warning. A live holder, or a holder on another host (whose pid
    cannot be checked), refuses the lock with :class:`StoreLockedError`, naming the file.
    """

    def __init__(self, store: str | Path) -> None:
        self.store = Path(store)
        self.path = self.store / WORK_DIR / LOCK_NAME
        self.token = uuid.uuid4().hex
        self.held = False

    def _info(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "unix_time": time.time(),
            "token": self.token,
            "argv": sys.argv[:3],
        }

    def _read(self, path: Path | None = None) -> tuple[bytes, dict[str, Any] | None]:
        raw = (path or self.path).read_bytes()
        try:
            holder = json.loads(raw)
        except ValueError:
            return raw, None
        return raw, holder if isinstance(holder, dict) else None

    def _stale(self, holder: dict[str, Any] | None) -> bool:
        if holder is None:
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return False
            return age > _EMPTY_LOCK_GRACE_S
        if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
            return False
        return not _pid_alive(holder["pid"])

    def _break(self, raw: bytes, holder: dict[str, Any] | None) -> None:
        aside = self.path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}.{uuid.uuid4().hex[:8]}")
        try:
            self.path.rename(aside)
        except FileNotFoundError:
            return  # another process broke it first
        if aside.read_bytes() != raw:
            # between reading and renaming, someone else broke the stale lock and took the store: give it back
            with contextlib.suppress(OSError):
                os.link(aside, self.path)
            aside.unlink(missing_ok=True)
            return
        aside.unlink(missing_ok=True)
        logger.warning(
            "Removed the stale lock %s of %s (that process is gone: an interrupted write_back); the store is "
            "recovered before writing.",
            self.path,
            _describe(holder),
        )

    def acquire(self) -> StoreLock:
        """Take the lock, breaking a stale one; raise :class:`StoreLockedError` if another writer holds it."""
        info = json.dumps(self._info()).encode()
        for _ in range(5):
            try:
                self.path.parent.mkdir(exist_ok=True)
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    raw, holder = self._read()
                except FileNotFoundError:
                    continue  # released meanwhile
                if self._stale(holder):
                    self._break(raw, holder)
                    continue
                msg = (
                    f"Another write into {str(self.store)!r} is under way: {_describe(holder)} holds the lock file "
                    f"{str(self.path)!r}. Wait for it to finish. If no write_back is running on that store (a "
                    f"process killed on another machine, or a reused pid), delete {str(self.path)!r} and call "
                    f"stp.io.recover({str(self.store)!r})."
                )
                raise StoreLockedError(msg) from None
            except FileNotFoundError:
                continue  # the work folder was removed by a releasing writer: try again
            except OSError as e:
                if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                    msg = (
                        f"Cannot write into {str(self.store)!r}: {e.strerror} (creating the lock file "
                        f"{str(self.path)!r}). Nothing was changed. Write the object to a writable location "
                        "with sdata.write(new_path) instead."
                    )
                    raise PermissionError(e.errno, msg) from e
                raise
            try:
                os.write(fd, info)
            finally:
                os.close(fd)
            self.held = True
            return self
        msg = f"Could not take the lock {str(self.path)!r} of {str(self.store)!r} (it keeps changing hands)."
        raise StoreLockedError(msg)

    def release(self) -> None:
        """Remove the lock if it is still ours, and the work folder if it is empty."""
        if not self.held:
            return
        self.held = False
        try:
            _, holder = self._read()
        except FileNotFoundError:
            return
        if holder is None or holder.get("token") != self.token:
            logger.warning("The lock %s is no longer ours (it was removed by hand?): left as it is.", self.path)
            return
        self.path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.path.parent.rmdir()  # only when empty

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# --------------------------------------------------------------------------------------------------------
# atomic directory exchange
# --------------------------------------------------------------------------------------------------------
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2  # linux/fs.h
_RENAME_SWAP = 2  # macOS stdio.h
_exchange_fn: list[Any] = []


def _load_exchange() -> Any:
    if _exchange_fn:
        return _exchange_fn[0]
    fn = None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        if sys.platform.startswith("linux") and hasattr(libc, "renameat2"):
            f = libc.renameat2
            f.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            f.restype = ctypes.c_int

            def fn(a: bytes, b: bytes) -> int:
                return f(_AT_FDCWD, a, _AT_FDCWD, b, _RENAME_EXCHANGE)

        elif sys.platform == "darwin" and hasattr(libc, "renamex_np"):
            f = libc.renamex_np
            f.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint]
            f.restype = ctypes.c_int

            def fn(a: bytes, b: bytes) -> int:
                return f(a, b, _RENAME_SWAP)

    except OSError:
        fn = None
    _exchange_fn.append(fn)
    return fn


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step; ``False`` where the OS or filesystem cannot."""
    fn = _load_exchange()
    if fn is None:
        return False
    if fn(os.fsencode(a), os.fsencode(b)) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _ident(p: Path) -> tuple[int, int] | None:
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _put_in_place(stage: Path, live: Path, backup: Path) -> None:
    """Move the staged folder to ``live``; an old ``live`` ends up at ``stage`` (exchange) or ``backup``."""
    if not live.exists():
        stage.rename(live)
    elif not exchange(stage, live):
        backup.parent.mkdir(parents=True, exist_ok=True)
        live.rename(backup)
        stage.rename(live)


# --------------------------------------------------------------------------------------------------------
# the transaction
# --------------------------------------------------------------------------------------------------------
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
