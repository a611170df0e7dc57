"""Every function of :mod:`stpredict.metrics` against scipy / scikit-learn / scikit-image on known cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.stats import ConstantInputWarning, pearsonr, spearmanr
from skimage.metrics import structural_similarity
from sklearn.metrics import (
    adjusted_rand_score,
    mean_absolute_error,
    mean_squared_error,
    normalized_mutual_info_score,
)

from stpredict import metrics as M

PAIR_FUNCS = [M.pearson_per_gene, M.spearman_per_gene, M.mse_per_gene, M.mae_per_gene]


@pytest.fixture
def pair():
    """Truth and a noisy prediction: 40 spots × 6 genes."""
    rng = np.random.default_rng(0)
    t = rng.gamma(2.0, 1.0, size=(40, 6))
    p = 0.7 * t + rng.normal(0.0, 0.8, size=t.shape)
    return t, p


def _per_column(fn, t, p):
    return np.array([fn(t[:, g], p[:, g]) for g in range(t.shape[1])])


# -------------------------------------------------------------------------------------------------
# per-gene scores
# -------------------------------------------------------------------------------------------------
def test_pearson_matches_scipy(pair):
    t, p = pair
    expected = _per_column(lambda a, b: pearsonr(a, b).statistic, t, p)
    np.testing.assert_allclose(M.pearson_per_gene(t, p), expected, rtol=1e-10, atol=1e-12)


def test_spearman_matches_scipy(pair):
    t, p = pair
    expected = _per_column(lambda a, b: spearmanr(a, b).statistic, t, p)
    np.testing.assert_allclose(M.spearman_per_gene(t, p), expected, rtol=1e-10, atol=1e-12)


def test_spearman_ties_match_scipy():
    """Integer counts are full of ties: average ranks, as scipy does."""
    rng = np.random.default_rng(1)
    t = rng.integers(0, 4, size=(50, 5)).astype(float)
    p = t + rng.integers(-2, 3, size=t.shape)
    expected = _per_column(lambda a, b: spearmanr(a, b).statistic, t, p)
    np.testing.assert_allclose(M.spearman_per_gene(t, p), expected, rtol=1e-10, atol=1e-12)
    # Spearman is Pearson of ranks: a monotone transform of the prediction does not change it
    np.testing.assert_allclose(M.spearman_per_gene(t, np.exp(p)), expected, rtol=1e-10, atol=1e-12)


def test_mse_mae_match_sklearn(pair):
    t, p = pair
    np.testing.assert_allclose(M.mse_per_gene(t, p), mean_squared_error(t, p, multioutput="raw_values"), rtol=1e-12)
    np.testing.assert_allclose(M.mae_per_gene(t, p), mean_absolute_error(t, p, multioutput="raw_values"), rtol=1e-12)


@pytest.mark.parametrize("fn", [M.pearson_per_gene, M.spearman_per_gene])
def test_known_correlations(fn):
    t = np.array([[1.0, 5.0], [2.0, 3.0], [4.0, 3.0], [8.0, 1.0]])
    assert fn(t, 2.0 * t + 1.0).tolist() == pytest.approx([1.0, 1.0])
    assert fn(t, -3.0 * t + 2.0).tolist() == pytest.approx([-1.0, -1.0])
    # always within [-1, 1], also with round-off on perfectly (anti-)correlated data
    r = fn(t, 1e-9 * t + 1e3)
    assert np.all(np.abs(r) <= 1.0)


@pytest.mark.parametrize("fn", [M.pearson_per_gene, M.spearman_per_gene])
def test_constant_truth_is_nan_constant_prediction_is_zero(fn):
    t = np.array([[1.0, 2.0, 3.0, 5.0], [2.0, 2.0, 4.0, 5.0], [3.0, 2.0, 9.0, 5.0]])
    p = np.array([[1.0, 1.0, 7.0, 5.0], [2.0, 3.0, 7.0, 5.0], [3.5, 5.0, 7.0, 5.0]])
    r = fn(t, p)
    # gene 0: correlated; gene 1: constant truth -> NaN; gene 2: constant prediction only -> 0;
    # gene 3: both constant -> NaN (the truth decides)
    assert r[0] > 0.9
    assert np.isnan(r[1])
    assert r[2] == 0.0
    assert np.isnan(r[3])
    # scipy leaves a constant input undefined (NaN, with a warning): the 0 for a constant prediction is ours
    with pytest.warns(ConstantInputWarning):
        assert np.isnan(pearsonr(t[:, 2], p[:, 2]).statistic)


def test_pearson_docstring_example():
    t = np.array([[1.0, 2.0, 3.0], [2.0, 2.0, 3.0], [3.0, 2.0, 3.5]])
    p = np.array([[1.0, 1.0, 5.0], [2.0, 3.0, 5.0], [3.5, 5.0, 5.0]])
    r = M.pearson_per_gene(t, p)
    assert r[0] == pytest.approx(pearsonr(t[:, 0], p[:, 0]).statistic)
    assert np.isnan(r[1])
    assert r[2] == 0.0


def test_one_dimensional_input_is_one_gene(pair):
    t, p = pair
    for fn in PAIR_FUNCS:
        out = fn(t[:, 0], p[:, 0])
        assert out.shape == (1,)
        assert out[0] == pytest.approx(fn(t, p)[0])


@pytest.mark.parametrize("fn", PAIR_FUNCS)
@pytest.mark.parametrize("fmt", [sp.csr_matrix, sp.csc_matrix, sp.csr_array, sp.coo_matrix])
def test_sparse_inputs_equal_dense(fn, fmt):
    rng = np.random.default_rng(2)
    t = rng.poisson(0.6, size=(30, 4)).astype(float)
    p = rng.poisson(0.6, size=(30, 4)).astype(float)
    dense = fn(t, p)
    np.testing.assert_allclose(fn(fmt(t), fmt(p)), dense, rtol=1e-12)
    np.testing.assert_allclose(fn(fmt(t), p), dense, rtol=1e-12)


@pytest.mark.parametrize("fn", [*PAIR_FUNCS, M.score_table])
@pytest.mark.parametrize(("shape_t", "shape_p"), [((10, 3), (10, 4)), ((10, 3), (9, 3)), ((10, 3), (3, 10))])
def test_shape_mismatch_raises(fn, shape_t, shape_p):
    with pytest.raises(ValueError, match=r"differ in shape"):
        fn(np.ones(shape_t), np.ones(shape_p))


def test_inputs_are_not_modified(pair):
    t, p = pair
    t0, p0 = t.copy(), p.copy()
    for fn in [*PAIR_FUNCS, M.score_table]:
        fn(t, p)
    np.testing.assert_array_equal(t, t0)
    np.testing.assert_array_equal(p, p0)


# -------------------------------------------------------------------------------------------------
# summaries
# -------------------------------------------------------------------------------------------------
def test_summarize_excludes_and_counts_nan():
    t = np.array([[1.0, 2.0, 3.0, 1.0], [2.0, 2.0, 4.0, 0.0], [3.0, 2.0, 9.0, 2.0], [5.0, 2.0, 1.0, 1.0]])
    p = t + np.array([[0.1, 0.0, -1.0, 0.3]])
    p[0, 2] = 5.0
    r = M.pearson_per_gene(t, p)
    assert np.isnan(r[1])
    s = M.summarize(r)
    valid = r[~np.isnan(r)]
    assert s["n_genes"] == 3
    assert s["n_nan"] == 1
    assert s["mean"] == pytest.approx(valid.mean())
    assert s["sd"] == pytest.approx(np.std(valid))  # population sd (ddof=0)
    assert [s["q25"], s["median"], s["q75"]] == pytest.approx(np.percentile(valid, [25, 50, 75]).tolist())
    assert s["median"] == pytest.approx(np.nanmedian(r))


@pytest.mark.parametrize(("scores", "n_nan"), [([], 0), ([np.nan, np.nan], 2)])
def test_summarize_without_valid_scores(scores, n_nan):
    s = M.summarize(scores)
    assert s["n_genes"] == 0
    assert s["n_nan"] == n_nan
    assert all(np.isnan(s[k]) for k in ("mean", "sd", "q25", "median", "q75"))


def test_score_table(pair):
    t, p = pair
    t = t.copy()
    t[:, 3] = 2.0  # constant truth
    df = M.score_table(t, p, genes=[f"g{i}" for i in range(6)])
    assert list(df.columns) == ["pearson", "spearman", "mse", "mae", "truth_var", "n"]
    assert df.index.name == "gene"
    assert df.index.tolist() == [f"g{i}" for i in range(6)]
    np.testing.assert_allclose(df["pearson"], M.pearson_per_gene(t, p))
    np.testing.assert_allclose(df["spearman"], M.spearman_per_gene(t, p))
    np.testing.assert_allclose(df["mse"], mean_squared_error(t, p, multioutput="raw_values"))
    np.testing.assert_allclose(df["mae"], mean_absolute_error(t, p, multioutput="raw_values"))
    np.testing.assert_allclose(df["truth_var"], t.var(0))
    assert (df["n"] == 40).all()
    assert df["pearson"].isna().sum() == 1
    assert M.summarize(df["pearson"])["n_nan"] == 1
    default = M.score_table(t, p)
    assert default.index.tolist() == [f"gene_{i}" for i in range(6)]


# -------------------------------------------------------------------------------------------------
# out-of-fold predictions: per fold, then averaged over folds
# -------------------------------------------------------------------------------------------------
def _blocked_slide(n_folds=5, n_per_fold=60, n_genes=8, seed=0):
    """Spots in spatial strips (one fold each) over genes with a spatial gradient plus noise."""
    rng = np.random.default_rng(seed)
    n = n_folds * n_per_fold
    x = np.sort(rng.uniform(0, 1, n))
    folds = np.repeat(np.arange(n_folds), n_per_fold)  # strips along x, as spatial blocks are
    slope = rng.uniform(0.5, 2.0, n_genes)
    truth = x[:, None] * slope + rng.normal(0, 0.3, (n, n_genes))
    return truth, folds


def _training_means(truth, folds):
    """Each fold predicted by the mean of the other folds (the ``mean`` baseline, out-of-fold)."""
    pred = np.empty_like(truth)
    for f in np.unique(folds):
        pred[folds == f] = truth[folds != f].mean(0)
    return pred


def test_constant_per_fold_predictor_scores_zero():
    truth, folds = _blocked_slide()
    pred = _training_means(truth, folds)
    pooled = M.pearson_per_gene(truth, pred)
    assert np.median(pooled) < -0.2  # pooling folds turns each fold's offset into an anti-correlation
    per_fold = M.pearson_per_gene(truth, pred, folds=folds)
    assert np.abs(per_fold).mean() < 0.01
    np.testing.assert_array_equal(per_fold, 0.0)
    # with a little noise on the constant (a model that is almost constant): still ~0, never ~-0.2
    noisy = pred + np.random.default_rng(1).normal(0, 1e-3, pred.shape)
    assert np.abs(M.pearson_per_gene(truth, noisy, folds=folds)).mean() < 0.1
    assert np.abs(M.spearman_per_gene(truth, noisy, folds=folds)).mean() < 0.1
    table = M.score_table(truth, pred, folds=folds)
    assert list(table.columns) == ["pearson", "spearman", "mse", "mae", "truth_var", "n"]
    np.testing.assert_array_equal(table["pearson"], 0.0)


def test_per_fold_is_the_size_weighted_mean_of_each_fold(pair):
    t, p = pair
    folds = np.array([0] * 10 + [1] * 25 + [2] * 5)
    t = t.copy()
    t[folds == 2, 1] = 3.0  # gene 1 is constant within fold 2: NaN there, left out of its mean
    t[:, 5] = 1.0  # gene 5 is constant everywhere: NaN
    fs = M.fold_scores(t, p, folds, genes=[f"g{i}" for i in range(6)])
    assert list(fs.columns) == ["fold", "gene", "pearson", "spearman", "mse", "mae", "truth_var", "n"]
    assert len(fs) == 3 * 6
    for fn, col in [(M.pearson_per_gene, "pearson"), (M.spearman_per_gene, "spearman")]:
        got = fn(t, p, folds=folds)
        for g in range(6):
            vals = np.array([fn(t[folds == f][:, [g]], p[folds == f][:, [g]])[0] for f in range(3)])
            w = np.array([10.0, 25.0, 5.0]) * np.isfinite(vals)
            expected = np.nan if w.sum() == 0 else np.nansum(vals * w) / w.sum()
            np.testing.assert_allclose(got[g], expected, rtol=1e-12, equal_nan=True)
            np.testing.assert_allclose(fs.loc[fs["gene"] == f"g{g}", col], vals, rtol=1e-12, equal_nan=True)
    assert np.isnan(M.pearson_per_gene(t, p, folds=folds)[5])
    assert np.isfinite(M.pearson_per_gene(t, p, folds=folds)[1])
    # MSE and MAE weighted by fold size are those over all spots
    np.testing.assert_allclose(M.mse_per_gene(t, p, folds=folds), M.mse_per_gene(t, p), rtol=1e-12)
    np.testing.assert_allclose(M.mae_per_gene(t, p, folds=folds), M.mae_per_gene(t, p), rtol=1e-12)
    # one fold is the pooled form; any labels work
    np.testing.assert_allclose(M.pearson_per_gene(t, p, folds=np.zeros(40)), M.pearson_per_gene(t, p))
    labels = np.where(folds == 0, "a", np.where(folds == 1, "b", "c"))
    np.testing.assert_allclose(M.pearson_per_gene(t, p, folds=labels), M.pearson_per_gene(t, p, folds=folds))
    with pytest.raises(ValueError, match="one fold label per spot"):
        M.pearson_per_gene(t, p, folds=folds[:-1])


def test_score_table_docstring_example():
    t = np.arange(1.0, 7.0)[:, None]
    p = np.array([5.0, 5.0, 5.0, 2.0, 2.0, 2.0])[:, None]
    assert M.score_table(t, p)["pearson"].iloc[0] == pytest.approx(-0.878, abs=1e-3)
    assert M.score_table(t, p, folds=[0, 0, 0, 1, 1, 1])["pearson"].iloc[0] == 0.0


def _hand_predicted_slide(seed=0):
    """A synthetic slide whose "out-of-fold predictions" are written by hand: spatial strips as folds, each
    predicted by the mean of the other strips (log1p of counts per 10k, the evaluate scale)."""
    import stpredict as stp

    sdata = stp.datasets.synthetic(image_size=1024, n_genes=6, seed=seed)
    table = sdata.tables["table"]
    X = table.X.toarray().astype(float)
    y = np.log1p(X / X.sum(1, keepdims=True) * 1e4)
    x = np.asarray(table.obsm["spatial"])[:, 0]
    folds = np.searchsorted(np.quantile(x, [0.2, 0.4, 0.6, 0.8]), x, side="right").astype(np.int32)
    table.layers["predicted"] = _training_means(y, folds).astype(np.float32)
    table.var["predicted"] = True
    table.uns["stpredict"] = {"predicted": {"model": "mean", "mode": "out-of-fold", "oof_fold": folds}}
    return sdata, y, folds


def test_evaluate_scores_per_fold():
    import stpredict as stp

    sdata, y, folds = _hand_predicted_slide()
    scores = stp.tl.evaluate(sdata)
    assert list(scores.columns) == ["pearson", "spearman", "mse", "mae", "truth_var", "n"]
    assert scores.attrs["oof_scoring"] == "per_fold"
    assert scores.attrs["fold_sizes"] == {f: int((folds == f).sum()) for f in range(5)}
    assert set(scores.attrs["pearson_per_fold"]) == set(range(5))
    valid = scores["pearson"].dropna()
    assert len(valid) >= 4
    assert valid.abs().mean() < 0.01  # a constant per fold scores 0
    assert scores.attrs["summary"]["mean"] == pytest.approx(valid.mean())
    # the pooled form, on request, is one correlation over all spots (negative here)
    pooled = stp.tl.evaluate(sdata, oof_scoring="pooled")
    assert pooled.attrs["oof_scoring"] == "pooled"
    assert list(pooled.columns) == list(scores.columns)
    expected = M.score_table(y, sdata.tables["table"].layers["predicted"], list(sdata.tables["table"].var_names))
    np.testing.assert_allclose(pooled["pearson"], expected["pearson"], rtol=1e-4, atol=1e-5)
    assert pooled["pearson"].median() < -0.1
    np.testing.assert_allclose(pooled["mse"], scores["mse"], rtol=1e-5)
    with pytest.raises(ValueError, match="oof_scoring"):
        stp.tl.evaluate(sdata, oof_scoring="mean")


def test_evaluate_without_folds_and_mismatched_folds():
    import stpredict as stp

    sdata, y, folds = _hand_predicted_slide()
    table = sdata.tables["table"]
    del table.uns["stpredict"]["predicted"]["oof_fold"]  # e.g. a fitted model's predictions
    scores = stp.tl.evaluate(sdata)
    assert scores.attrs["oof_scoring"] == "all spots"
    assert scores.attrs["fold_sizes"] == {}
    table.uns["stpredict"]["predicted"]["oof_fold"] = folds[:-1]
    with pytest.raises(ValueError, match="oof_scoring='pooled'"):
        stp.tl.evaluate(sdata)
    assert stp.tl.evaluate(sdata, oof_scoring="pooled").attrs["oof_scoring"] == "all spots"


# -------------------------------------------------------------------------------------------------
# maps
# -------------------------------------------------------------------------------------------------
def test_rasterize_means_and_empty_cells():
    # x then y; bin 10 with the default origin (min - bin/2) puts the points at cell centres
    centers = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 0.0], [0.0, 20.0], [20.0, 20.0]])
    values = np.array([[1.0, 10.0], [2.0, 20.0], [4.0, 40.0], [3.0, 30.0], [5.0, 50.0]])
    out = M.rasterize(centers, values, 10.0)
    assert out.shape == (2, 3, 3)  # (genes, h = y cells, w = x cells)
    expected0 = np.array([[1.0, 3.0, np.nan], [np.nan, np.nan, np.nan], [3.0, np.nan, 5.0]])
    np.testing.assert_array_equal(out[0], expected0)
    np.testing.assert_array_equal(out[1], 10 * expected0)
    # one gene given as a 1-d array
    np.testing.assert_array_equal(M.rasterize(centers, values[:, 0], 10.0), out[:1])


def test_rasterize_origin():
    out = M.rasterize(np.array([[15.0, 25.0], [3.0, 3.0]]), np.array([7.0, 1.0]), 10.0, origin=(0.0, 0.0))
    assert out.shape == (1, 3, 2)
    assert out[0, 2, 1] == 7.0
    assert out[0, 0, 0] == 1.0
    assert np.isnan(out[0]).sum() == 4


def test_rasterize_points_before_origin_raise():
    """A point left of / above an explicit origin would get a negative index and wrap into another cell."""
    with pytest.raises(ValueError, match="origin"):
        M.rasterize(np.array([[5.0, 5.0], [-6.0, 15.0]]), np.array([1.0, 2.0]), 10.0, origin=(0.0, 0.0))
    with pytest.raises(ValueError, match="origin"):
        M.rasterize(np.array([[5.0, 5.0], [15.0, -0.5]]), np.array([1.0, 2.0]), 10.0, origin=(0.0, 0.0))
    # on the origin itself is the first cell
    out = M.rasterize(np.array([[0.0, 0.0], [15.0, 5.0]]), np.array([1.0, 2.0]), 10.0, origin=(0.0, 0.0))
    np.testing.assert_array_equal(out[0], [[1.0, 2.0]])


@pytest.fixture
def maps():
    """Two genes on a 12 × 15 grid, with the same off-tissue (NaN) corner in truth and prediction."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:12, 0:15]
    t = np.stack([np.sin(xx / 3.0) + yy / 5.0, np.cos(yy / 2.0) * xx / 7.0]) + rng.normal(0, 0.05, (2, 12, 15))
    p = 0.8 * t + rng.normal(0, 0.3, t.shape)
    off = (yy < 3) & (xx < 4)
    t[:, off] = np.nan
    p[:, off] = np.nan
    return t, p, ~off


