"""write_back is all or nothing: real SIGKILLs at many moments, a second writer, a read-only store.

The store (synthetic slide, ridge predictions, a ps4 grid) is built once per module; each case copies it and
forks a child process that runs ``write_back`` on the copy and is killed with SIGKILL (by the test at a
measured moment, or by itself at its N-th step through ``STPREDICT_TEST_KILL_AT``). After each kill the
store must read back with every original element intact, and every new element absent or whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import stpredict as stp
from stpredict.io._txn import KILL_ENV, LOCK_NAME, WORK_DIR, StoreLock

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
    # Python >= 3.12 warns on fork() in a process with threads (zarr's IO thread); the children only write files
    pytest.mark.filterwarnings(r"ignore:.*use of fork\(\) may lead to deadlocks:DeprecationWarning"),
]

NEW_SHAPES = ("spots_ps4",)
NEW_TABLES = ("ridge_spots_ps4",)
N_TIMED_KILLS = 20
CHILD_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """``(pristine store, object with the new elements in memory, originals read back, new ones read back)``."""
    from spatialdata import read_zarr

    root = tmp_path_factory.mktemp("safety")
    pristine = root / "pristine.zarr"
    stp.datasets.synthetic(image_size=512, n_genes=5, seed=0).write(pristine)
    original = read_zarr(pristine)
    sdata = read_zarr(pristine)
    stp.tl.predict(sdata, "ridge", progress=False)
    stp.tl.superresolve(sdata, "ridge", grid="ps4", progress=False)
    # the new elements as they read back after an uninterrupted write (what "whole" means on disk)
    full = _copy(pristine, root / "reference.zarr")
    sdata.path = full
    assert set(stp.io.write_back(sdata)) == {"table", *NEW_SHAPES, *NEW_TABLES}
    sdata.path = pristine
    return pristine, sdata, original, read_zarr(full)


def _copy(pristine: Path, dest: Path) -> Path:
    shutil.copytree(pristine, dest)
    return dest


def _fork(job) -> tuple[int, int]:
    """Run ``job()`` in a forked child; returns (pid, read end of a pipe the child writes b'g' to when ready)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            os.close(r)
            job(w)
            code = 0
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
            with contextlib.suppress(OSError):
                os.write(w, b"E")
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def _wait(pid: int, timeout: float = CHILD_TIMEOUT_S) -> int:
    """Wait for the child; returns its wait status (kills it and fails past the timeout)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"child {pid} hung")


def _writer(sdata, store: Path, kill_at: int | str | None = None):
    def job(w: int) -> None:
        if kill_at is not None:
            os.environ[KILL_ENV] = str(kill_at)
        sdata.path = store
        os.write(w, b"g")
        stp.io.write_back(sdata)

    return job


def _wait_ready(r: int) -> None:
    got = os.read(r, 1)
    os.close(r)
    assert got == b"g", "the writer child failed before writing"


def _equal_tables(a, b, *, layers: bool = False) -> None:
    x, y = a.X, b.X
    x = x.toarray() if hasattr(x, "toarray") else np.asarray(x)
    y = y.toarray() if hasattr(y, "toarray") else np.asarray(y)
    np.testing.assert_array_equal(x, y)
    # the new version of a table may add columns (var["predicted"]); the columns of ``b`` stay equal
    pd.testing.assert_frame_equal(a.obs[b.obs.columns], b.obs)
    pd.testing.assert_frame_equal(a.var[b.var.columns], b.var)
    if layers:
        pd.testing.assert_frame_equal(a.obs, b.obs)
        pd.testing.assert_frame_equal(a.var, b.var)
        assert set(a.layers) == set(b.layers)
        for k in a.layers:
            np.testing.assert_array_equal(np.asarray(a.layers[k]), np.asarray(b.layers[k]))


def _equal_shapes(a, b) -> None:
    assert len(a) == len(b)
    assert a.index.equals(b.index)
    assert a.geometry.geom_equals(b.geometry).all()
    pd.testing.assert_frame_equal(pd.DataFrame(a.drop(columns="geometry")), pd.DataFrame(b.drop(columns="geometry")))


def _check_store(store: Path, original, new, *, images: bool = False) -> dict[str, bool]:
    """Every original element equal to before; every new one absent or equal to its uninterrupted write.

    Images are never written by write_back; reading them (~1 s) is checked where ``images``.
    """
    from spatialdata import read_zarr

    back = read_zarr(store) if images else read_zarr(store, selection=("shapes", "tables"))
    assert set(original.tables) <= set(back.tables), f"an original table is missing: {sorted(back.tables)}"
    assert set(original.shapes) <= set(back.shapes), f"original shapes are missing: {sorted(back.shapes)}"
    for k in original.tables:
        _equal_tables(back.tables[k], original.tables[k])
        if set(back.tables[k].layers) != set(original.tables[k].layers):  # the new version, whole
            _equal_tables(back.tables[k], new.tables[k], layers=True)
    for k in original.shapes:
        _equal_shapes(back.shapes[k], original.shapes[k])
    present = {}
    for k in NEW_TABLES:
        present[k] = k in back.tables
        if present[k]:
            _equal_tables(back.tables[k], new.tables[k], layers=True)
    for k in NEW_SHAPES:
        present[k] = k in back.shapes
        if present[k]:
            _equal_shapes(back.shapes[k], new.shapes[k])
    if images:
        np.testing.assert_array_equal(
            np.asarray(back.images["he"]["scale0"].image[:, :4, :4]),
            np.asarray(original.images["he"]["scale0"].image[:, :4, :4]),
        )
    return present


def _kill_and_check(
    built, store: Path, *, delay: float | None = None, kill_at: int | str | None = None
) -> tuple[bool, float]:
    """One case; returns whether the kill landed before the write finished, and the writer's run time."""
    _, sdata, original, reference = built
    pid, r = _fork(_writer(sdata, store, kill_at))
    _wait_ready(r)
    t0 = time.perf_counter()
    if delay is not None:
        time.sleep(delay)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    status = _wait(pid)
    ran = time.perf_counter() - t0
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert killed or os.waitstatus_to_exitcode(status) == 0, f"the writer failed (status {status})"
    # what a reader sees right after the kill, before any recovery
    _check_store(store, original, reference)
    stp.io.recover(store)
    after = _check_store(store, original, reference, images=delay is None and kill_at is None)
    assert not (store / WORK_DIR).exists(), "recovery left the work folder"
    # after recovery the write happened whole or not at all
    assert all(after.values()) or not any(after.values()), after
    assert killed or all(after.values())
    return killed, ran


