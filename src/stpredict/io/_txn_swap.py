"""Atomic directory exchange (renameat2 on Linux, renamex_np on macOS) and putting a staged folder in place."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["exchange"]

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
