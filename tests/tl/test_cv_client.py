"""``cross_validate(..., client=)``: one task per fold on a Dask ``LocalCluster``, the same result as serially.

The cluster (2 worker processes, 1 thread each) is started once for the module; the slides are small synthetic
ones, so each call takes seconds. Equality is checked on everything but the seconds and where the tasks ran: the
scores, the folds' rows, the splits, the genes and the parameters.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import spatialdata as sd
from _dask import local_cluster

import stpredict as stp

distributed = pytest.importorskip("distributed")

SECONDS = ["fit_seconds", "predict_seconds"]


def _synthetic(seed: int, size: int = 768, *, embed: bool = True):
    """A small synthetic slide (31 spots at 768 px, 13 at 512), its image in memory, its spots embedded unless told."""
    from stpredict._image import replace_levels

    sdata = stp.datasets.synthetic(image_size=size, n_genes=12, seed=seed)
    tree = sdata.images["he"]  # rendered once, not at every read (the synthetic image is a lazy graph)
    replace_levels(
        tree,
        {n: np.asarray(next(iter(tree[n].ds.data_vars.values())).data.compute()) for n in tree.children},
        chunks=512,
    )
    if embed:
        stp.tl.embed(sdata, progress=False)
    return sdata


@pytest.fixture(scope="module")
def slides():
    """Three small slides, never modified by cross_validate."""
    return [_synthetic(s) for s in (0, 1, 2)]


@pytest.fixture(scope="module")
def client():
    with local_cluster() as (_, c):
        yield c


def _assert_same(a: stp.tl.CVResult, b: stp.tl.CVResult, *, exact: bool = True) -> None:
    """Two results equal up to the seconds (``exact=False``: scores to float tolerance)."""
    if exact:
        pd.testing.assert_frame_equal(a.scores, b.scores)
    else:
        pd.testing.assert_frame_equal(a.scores, b.scores, check_exact=False, rtol=1e-4, atol=1e-6)
    pd.testing.assert_frame_equal(
        a.folds.drop(columns=SECONDS), b.folds.drop(columns=SECONDS), check_exact=exact, rtol=1e-4
    )
    assert a.splits == b.splits
    assert a.genes == b.genes
    skip = ("embed_seconds", "resources")  # the resources the workers' tasks asked for (None without a client)
    assert {k: v for k, v in a.params.items() if k not in skip} == {k: v for k, v in b.params.items() if k not in skip}
    where = ["seconds", "worker"]
    pd.testing.assert_frame_equal(a.failures.drop(columns=where), b.failures.drop(columns=where))


@pytest.mark.parametrize(("protocol", "n_folds"), [("loso", 3), ("pool", 2)])
def test_folds_on_a_client_equal_the_serial_ones(slides, client, protocol, n_folds, caplog):
    # stain="none": the slides' own features are read (Macenko, the default, embeds each fold's normalised slides)
    kw = {"protocol": protocol, "seed": 3, "n_genes": 6, "progress": False, "stain": "none"}
    serial = stp.tl.cross_validate(slides[:n_folds], "ridge", **kw)
    with caplog.at_level(logging.INFO, logger="stpredict"):
        on_dask = stp.tl.cross_validate(slides[:n_folds], "ridge", client=client, **kw)
    assert len(on_dask.folds) == n_folds and on_dask.failures.empty
    _assert_same(serial, on_dask)
    assert "dashboard" in caplog.text  # the dashboard link is logged
    for f in range(n_folds):
        assert f"fold {f}" in caplog.text  # each fold's line is logged here, not only in a worker's log
    assert on_dask.params["embed_seconds"] == 0.0  # the slides' own features were read, not recomputed


def test_a_torch_model_trains_in_the_workers(slides, client):
    """NSL reads pixels: each fold's network is trained on a worker, from the same seed, to the same scores."""
    kw = {"protocol": "hide", "fraction": 0.5, "seed": 0, "max_epochs": 2, "n_genes": 4, "progress": False}
    serial = stp.tl.cross_validate(slides[:2], "nsl", **kw)
    on_dask = stp.tl.cross_validate(slides[:2], "nsl", client=client, **kw)
    assert len(on_dask.folds) == 2
    _assert_same(serial, on_dask, exact=False)  # torch's CPU kernels may sum in another order with other threads


@pytest.mark.slow
def test_per_fold_stains_on_the_workers(client):
    """With a stain method each fold normalises and embeds its slides on its worker (and its re-stained copies)."""
    few = [_synthetic(s, size=512, embed=False) for s in (0, 1, 2)]
    kw = {"protocol": "loso", "stain": "macenko", "feature_norm": "slide", "stain_augment": 1, "n_genes": 4}
    serial = stp.tl.cross_validate(few, "ridge", progress=False, **kw)
    on_dask = stp.tl.cross_validate(few, "ridge", client=client, progress=False, **kw)
    _assert_same(serial, on_dask)
    assert on_dask.params["embed_seconds"] > 0  # the workers' embedding time is counted


@pytest.fixture(scope="module")
def raw():
    """Three smaller slides without features."""
    return [_synthetic(s, size=512, embed=False) for s in (0, 1, 2)]