def test_map_pearson_over_defined_cells(maps):
    t, p, on = maps
    expected = [pearsonr(t[g][on], p[g][on]).statistic for g in range(2)]
    np.testing.assert_allclose(M.map_pearson(t, p), expected, rtol=1e-10)
    # a NaN in the prediction only also removes that cell
    p2 = p.copy()
    p2[:, 6, 7] = np.nan
    on2 = on.copy()
    on2[6, 7] = False
    expected2 = [pearsonr(t[g][on2], p2[g][on2]).statistic for g in range(2)]
    np.testing.assert_allclose(M.map_pearson(t, p2), expected2, rtol=1e-10)


def test_map_pearson_conventions():
    t = np.arange(2 * 4 * 5, dtype=float).reshape(2, 4, 5)
    t[1] = 3.0
    r = M.map_pearson(t, 2 * t + 1)
    assert r[0] == pytest.approx(1.0)
    assert np.isnan(r[1])
    assert M.map_pearson(t[:1], np.full((1, 4, 5), 2.0))[0] == 0.0


def test_map_ssim_matches_skimage(maps):
    t, p, _ = maps
    t, p = np.nan_to_num(t, nan=0.5), np.nan_to_num(p, nan=0.5)
    expected = [structural_similarity(t[g], p[g], data_range=np.ptp(t[g]), win_size=7) for g in range(2)]
    np.testing.assert_allclose(M.map_ssim(t, p), expected, rtol=1e-10)
    np.testing.assert_allclose(M.map_ssim(t, t), [1.0, 1.0])