def test_write_back_survives_sigkill_at_20_moments(built, tmp_path):
    pristine = built[0]
    # an uninterrupted write measures T
    killed, duration = _kill_and_check(built, _copy(pristine, tmp_path / "full.zarr"))
    assert not killed
    landed = 0
    for i in range(N_TIMED_KILLS):
        store = _copy(pristine, tmp_path / f"k{i}.zarr")
        landed += _kill_and_check(built, store, delay=(i + 0.5) * duration / N_TIMED_KILLS)[0]
    print(f"write T={duration:.2f}s; {landed}/{N_TIMED_KILLS} kills landed mid-write; all stores intact")
    assert landed >= N_TIMED_KILLS // 2


@pytest.mark.slow  # ~20 s more on a busy 2-core machine: every protocol step, deterministically
def test_write_back_survives_sigkill_at_every_step(built, tmp_path):
    pristine = built[0]
    step = 0
    while True:
        step += 1
        store = _copy(pristine, tmp_path / f"s{step}.zarr")
        if not _kill_and_check(built, store, kill_at=step)[0]:
            break
        assert step < 40
    # 3 elements staged, journal, 3 swaps, consolidation, journal removed, cleaned: killed at each of them
    assert step - 1 == 10


def test_recovery_then_write_back_completes(built, tmp_path):
    from spatialdata import read_zarr

    pristine, sdata, original, reference = built
    store = _copy(pristine, tmp_path / "r.zarr")
    pid, r = _fork(_writer(sdata, store, kill_at="swapped:spots_ps4"))
    _wait_ready(r)
    assert os.WIFSIGNALED(_wait(pid))
    assert (store / WORK_DIR / LOCK_NAME).exists()  # a stale lock: its pid is dead
    sdata.path = store
    try:
        # write_back breaks the stale lock, finishes the interrupted write, then writes what is still to write
        assert set(stp.io.write_back(sdata)) == {"table", "ridge_spots_ps4"}  # spots_ps4: now on disk
    finally:
        sdata.path = pristine
    assert not (store / WORK_DIR).exists()
    back = read_zarr(store)
    assert set(back.tables) == {"table", "ridge_spots_ps4"}
    _equal_tables(back.tables["table"], reference.tables["table"], layers=True)
    _equal_tables(back.tables["table"], original.tables["table"])


