"""Dask worker resources: heavy tasks go to GPU workers, one at a time each; a resource no worker has is refused.

The clusters are CPU-only: a worker "has a GPU" because it advertises the resource (``GPU=1``), which is all Dask's
scheduling looks at. When each task ran, and where, is read from Dask's task stream.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np
import pytest
import spatialdata as sd
from _dask import local_cluster, mixed_cluster

import stpredict as stp
from stpredict.tl import _cohort_run
from stpredict.tl._cohort_client import check_resources
from stpredict.tl._cohort_run import run_tasks
from stpredict.tl._options import Compute

if TYPE_CHECKING:
    from pathlib import Path

distributed = pytest.importorskip("distributed")

GPU = {"GPU": 1}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    path = tmp_path_factory.mktemp("resources") / "pristine.zarr"
    stp.datasets.synthetic(image_size=512, n_genes=5, seed=0).write(path)
    return path


def _copies(pristine: Path, where: Path, n: int) -> list[Path]:
    out = [where / f"slide{i}.zarr" for i in range(n)]
    for dst in out:
        shutil.copytree(pristine, dst)
    return out


@pytest.fixture
def stores(pristine, tmp_path):
    """Four copies of one synthetic slide's store."""
    return _copies(pristine, tmp_path, 4)


@pytest.fixture(scope="module")
def gpu_client():
    """Two worker processes of two threads each, both advertising ``GPU=1``."""
    with local_cluster(threads_per_worker=2, resources=GPU) as (_, c):
        yield c


@pytest.fixture(scope="module")
def mixed():
    """``(client, address of its GPU worker)``: one worker with ``GPU=1``, one without."""
    with mixed_cluster() as (_, c, gpu):
        yield c, gpu


def _runs(stream: list[dict], prefix: str) -> dict[str, list[tuple[float, float]]]:
    """``{worker: [(start, stop), ...]}`` of the tasks whose key starts with ``stpredict-<prefix>``."""
    out: dict[str, list[tuple[float, float]]] = {}
    for t in stream:
        if str(t["key"]).startswith(f"stpredict-{prefix}"):
            for s in t["startstops"]:
                if s["action"] == "compute":
                    out.setdefault(t["worker"], []).append((s["start"], s["stop"]))
    return out


def _most_at_once(runs: list[tuple[float, float]], slack: float = 0.2) -> int:
    """Most tasks running at once, each cut short by ``slack`` seconds at both ends.

    A worker shifts its times by its estimate of the scheduler's clock, renewed at each heartbeat: on a loaded
    machine a task may seem to start up to ~0.1 s before the one it followed stopped.
    """
    edges = sorted([(a + slack, 1) for a, _ in runs] + [(b - slack, -1) for _, b in runs])
    now = most = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def _nap(i: int, seconds: float) -> int:
    time.sleep(seconds)
    return i


def _nap_on(client, resources, n: int = 4, seconds: float = 1.0) -> dict[str, list[tuple[float, float]]]:
    outs: dict[int, dict] = {}
    with distributed.get_task_stream(client) as ts:
        run_tasks(
            _nap, list(range(n)), seconds, outs.__setitem__, client=client, remote=list(range(n)),
            resources=resources, progress=False, desc="nap", unit="nap",
        )  # fmt: skip
    assert [outs[i]["value"] for i in range(n)] == list(range(n))
    return _runs(ts.data, "nap")