def test_map_ssim_fills_empty_cells_with_each_maps_mean(maps):
    """Documented: empty (NaN) cells get each map's mean over the cells where both are defined."""
    t, p, on = maps
    expected = []
    for g in range(2):
        tg = np.where(on, t[g], t[g][on].mean())
        pg = np.where(on, p[g], p[g][on].mean())
        expected.append(structural_similarity(tg, pg, data_range=np.ptp(tg), win_size=7))
    np.testing.assert_allclose(M.map_ssim(t, p), expected, rtol=1e-10)


def test_map_ssim_window_and_degenerate_maps():
    rng = np.random.default_rng(4)
    t = rng.normal(size=(1, 6, 9))
    p = t + rng.normal(0, 0.5, t.shape)
    # the window shrinks to the largest odd size that fits (5 here)
    expected = structural_similarity(t[0], p[0], data_range=np.ptp(t[0]), win_size=5)
    assert M.map_ssim(t, p)[0] == pytest.approx(expected)
    assert M.map_ssim(t, p, win_size=3)[0] == pytest.approx(
        structural_similarity(t[0], p[0], data_range=np.ptp(t[0]), win_size=3)
    )
    # maps thinner than 3 cells and constant truths are undefined
    assert np.isnan(M.map_ssim(t[:, :2], p[:, :2])).all()
    assert np.isnan(M.map_ssim(np.ones((1, 6, 9)), p)).all()


