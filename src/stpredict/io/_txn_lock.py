"""The write lock of a zarr store (``<store>/.stpredict-write/lock``, ``O_EXCL``) and breaking stale locks."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from .._logging import get_logger

__all__ = ["LOCK_NAME", "WORK_DIR", "StoreLock", "StoreLockedError"]

logger = get_logger(__name__)

#: folder inside the store holding the lock and the transactions of stp.io.write_back
WORK_DIR = ".stpredict-write"
LOCK_NAME = "lock"
#: a lock file still empty this many seconds after its creation was left by a writer killed while creating it
_EMPTY_LOCK_GRACE_S = 10.0


class StoreLockedError(RuntimeError):
    """Another process is writing into this zarr store (its lock file exists)."""


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
