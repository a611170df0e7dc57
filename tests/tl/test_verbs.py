from __future__ import annotations

import numpy as np
import pytest

import stpredict as stp


def _state(sdata):
    """A cheap fingerprint of everything a verb could modify."""
    out = {k: ("shapes", len(v)) for k, v in sdata.shapes.items()}
    for k, t in sdata.tables.items():
        out[k] = ("table", t.shape, sorted(t.layers), sorted(t.obsm), sorted(t.var.columns), sorted(t.uns))
    return out


def test_predict_writes_layers_and_record(sdata_syn):
    stp.tl.predict(sdata_syn, "ridge", progress=False)
    t = sdata_syn.tables["table"]
    pred = t.layers["predicted"]
    assert pred.dtype == np.float32
    assert pred.shape == t.shape
    panel = t.var["predicted"].to_numpy()
    assert panel.sum() == t.n_vars  # 12 genes < 50: all detected genes
    assert np.isfinite(pred[:, panel]).all()
    assert "predicted_std" in t.layers
    rec = t.uns["stpredict"]["predicted"]
    assert rec["mode"] == "out-of-fold"
    assert rec["output_space"].startswith("log1p")
    assert len(rec["oof_fold"]) == t.n_obs
    assert t.obsm["X_handcrafted"].shape == (t.n_obs, 54)
    scores = stp.tl.evaluate(sdata_syn)
    stp.tl.predict(sdata_syn, "mean", key_added="mean", progress=False)
    floor = stp.tl.evaluate(sdata_syn, key="mean")
    # the image carries the signal on the synthetic slide: far above the training mean (~30 spots only)
    assert scores.attrs["summary"]["mean"] > floor.attrs["summary"]["mean"] + 0.2


def test_predictions_are_out_of_fold(sdata_syn):
    """A model that copies the nearest measured spot would reproduce each spot exactly if it were in sample."""
    stp.tl.predict(sdata_syn, "copy", key_added="copy", progress=False)
    t = sdata_syn.tables["table"]
    from stpredict.tl._targets import targets

    y, _, _ = targets(t, np.arange(t.n_obs), list(t.var_names), None)
    same = np.isclose(t.layers["copy"], y).all(1)
    assert same.mean() < 0.05


def test_inplace_false_leaves_sdata_untouched(sdata_syn):
    before = _state(sdata_syn)
    out = stp.tl.predict(sdata_syn, "ridge", inplace=False, progress=False)
    assert _state(sdata_syn) == before
    assert "predicted" in out.layers
    sr = stp.tl.superresolve(sdata_syn, "ridge", grid="ps4", inplace=False, progress=False)
    assert _state(sdata_syn) == before
    assert set(sr.shapes) == {"spots_ps4"}
    assert set(sr.tables) == {"ridge_spots_ps4"}


def test_bad_input_errors_leave_sdata_unchanged(sdata_syn, tmp_path):
    before = _state(sdata_syn)
    with pytest.raises(KeyError, match="Unknown model 'ridg'.*Registered predictors:.*ridge"):
        stp.tl.predict(sdata_syn, "ridg")
    with pytest.raises(KeyError, match="not measured"):
        stp.tl.predict(sdata_syn, "ridge", genes=["gene_0", "nope"])
    t = sdata_syn.tables["table"]
    X = t.X.copy()
    t.X = t.X.astype(np.float32)
    t.X.data[0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        stp.tl.predict(sdata_syn, "ridge")
    t.X.data[0] = -1
    with pytest.raises(ValueError, match="negative"):
        stp.tl.fit(sdata_syn, "ridge")
    t.X = X
    assert _state(sdata_syn) == before
    # a checkpoint fitted on another backbone
    pred = stp.tl.fit(sdata_syn, "ridge", progress=False, cache_embeddings=False)
    path = pred.save(tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match="same backbone"):
        stp.tl.predict(sdata_syn, str(path), backbone="resnet18")
    assert _state(sdata_syn) == before


def test_fit_needs_counts():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)
    coords = np.array([[50.0 + 20 * i, 60.0] for i in range(6)])
    sdata = stp.io.from_arrays(img, coords, None, 1.0, 10.0)
    with pytest.raises(ValueError, match="empty"):
        stp.tl.fit(sdata, "ridge")


def test_fitted_model_on_he_only_slide(sdata_syn):
    pred = stp.tl.fit(sdata_syn, "ridge", progress=False)
    he_only = stp.datasets.synthetic(image_size=768, n_genes=12, seed=0)
    del he_only.tables["table"]
    stp.tl.predict(he_only, pred, progress=False)
    t = he_only.tables["predictions"]
    assert list(t.var_names) == pred.genes
    assert t.n_obs == len(he_only.shapes["spots"])
    assert np.isfinite(t.X).all()


def test_in_sample_is_flagged(sdata_syn):
    pred = stp.tl.fit(sdata_syn, "ridge", progress=False)
    stp.tl.predict(sdata_syn, pred, progress=False)
    assert bool(sdata_syn.tables["table"].uns["stpredict"]["predicted"]["in_sample"])