@pytest.mark.parametrize("fn", [M.map_pearson, M.map_ssim])
def test_map_metrics_mask_per_gene(maps, fn):
    """Each gene is scored over its own defined cells: one gene without a prediction (all NaN) removes none."""
    t, p, _ = maps
    p2 = p.copy()
    p2[1] = np.nan  # gene 1 not predicted
    out = fn(t, p2)
    assert np.isnan(out[1])
    assert out[0] == pytest.approx(fn(t[:1], p[:1])[0])
    # a NaN cell of one gene only does not change the other gene's score
    p3 = p.copy()
    p3[1, 6, 7] = np.nan
    out3 = fn(t, p3)
    assert out3[0] == pytest.approx(fn(t[:1], p[:1])[0])
    assert out3[1] == pytest.approx(fn(t[1:], p3[1:])[0])


@pytest.mark.parametrize("shape_p", [(2, 12, 16), (3, 12, 15), (1, 12, 15)])
def test_map_pearson_shape_mismatch_raises(shape_p):
    with pytest.raises(ValueError, match="shape"):
        M.map_pearson(np.ones((2, 12, 15)), np.ones(shape_p))


@pytest.mark.parametrize(
    "shape_p",
    [
        (2, 12, 16),
        (3, 12, 15),
        (1, 12, 15),
    ],
)
def test_map_ssim_shape_mismatch_raises(shape_p):
    with pytest.raises(ValueError, match="shape"):
        M.map_ssim(np.ones((2, 12, 15)), np.ones(shape_p))