def _tree(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha1(p.read_bytes(), usedforsecurity=False).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def test_gpu_workers_run_one_heavy_task_at_a_time(gpu_client, stores, pristine, tmp_path):
    auto = check_resources(gpu_client, None, "t")
    assert auto == GPU
    # a worker of two threads runs two tasks at once, unless each asks for the worker's one GPU
    assert max(_most_at_once(r) for r in _nap_on(gpu_client, {}).values()) == 2
    assert max(_most_at_once(r) for r in _nap_on(gpu_client, auto).values()) == 1

    serial = _copies(pristine, tmp_path / "serial", 1)  # the stores are copies of one slide
    stp.tl.embed_cohort(serial, dense=False, progress=False)
    want = sd.read_zarr(serial[0]).tables["table"].obsm["X_handcrafted"]
    with distributed.get_task_stream(gpu_client) as ts:
        status = stp.tl.embed_cohort(stores, client=gpu_client, dense=False, progress=False)
    assert list(status["status"]) == ["done"] * 4
    assert status.attrs["resources"] == GPU
    runs = _runs(ts.data, "embed_cohort")
    assert sum(map(len, runs.values())) == 4
    assert all(_most_at_once(r) == 1 for r in runs.values())
    assert set(status["worker"]) == set(runs)
    for path in stores:
        np.testing.assert_array_equal(sd.read_zarr(path).tables["table"].obsm["X_handcrafted"], want)


def test_a_mixed_cluster_sends_every_heavy_task_to_its_gpu_worker(mixed, stores):
    client, gpu = mixed
    with distributed.get_task_stream(client) as ts:
        pred = stp.tl.fit(stores[:2], "ridge", client=client, dense=False, progress=False)
        status = stp.tl.embed_cohort(stores[:3], client=client, dense=False, progress=False)
        predicted = stp.tl.predict_cohort(stores[3:], pred, client=client, progress=False)
        cv = stp.tl.cross_validate(stores[:2], "ridge", protocol="loso", n_genes=4, client=client, progress=False)
    assert list(status["status"]) == ["cached"] * 2 + ["done"]
    assert list(predicted["status"]) == ["done"]
    assert set(status["worker"]) == set(predicted["worker"]) == {gpu}
    assert status.attrs["resources"] == predicted.attrs["resources"] == pred.training["resources"] == GPU
    assert cv.params["resources"] == GPU and len(cv.folds) == 2
    # fit's and cross_validate's embedding tasks are embed_cohort's
    for verb, n in (("embed_cohort", 2 + 3 + 2), ("predict_cohort", 1), ("cross_validate", 2)):
        runs = _runs(ts.data, verb)
        assert set(runs) == {gpu} and sum(map(len, runs.values())) == n, verb
    # resources={} lets any worker take them, as without a GPU worker
    assert set(_nap_on(client, {}, seconds=0.3)) == set(client.scheduler_info(n_workers=-1)["workers"])


def _pretend_cuda(on: bool) -> None:
    import torch

    real = getattr(torch.cuda, "_stp_real_is_available", torch.cuda.is_available)
    torch.cuda._stp_real_is_available = real
    torch.cuda.is_available = (lambda: True) if on else real


def _device_of(i: int, run: Compute) -> str:
    from stpredict.models._device import resolve_device

    return str(resolve_device(run.device))


def test_the_default_device_is_chosen_on_the_worker_that_runs_the_task(mixed):
    """``device=None`` travels unresolved and is resolved where the task runs: CUDA on a (pretend) CUDA worker."""
    client, gpu = mixed
    run = Compute(None, None, None, progress=False, dense=None)  # what the verbs send with device=None
    outs: dict[int, dict] = {}
    client.run(_pretend_cuda, True, workers=[gpu])
    try:
        run_tasks(
            _device_of, [0, 1], run, outs.__setitem__, client=client, remote=[0, 1], resources=GPU, progress=False,
            desc="device", unit="task",
        )  # fmt: skip
    finally:
        client.run(_pretend_cuda, False, workers=[gpu])
    assert [(o["value"], o["worker"]) for o in outs.values()] == [("cuda", gpu)] * 2


def test_a_resource_no_worker_holds_is_refused_before_any_work(mixed, stores, monkeypatch):
    client, _ = mixed
    pred = stp.tl.fit(stores[:1], "ridge", progress=False)
    monkeypatch.setattr(_cohort_run, "_submit", lambda *a, **k: pytest.fail("tasks submitted"))
    before = {p: _tree(p) for p in stores}
    calls = {
        "embed_cohort": lambda c, r: stp.tl.embed_cohort(stores, client=c, resources=r, progress=False),
        "predict_cohort": lambda c, r: stp.tl.predict_cohort(stores, pred, client=c, resources=r, progress=False),
        "fit": lambda c, r: stp.tl.fit(stores, "ridge", client=c, resources=r, progress=False),
        "cross_validate": lambda c, r: stp.tl.cross_validate(
            stores, "ridge", protocol="loso", client=c, resources=r, progress=False
        ),
    }
    for verb, call in calls.items():
        for asked, held in (({"TPU": 1}, "TPU=1"), ({"GPU": 2}, "GPU=2")):
            with pytest.raises(
                ValueError, match=f"{verb}: resources=.*none of the client's 2 workers holds {held}"
            ) as e:
                call(client, asked)
            text = str(e.value)
            assert f'--resources "{held}"' in text and "advertise: GPU=1" in text and "drop resources=" in text
        with pytest.raises(ValueError, match=f"{verb}: resources= is for the tasks sent to a Dask client"):
            call(None, GPU)
    assert before == {p: _tree(p) for p in stores}


def _fake(*workers: dict) -> SimpleNamespace:
    info = {"workers": {f"tcp://w{i}": {"resources": w} for i, w in enumerate(workers)}}
    return SimpleNamespace(scheduler_info=lambda n_workers=5: info)


def test_the_default_and_checks_of_resources():
    assert check_resources(None, None, "v") is None
    assert check_resources(_fake({}, {}), None, "v") == {}  # no GPU worker: any worker, as before
    assert check_resources(_fake({}, {"GPU": 1}), None, "v") == GPU
    assert check_resources(_fake({"GPU": 0.5}), None, "v") == {}
    assert check_resources(_fake({}, {}), {}, "v") == {}
    assert check_resources(_fake({"GPU": 2, "MEM": 8}), {"GPU": 1, "MEM": 4.5}, "v") == {"GPU": 1, "MEM": 4.5}
    assert check_resources(_fake({"GPU": 1}), {"GPU": np.int64(1)}, "v") == GPU  # numpy numbers, kept as plain ones
    with pytest.raises(ValueError, match="none of the client's 2 workers holds GPU=1 MEM=4"):
        check_resources(_fake({"GPU": 1}, {"MEM": 8}), {"GPU": 1, "MEM": 4}, "v")  # no one worker holds both
    with pytest.raises(ValueError, match="none of the client's 0 workers.*advertise: nothing"):
        check_resources(_fake(), GPU, "v")
    with pytest.raises(TypeError, match='resources must be a mapping such as {"GPU": 1}'):
        check_resources(_fake({}), "GPU", "v")
    for bad in ({"GPU": 0}, {"GPU": -1}, {"GPU": True}, {"GPU": float("nan")}, {"": 1}, {1: 1}, {"GPU": "1"}):
        with pytest.raises(ValueError, match="maps a resource name to the positive amount"):
            check_resources(_fake({"GPU": 1}), bad, "v")
    with pytest.raises(ValueError, match="v: resources= is for the tasks sent to a Dask client"):
        check_resources(None, {}, "v")
