"""Cohort verbs: one task per store, resumable, a failing slide isolated, a dying worker survived."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import threading
import time
from typing import TYPE_CHECKING

import numpy as np
import pytest
import spatialdata as sd
from _dask import local_cluster

import stpredict as stp

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture(scope="module")
def _pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    path = root / "pristine.zarr"
    stp.datasets.synthetic(image_size=512, n_genes=5, seed=0).write(path)
    return path


@pytest.fixture
def stores(_pristine, tmp_path):
    """Four copies of one synthetic slide's store."""
    out = []
    for i in range(4):
        dst = tmp_path / f"slide{i}.zarr"
        shutil.copytree(_pristine, dst)
        out.append(dst)
    return out


def _tree(path: Path) -> dict[str, str]:
    """Every file of a store with the hash of its bytes."""
    return {
        str(p.relative_to(path)): hashlib.sha1(p.read_bytes(), usedforsecurity=False).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def _embeddings_record(path: Path) -> tuple[dict, np.ndarray]:
    table = sd.read_zarr(path).tables["table"]
    return dict(table.uns["stpredict"]["embeddings"]["X_handcrafted"]), np.asarray(table.obsm["X_handcrafted"])


def test_embed_cohort_writes_each_store_and_a_rerun_reuses_them(stores):
    status = stp.tl.embed_cohort(stores, progress=False)
    assert list(status.columns) == ["slide", "status", "seconds", "n_spots", "worker", "error"]
    assert list(status["status"]) == ["done"] * 4
    assert list(status["slide"]) == [str(p.resolve()) for p in stores]
    rec, emb = _embeddings_record(stores[2])
    assert emb.shape[0] == status["n_spots"][2] and np.isfinite(emb).all()
    assert rec["stpredict_version"] == stp.__version__
    # the same features as the in-memory verb
    mem = stp.datasets.synthetic(image_size=512, n_genes=5, seed=0)
    stp.tl.embed(mem, progress=False)
    np.testing.assert_allclose(emb, mem.tables["table"].obsm["X_handcrafted"], rtol=1e-5, atol=1e-6)

    again = stp.tl.embed_cohort(stores, progress=False)
    assert list(again["status"]) == ["cached"] * 4
    assert _embeddings_record(stores[2])[0]["seconds"] == rec["seconds"]  # not recomputed
    # other parameters are another cache entry: recomputed
    wider = stp.tl.embed_cohort(stores[:1], patch_size_um=80, progress=False)
    assert list(wider["status"]) == ["done"]


def test_a_corrupt_store_fails_alone_and_is_left_as_it_was(stores):
    bad = stores[1]
    (bad / "tables" / "table" / "zarr.json").write_text("{ not json")
    before = _tree(bad)
    status = stp.tl.embed_cohort(stores, progress=False)
    assert list(status["status"]) == ["done", "failed", "done", "done"]
    row = status.iloc[1]
    assert row["slide"] == str(bad.resolve()) and row["error"]
    assert _tree(bad) == before
    for p in (stores[0], stores[2], stores[3]):
        assert "X_handcrafted" in sd.read_zarr(p).tables["table"].obsm
    with pytest.raises(stp.tl.CohortError, match="1 of 4 slides failed") as info:
        stp.tl.embed_cohort(stores, progress=False, raise_on_error=True)
    assert list(info.value.status["status"]) == ["cached", "failed", "cached", "cached"]


def test_missing_store_and_in_memory_slide(stores, tmp_path):
    mem = stp.datasets.synthetic(image_size=512, n_genes=5, seed=1)
    status = stp.tl.embed_cohort([stores[0], tmp_path / "absent.zarr", mem], progress=False)
    assert list(status["status"]) == ["done", "failed", "done"]
    assert "does not exist" in status["error"][1]
    assert status["slide"][2] == "sdata[2]"
    assert "X_handcrafted" in mem.tables["table"].obsm


def test_bad_cohort_input_is_refused_before_any_work(stores):
    with pytest.raises(ValueError, match="empty"):
        stp.tl.embed_cohort([], progress=False)
    with pytest.raises(TypeError, match=r"slides\[1\] is a int"):
        stp.tl.embed_cohort([stores[0], 3], progress=False)
    with pytest.raises(ValueError, match="more than once: two tasks would write into the same store"):
        stp.tl.embed_cohort([stores[0], str(stores[0])], progress=False)
    # reading verbs say why a repeated slide is wrong for them: counted twice, held out while trained on
    with pytest.raises(ValueError, match="more than once: the slide would count twice .*held-out"):
        stp.tl.cross_validate([stores[0], stores[1], stores[0]], "ridge", protocol="loso", progress=False)
    with pytest.raises(ValueError, match="more than once: the slide would count twice"):
        stp.tl.fit([stores[0], stores[0]], "ridge", progress=False)
    with pytest.raises(ValueError, match="fitted predictor or a checkpoint"):
        stp.tl.predict_cohort(stores, "ridge", progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        stp.tl.embed_cohort(stores, batch_size=0, progress=False)
    assert not any("X_handcrafted" in sd.read_zarr(p).tables["table"].obsm for p in stores)


def test_fit_on_stores_caches_features_and_predict_cohort_resumes(stores, tmp_path):
    pred = stp.tl.fit(stores[:2], "ridge", progress=False)
    rec, _ = _embeddings_record(stores[0])  # fit wrote the features into the store
    pred2 = stp.tl.fit(stores[:2], "ridge", progress=False)
    assert _embeddings_record(stores[0])[0]["seconds"] == rec["seconds"]  # and the next fit read them
    assert stp.models.digest(pred2) == stp.models.digest(pred)

    ckpt = pred.save(tmp_path / "ridge")
    status = stp.tl.predict_cohort(stores, ckpt, progress=False)
    assert list(status["status"]) == ["done"] * 4
    table = sd.read_zarr(stores[3]).tables["table"]
    got = np.asarray(table.layers["predicted"])
    mem = stp.datasets.synthetic(image_size=512, n_genes=5, seed=0)
    stp.tl.predict(mem, pred, progress=False)
    np.testing.assert_allclose(got, mem.tables["table"].layers["predicted"], rtol=1e-5, atol=1e-5)
    assert table.uns["stpredict"]["predicted"]["model_sha256"] == stp.models.digest(pred)

    assert list(stp.tl.predict_cohort(stores, pred, progress=False)["status"]) == ["cached"] * 4
    other = stp.tl.fit(stores[:2], "ridge", alphas=[10.0], progress=False)
    assert list(stp.tl.predict_cohort(stores[:1], other, progress=False)["status"]) == ["done"]


@pytest.fixture(scope="module")
def client():
    pytest.importorskip("distributed")
    with local_cluster() as (_, c):
        yield c


def test_cohort_on_a_local_cluster(stores, client):
    # DataLoader workers cannot start inside Dask's (daemonic) worker processes: the stores are read there
    pred = stp.tl.fit(stores[:2], "ridge", client=client, num_workers=2, dense=False, progress=False)
    status = stp.tl.embed_cohort(stores, client=client, dense=False, progress=False)
    assert list(status["status"]) == ["cached"] * 2 + ["done"] * 2
    assert set(status["worker"]) <= set(client.scheduler_info()["workers"])
    status = stp.tl.predict_cohort(stores, pred, client=client, progress=False)
    assert list(status["status"]) == ["done"] * 4
    assert list(stp.tl.embed_cohort(stores, client=client, dense=False, progress=False)["status"]) == ["cached"] * 4


def test_a_killed_worker_does_not_lose_the_run(stores, tmp_path):
    pytest.importorskip("distributed")
    more = []
    for i in range(4, 8):
        more.append(tmp_path / f"slide{i}.zarr")
        shutil.copytree(stores[0], more[-1])
    cohort = stores + more
    with local_cluster() as (cluster, client):
        result = {}
        runner = threading.Thread(
            target=lambda: result.update(status=stp.tl.embed_cohort(cohort, client=client, progress=False))
        )
        runner.start()
        killed = None
        deadline = time.monotonic() + 60
        while killed is None and runner.is_alive() and time.monotonic() < deadline:
            busy = [w for w, tasks in client.processing().items() if tasks]
            if busy:
                nanny = next(n for n in cluster.workers.values() if n.worker_address == busy[0])
                os.kill(nanny.process.process.pid, signal.SIGKILL)
                killed = busy[0]
            time.sleep(0.01)
        runner.join(timeout=120)
        assert killed is not None, "no task was seen running"
        status = result["status"]
    # the slides the dead worker held were rescheduled onto the others (the nanny restarts it meanwhile)
    assert list(status["status"]) == ["done"] * len(cohort), status
    # and had any been lost, a rerun would do only those
    rerun = stp.tl.embed_cohort(cohort, progress=False)
    assert set(rerun["status"]) <= {"cached", "done"}
    missing = set(status.index[status["status"] != "done"])
    assert set(rerun.index[rerun["status"] == "done"]) <= missing


def test_fit_on_a_store_that_refuses_the_cache_still_fits(stores, caplog):
    import json
    import socket

    lock = stores[0] / ".stpredict-write" / "lock"
    lock.parent.mkdir()
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "token": "someone else"}))
    pred = stp.tl.fit(stores[:1], "ridge", progress=False)
    assert pred.is_fitted
    assert "were not cached in the store" in caplog.text
    assert "X_handcrafted" not in sd.read_zarr(stores[0]).tables["table"].obsm