def test_map_ssim_extra_prediction_genes_raise():
    with pytest.raises(ValueError, match="shape"):
        M.map_ssim(np.ones((1, 12, 15)), np.ones((2, 12, 15)))


def test_rasterize_into_map_metrics_round_trip():
    """Spots rasterised on their own lattice reproduce the per-spot Pearson."""
    rng = np.random.default_rng(5)
    xy = np.stack(np.meshgrid(np.arange(8) * 10.0, np.arange(6) * 10.0), -1).reshape(-1, 2)
    keep = rng.random(len(xy)) > 0.2
    xy = xy[keep]
    t = rng.normal(size=(len(xy), 3))
    p = t + rng.normal(0, 0.5, t.shape)
    tm, pm = M.rasterize(xy, t, 10.0), M.rasterize(xy, p, 10.0)
    assert tm.shape == (3, 6, 8)
    assert np.isnan(tm[0]).sum() == (~keep).sum()
    np.testing.assert_allclose(M.map_pearson(tm, pm), M.pearson_per_gene(t, p), rtol=1e-10)


# -------------------------------------------------------------------------------------------------
# domains
# -------------------------------------------------------------------------------------------------
def test_ari_nmi_match_sklearn():
    rng = np.random.default_rng(6)
    a = rng.integers(0, 4, 200)
    b = np.where(rng.random(200) < 0.7, a, rng.integers(0, 4, 200))
    assert M.ari(a, b) == pytest.approx(adjusted_rand_score(a, b))
    assert M.nmi(a, b) == pytest.approx(normalized_mutual_info_score(a, b))
    assert isinstance(M.ari(a, b), float)
    assert isinstance(M.nmi(a, b), float)


def test_ari_nmi_known_cases():
    truth = ["a", "a", "b", "b", "c", "c"]
    renamed = pd.Categorical(["z", "z", "x", "x", "y", "y"])  # same partition, other names
    assert M.ari(truth, renamed) == pytest.approx(1.0)
    assert M.nmi(truth, renamed) == pytest.approx(1.0)
    split = ["a", "b", "a", "b", "a", "b"]  # independent of the truth
    assert M.ari(truth, split) == pytest.approx(adjusted_rand_score(truth, split))
    assert M.ari(truth, split) < 0.0
    assert M.nmi(truth, split) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="inconsistent"):
        M.ari(truth, truth[:-1])