def test_embeddings_are_cached_and_reused(sdata_syn, monkeypatch):
    stp.tl.embed(sdata_syn, "handcrafted", progress=False)
    import stpredict.tl._embeddings as inp

    def boom(*a, **k):
        raise AssertionError("recomputed")

    monkeypatch.setattr(inp, "compute_embeddings", boom)  # the windows' path
    monkeypatch.setattr(inp.DenseMaps, "features", boom)  # the dense map's
    stp.tl.predict(sdata_syn, "ridge", progress=False)  # reuses obsm
    with pytest.raises(AssertionError, match="recomputed"):
        stp.tl.predict(sdata_syn, "ridge", patch_size_um=64, progress=False)


def test_superresolve_into_squidpy_and_leiden(sdata_syn, tmp_path):
    import scanpy as sc
    import squidpy as sq
    from spatialdata import read_zarr

    stp.tl.predict(sdata_syn, "ridge", progress=False)
    stp.tl.superresolve(sdata_syn, "ridge", grid="pseudospot4", progress=False)
    stp.tl.superresolve(sdata_syn, "ridge", bin_size=16, progress=False)
    g = sdata_syn.tables["ridge_spots_ps4"]
    assert sdata_syn.shapes["spots_ps4"].shape[0] == g.n_obs
    assert g.X.dtype == np.float32
    assert "predicted_std" in g.layers
    assert g.obsm["spatial"].shape == (g.n_obs, 2)
    assert g.obs["measured"].sum() == sdata_syn.tables["table"].n_obs
    sq.gr.spatial_neighbors_knn(g, n_neighs=6)
    sc.pp.pca(g, n_comps=5)
    sc.pp.neighbors(g)
    sc.tl.leiden(g, flavor="igraph", n_iterations=2, directed=False)
    assert g.obs["leiden"].nunique() > 1
    b = sdata_syn.tables["ridge_spots_bin16um"]
    assert b.uns["stpredict"]["superresolve"]["embeddings"]["path"] == "dense map"
    sdata_syn.write(tmp_path / "r.zarr")
    back = read_zarr(tmp_path / "r.zarr")
    assert {"spots_ps4", "spots_bin16um"} <= set(back.shapes)
    np.testing.assert_array_equal(back.tables["ridge_spots_ps4"].X, g.X)
    assert back.tables["table"].uns["stpredict"]["predicted"]["model"] == "ridge"
    with pytest.raises(ValueError, match="pixels"):
        stp.tl.superresolve(sdata_syn, "ridge", bin_size=1.0)


def test_dense_handcrafted_matches_patch_path(sdata_syn):
    """Grids read the slide's dense map; at the spots it must agree with the per-window features."""
    from stpredict.models import HandcraftedBackbone
    from stpredict.pp._grid import GridPoints
    from stpredict.tl._embedding_loop import compute_embeddings
    from stpredict.tl._embeddings import EmbeddingCache, region_embeddings
    from stpredict.tl._pipeline import Compute

    slide, geo = stp.get.slide_data(sdata_syn), stp.pp.spots(sdata_syn)
    bb = HandcraftedBackbone()
    c = geo.centers
    patch = compute_embeddings(slide.image_levels, c, geo.microns_per_pixel_xy, bb, patch_size_um=112, progress=False)
    for kind, name in (("square", "bin8um"), ("circle", "ps4")):
        pts = GridPoints(name, kind, c, np.array([8.0, 8.0]), 8.0, np.zeros(len(c), int), np.zeros(len(c), bool))
        cache = EmbeddingCache(bb, 112)
        dense, info = region_embeddings(slide, pts, cache, run=Compute(progress=False, dense=True))
        assert info["path"] == "dense map"
        r = [np.corrcoef(patch[:, j], dense[:, j])[0, 1] for j in range(bb.dim) if patch[:, j].std() > 1e-6]
        print(kind, np.min(r), np.median(r))
        assert np.median(r) > 0.95


def test_embedding_seconds_are_counted_per_thread():
    """Folds running in threads of one Dask worker share the inputs' cache: each counts only its own seconds."""
    import pickle
    import threading

    from stpredict.tl._embeddings import EmbeddingCache

    cache = EmbeddingCache(stp.models.get_backbone("handcrafted"), 112.0)
    seen: dict[str, float] = {}
    barrier = threading.Barrier(2)

    def fold(name: str, seconds: float) -> None:
        before = cache.thread_seconds()
        barrier.wait()  # both folds embed at the same time
        cache.add_seconds(seconds)
        barrier.wait()
        seen[name] = cache.thread_seconds() - before

    threads = [threading.Thread(target=fold, args=(n, s)) for n, s in (("a", 1.5), ("b", 2.5))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"a": 1.5, "b": 2.5}
    assert cache.seconds == 4.0 and cache.thread_seconds() == 0.0  # the main thread embedded nothing
    again = pickle.loads(pickle.dumps(cache))  # as a scattered spec reaches a worker
    again.add_seconds(1.0)
    assert again.seconds == 5.0