@pytest.fixture
def stores(tmp_path_factory, raw):
    root = tmp_path_factory.mktemp("cv_stores")
    out = []
    for i, s in enumerate(raw):
        out.append(root / f"slide{i}.zarr")
        s.write(out[-1])
    return out


def test_stores_are_embedded_once_on_the_workers_and_read_there(stores, raw, client):
    # stain="none" (the default on a client with stores, as in fit) for the serial calls too
    kw = {"protocol": "loso", "seed": 0, "n_genes": 4, "progress": False, "stain": "none"}
    on_dask = stp.tl.cross_validate(stores, "ridge", client=client, **kw)
    assert on_dask.params["embed_seconds"] > 0  # the workers' embedding time
    # embed_cohort ran first on the workers and cached the features in each store (as fit(client=) does)
    for p in stores:
        table = sd.read_zarr(p).tables["table"]
        assert "X_handcrafted" in table.obsm and np.isfinite(np.asarray(table.obsm["X_handcrafted"])).all()
    # serially on the same stores (reading those features): the same result, bit for bit
    serial = stp.tl.cross_validate(stores, "ridge", **kw)
    assert serial.params["embed_seconds"] == 0.0
    _assert_same(serial, on_dask)
    # and the in-memory slides, embedded here: the same up to the features' float rounding
    in_memory = stp.tl.cross_validate(raw, "ridge", **kw)
    _assert_same(in_memory, on_dask, exact=False)
    assert all("X_handcrafted" not in s.tables["table"].obsm for s in raw)  # in memory: never written
    # a second call finds the features in the stores: nothing left to embed
    again = stp.tl.cross_validate(stores, "ridge", client=client, **kw)
    assert again.params["embed_seconds"] == 0.0
    _assert_same(again, on_dask)


@pytest.fixture(scope="module")
def uneven():
    """hide_spots with fraction 0.9 leaves the 13-spot slide 2 training spots (no gene detected: fold 0 fails)."""
    return [_synthetic(0, size=512), _synthetic(1, size=1024)]


@pytest.mark.parametrize("on_dask", [False, True], ids=["serial", "client"])
def test_a_failing_fold(uneven, client, on_dask, caplog):
    kw = {"protocol": "hide", "fraction": 0.9, "seed": 0, "progress": False, "client": client if on_dask else None}
    # the default: the fold's own error, as cross_validate always raised it
    with pytest.raises(ValueError, match=r"fold 0 .*no gene is detected.*smaller fraction"):
        stp.tl.cross_validate(uneven, "mean", **kw)
    # raise_on_error=False: a warning, the other folds scored, the failure in its own table
    with caplog.at_level(logging.WARNING, logger="stpredict"):
        res = stp.tl.cross_validate(uneven, "mean", raise_on_error=False, **kw)
    assert "fold 0 (test slide spots#0) failed: ValueError" in caplog.text
    assert list(res.failures.columns) == ["fold", "slide", "seconds", "worker", "error"]
    assert res.failures["fold"].tolist() == [0] and res.failures["slide"].tolist() == ["spots#0"]
    assert res.failures["error"][0].startswith("ValueError: cross_validate fold 0 (hide_spots")
    assert res.folds["fold"].tolist() == [1] and set(res.scores["fold"]) == {1}
    assert [s.fold for s in res.splits] == [1] and list(res.genes) == [1]
    assert "1 failed" in repr(res)
    if on_dask:
        assert res.failures["worker"][0] in client.scheduler_info()["workers"]
        _assert_same(stp.tl.cross_validate(uneven, "mean", raise_on_error=False, **{**kw, "client": None}), res)


def test_every_fold_failing_gives_empty_tables(uneven):
    res = stp.tl.cross_validate(uneven[:1], "mean", protocol="hide", fraction=0.9, raise_on_error=False, progress=False)
    assert res.scores.empty and res.folds.empty and len(res.failures) == 1
    ok = stp.tl.cross_validate(uneven[1:], "mean", protocol="hide", fraction=0.5, progress=False)
    assert list(res.scores.columns) == list(ok.scores.columns)
    assert list(res.folds.columns) == list(ok.folds.columns)
    assert np.isnan(res.summary()["pcc_mean"])


def test_the_client_is_checked_at_the_door(slides, stores, monkeypatch):
    from stpredict.tl import _cohort

    monkeypatch.setattr(_cohort, "embed_cohort", lambda *a, **k: pytest.fail("work before the checks"))
    before = {p.name: sorted(q.name for q in p.rglob("*")) for p in stores}
    for bad in ("tcp://127.0.0.1:8786", object()):
        with pytest.raises(TypeError, match="client must be a dask.distributed.Client"):
            stp.tl.cross_validate(stores, "ridge", protocol="loso", client=bad, progress=False)
    with pytest.raises(TypeError, match="raise_on_error must be True or False"):
        stp.tl.cross_validate(slides, "ridge", protocol="loso", raise_on_error="no", progress=False)
    assert before == {p.name: sorted(q.name for q in p.rglob("*")) for p in stores}
    # store paths are checked like the cohort verbs' (before any work)
    missing = stores[0].parent / "absent.zarr"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        stp.tl.cross_validate([stores[0], missing], "ridge", protocol="loso", progress=False)