def test_second_writer_is_refused_with_the_lock_file_named(built, tmp_path):
    pristine, sdata, *_ = built
    store = _copy(pristine, tmp_path / "c.zarr")
    go_r, go_w = os.pipe()

    def holder(w: int) -> None:  # the lock write_back takes, held by another process
        with StoreLock(store):
            os.write(w, b"g")
            os.read(go_r, 1)

    pid, r = _fork(holder)
    _wait_ready(r)
    lock = store / WORK_DIR / LOCK_NAME
    sdata.path = store
    try:
        with pytest.raises(stp.io.StoreLockedError, match=rf"pid {pid} on host .*{lock.name}.*delete") as e:
            stp.io.write_back(sdata)
        assert str(lock) in str(e.value)
        assert {p.name for p in (store / "tables").iterdir()} == {"table", "zarr.json"}
        with pytest.raises(stp.io.StoreLockedError):
            stp.io.recover(store)
        os.write(go_w, b"x")
        assert os.waitstatus_to_exitcode(_wait(pid)) == 0
        assert not lock.exists()
        assert "ridge_spots_ps4" in stp.io.write_back(sdata)
    finally:
        sdata.path = pristine
        os.close(go_r)
        os.close(go_w)


def test_lock_of_another_host_is_refused(built, tmp_path):
    pristine, sdata, *_ = built
    store = _copy(pristine, tmp_path / "h.zarr")
    lock = store / WORK_DIR / LOCK_NAME
    lock.parent.mkdir()
    lock.write_text(json.dumps({"pid": 1, "host": socket.gethostname() + "-elsewhere", "time": "then"}))
    sdata.path = store
    try:
        with pytest.raises(stp.io.StoreLockedError, match="elsewhere"):
            stp.io.write_back(sdata)
    finally:
        sdata.path = pristine
    assert lock.exists()


def _snapshot(store: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(store)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(store.rglob("*"))}


def test_read_only_store_is_refused_and_unchanged(built):
    pristine, sdata, *_ = built
    base = Path(tempfile.mkdtemp(prefix="stp-ro-"))
    try:
        base.chmod(0o755)
        store = _copy(pristine, base / "ro.zarr")
        for p in [store, *store.rglob("*")]:
            p.chmod(0o555 if p.is_dir() else 0o444)
        before = _snapshot(store)
        if os.geteuid() == 0:  # root writes anywhere: try as nobody, in a child
            msg_r, msg_w = os.pipe()

            def job(w: int) -> None:
                os.setgid(65534)
                os.setuid(65534)
                sdata.path = store
                os.write(w, b"g")
                try:
                    stp.io.write_back(sdata)
                except PermissionError as e:
                    os.write(msg_w, str(e).encode()[:4000])
                    return
                os.write(msg_w, b"no error")

            pid, r = _fork(job)
            _wait_ready(r)
            assert os.waitstatus_to_exitcode(_wait(pid)) == 0
            os.close(msg_w)
            message = os.read(msg_r, 8192).decode()
            os.close(msg_r)
        else:
            sdata.path = store
            try:
                with pytest.raises(PermissionError) as e:
                    stp.io.write_back(sdata)
                message = str(e.value)
            finally:
                sdata.path = pristine
        assert "Cannot write into" in message
        assert "Nothing was changed" in message
        assert _snapshot(store) == before
    finally:
        for p in [base, *base.rglob("*")]:
            with contextlib.suppress(OSError):
                p.chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
