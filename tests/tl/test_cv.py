"""``stp.tl.cross_validate`` and its splitters: no training spot or gene selection leaks into the test side.

Every leak test here would fail if the leak existed: a spy predictor records what each fold's ``fit`` and
``predict`` see, gene panels are checked against genes expressed only on the test side, and baseline scores
are recomputed by hand from the training rows only.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.spatial import cKDTree
from sklearn.metrics import mean_absolute_error, mean_squared_error

import stpredict as stp
from stpredict.models import Predictor, register_predictor
from stpredict.tl._cv import CVResult, Split
from stpredict.tl._cv_folds import hide_spots_split, pool_spots

SPY = "_test_cv_leak_spy"


# -------------------------------------------------------------------------------------------------
# helpers and fixtures
# -------------------------------------------------------------------------------------------------
def _synthetic(seed: int = 0, *, layout: str = "visium", size: int = 768):
    """A small synthetic slide whose coarsest pyramid level is rendered once (validation reads it per call)."""
    from stpredict._image import replace_levels

    sdata = stp.datasets.synthetic(image_size=size, n_genes=30, seed=seed, layout=layout)
    tree = sdata.images["he"]
    name = list(tree.children)[-1]
    coarsest = next(iter(tree[name].ds.data_vars.values()))
    replace_levels(tree, {name: np.asarray(coarsest.data.compute())}, chunks=512)
    return sdata


@pytest.fixture(scope="module")
def slides():
    """Three small synthetic slides (31, 38 and 36 spots, 30 genes). cross_validate never modifies them."""
    return [_synthetic(s) for s in (0, 1, 2)]


@pytest.fixture
def slide(slides):
    return slides[0]


@pytest.fixture(scope="module")
def st_slide():
    """Legacy ST layout (square lattice, unit-step array coordinates): 2 x 2 array blocks are 2 x 2 spots."""
    return _synthetic(0, layout="st", size=1280)


def _fresh(seed: int = 0):
    """A slide whose counts a test may edit."""
    return _synthetic(seed)


def _counts(sdata) -> np.ndarray:
    X = sdata.tables["table"].X
    return np.asarray(X.toarray() if sp.issparse(X) else X, dtype=np.float64)


def _set_counts(sdata, X: np.ndarray) -> None:
    sdata.tables["table"].X = sp.csr_matrix(X.astype(np.int32))


def _lognorm(X: np.ndarray, cols) -> np.ndarray:
    """By hand: counts normalised to 1e4 over all genes, then log1p, for columns ``cols``."""
    lib = X.sum(1)
    scale = np.divide(1e4, lib, out=np.zeros_like(lib), where=lib > 0)
    return np.log1p(X[:, cols] * scale[:, None])


def _cols(sdata, genes) -> np.ndarray:
    return sdata.tables["table"].var_names.get_indexer(list(genes))


def _centers_um(sdata) -> np.ndarray:
    geo = stp.pp.spots(sdata)
    assert np.array_equal(geo.rows, np.arange(sdata.tables["table"].n_obs))
    return np.asarray(geo.centers) * np.asarray(geo.microns_per_pixel_xy)


def _scores_by_hand(y_true: np.ndarray, y_pred: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "pearson": stp.metrics.pearson_per_gene(y_true, y_pred),
            "mse": mean_squared_error(y_true, y_pred, multioutput="raw_values"),
            "mae": mean_absolute_error(y_true, y_pred, multioutput="raw_values"),
        }
    )


def _assert_scores(result: CVResult, fold: int, expected: pd.DataFrame) -> None:
    got = result.scores[result.scores["fold"] == fold].reset_index(drop=True)
    for col in expected:
        np.testing.assert_allclose(got[col].to_numpy(), expected[col].to_numpy(), rtol=2e-4, atol=2e-5, err_msg=col)


@pytest.fixture
def spy():
    """A registered test-only predictor recording what every fold's fit and predict receive.

    It predicts the training mean. Removed from the registry afterwards.
    """
    from stpredict.models import _base

    calls: list[dict] = []

    @register_predictor(SPY)
    class Spy(Predictor):
        """Test-only: records its inputs."""

        consumes = "embeddings"
        default_backbone = None
        log: ClassVar[list[dict]] = calls

        def fit(self, slides, *, genes, max_epochs=None, seed=None):
            self.log.append(
                {
                    "call": "fit",
                    "cls": type(self).__name__,
                    "genes": list(genes),
                    "slides": [
                        {
                            "name": s.name,
                            "obs": list(s.obs_names),
                            "centers_px": np.array(s.centers_px, copy=True),
                            "y": np.array(s.y, copy=True),
                            "meta": dict(s.meta),
                        }
                        for s in slides
                    ],
                    "seed": seed,
                }
            )
            self.genes = list(genes)
            self._mean = np.concatenate([np.asarray(s.y, dtype=np.float64) for s in slides]).mean(0)
            return self

        def predict(self, slide, regions):
            self.log.append(
                {
                    "call": "predict",
                    "name": slide.name,
                    "obs": list(slide.obs_names),
                    "y": None if slide.y is None else np.array(slide.y, copy=True),
                    "y_linear": slide.y_linear,
                    "library_size": slide.library_size,
                    "regions_px": np.array(regions.centers_px, copy=True),
                }
            )
            return np.broadcast_to(self._mean, (regions.n, len(self.genes))).astype(np.float32).copy(), None

    yield Spy
    _base._REGISTRY.pop(SPY, None)


def _fits(spy_cls) -> list[dict]:
    return [c for c in spy_cls.log if c["call"] == "fit"]


def _predicts(spy_cls) -> list[dict]:
    return [c for c in spy_cls.log if c["call"] == "predict"]


# -------------------------------------------------------------------------------------------------
# splitters
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [10, 31, 101])
@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.75])
@pytest.mark.parametrize("seed", [0, 7])
def test_hide_spots_split_is_the_documented_permutation(n, fraction, seed):
    train, test = hide_spots_split(n, fraction, seed)
    perm = np.random.default_rng(seed).permutation(n)
    k = int(n * fraction)
    np.testing.assert_array_equal(test, np.sort(perm[:k]))
    np.testing.assert_array_equal(train, np.sort(perm[k:]))
    assert np.intersect1d(train, test).size == 0
    np.testing.assert_array_equal(np.union1d(train, test), np.arange(n))
    # deterministic
    for a, b in zip(hide_spots_split(n, fraction, seed), (train, test), strict=True):
        np.testing.assert_array_equal(a, b)


def test_hide_spots_split_depends_on_seed():
    assert not np.array_equal(hide_spots_split(50, 0.5, 0)[1], hide_spots_split(50, 0.5, 1)[1])


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_hide_spots_split_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError, match="fraction"):
        hide_spots_split(10, fraction, 0)


def test_hide_spots_split_rejects_empty_test_side():
    """int(n * fraction) == 0 would hide no spot (and cross_validate would score 0 spots)."""
    with pytest.raises(ValueError, match="fraction"):
        hide_spots_split(31, 0.01, 0)
    with pytest.raises(ValueError, match="test side"):
        hide_spots_split(1, 0.5, 0)
    # the smallest fraction that hides one spot
    assert len(hide_spots_split(31, 1 / 31, 0)[1]) == 1


def test_fold_without_detected_genes_raises(slide):
    """1 training spot detects no gene: a clear error naming the fold, not an empty panel and NaN scores."""
    with pytest.raises(ValueError, match=r"fold 0 .*no gene is detected.*smaller fraction"):
        stp.tl.cross_validate(slide, "mean", protocol="hide", fraction=0.97, progress=False)


def test_pool_spots_by_hand():
    counts = np.array([[1, 0, 2], [3, 1, 0], [0, 0, 5], [2, 2, 2], [7, 0, 0]], dtype=float)
    centers = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0], [30.0, 0.0]])
    groups = np.array([[0, 0], [0, 0], [0, 0], [0, 0], [1, 0]])  # a 2 x 2 block and a lone spot
    for fmt in (np.asarray, sp.csr_matrix):
        pooled, pc, member = pool_spots(fmt(counts), centers, groups)
        pooled = pooled.toarray() if sp.issparse(pooled) else np.asarray(pooled)
        np.testing.assert_array_equal(member, [0, 0, 0, 0, 1])
        np.testing.assert_array_equal(pooled, [[6, 3, 9], [7, 0, 0]])
        np.testing.assert_allclose(pc, [[5.0, 5.0], [30.0, 0.0]])
    # group order does not matter: membership follows the sorted unique groups
    pooled, pc, member = pool_spots(counts[::-1], centers[::-1], groups[::-1])
    np.testing.assert_array_equal(member, [1, 0, 0, 0, 0])
    np.testing.assert_array_equal(pooled.toarray(), [[6, 3, 9], [7, 0, 0]])
    # the counts are conserved
    assert pooled.sum() == counts.sum()


# -------------------------------------------------------------------------------------------------
# hide_spots: splits and leaks
# -------------------------------------------------------------------------------------------------
def test_hide_protocol_split_and_records(slide):
    res = stp.tl.cross_validate(slide, "mean", protocol="hide", fraction=0.4, seed=3, progress=False)
    names = slide.tables["table"].obs_names
    n = len(names)
    tr, te = hide_spots_split(n, 0.4, 3)
    (split,) = res.splits
    assert isinstance(split, Split)
    assert split.test_slide == 0
    assert split.train_slides == [0]
    assert split.test_obs == list(names[te])
    assert split.train_obs == {0: list(names[tr])}
    assert set(split.test_obs).isdisjoint(split.train_obs[0])
    assert set(split.test_obs) | set(split.train_obs[0]) == set(names)
    assert res.folds.loc[0, "n_train"] == len(tr)
    assert res.folds.loc[0, "n_test"] == len(te) == int(n * 0.4)
    assert (res.scores["n"] == len(te)).all()


def test_hide_fit_and_predict_never_see_test_spots(slide, spy):
    res = stp.tl.cross_validate(slide, SPY, protocol="hide_spots", fraction=0.5, seed=0, progress=False)
    (split,) = res.splits
    genes = res.genes[0]
    X = _counts(slide)
    names = list(slide.tables["table"].obs_names)
    pos = {nm: i for i, nm in enumerate(names)}
    test_rows = [pos[nm] for nm in split.test_obs]
    train_rows = [pos[nm] for nm in split.train_obs[0]]

    (fit,) = _fits(spy)
    (seen,) = fit["slides"]
    assert set(seen["obs"]).isdisjoint(split.test_obs)
    assert seen["obs"] == split.train_obs[0]
    # the targets it got are exactly those of the training rows (content, not only names)
    np.testing.assert_allclose(seen["y"], _lognorm(X[train_rows], _cols(slide, genes)), rtol=1e-5, atol=1e-6)

    (pred,) = _predicts(spy)
    # the context it may interpolate holds the training spots only ...
    assert set(pred["obs"]).isdisjoint(split.test_obs)
    np.testing.assert_allclose(pred["y"], seen["y"])
    # ... and it is asked for the hidden spots
    centers = stp.pp.spots(slide).centers
    np.testing.assert_allclose(pred["regions_px"], centers[test_rows])


def test_copy_baseline_hide_reproduces_nearest_training_spot(slide):
    """If a hidden spot leaked into the context, copy would return its own value (MSE 0, PCC 1)."""
    res = stp.tl.cross_validate(slide, "copy", protocol="hide", fraction=0.5, seed=0, progress=False)
    genes = res.genes[0]
    tr, te = hide_spots_split(slide.tables["table"].n_obs, 0.5, 0)
    Y = _lognorm(_counts(slide), _cols(slide, genes))
    xy = _centers_um(slide)
    _, idx = cKDTree(xy[tr]).query(xy[te], k=1)
    _assert_scores(res, 0, _scores_by_hand(Y[te], Y[tr][idx]))
    assert (res.scores["mse"] > 0).all()
    assert (res.scores["pearson"] < 0.999).all()


@pytest.mark.parametrize(
    ("n_genes", "background"),
    [(50, 0), (3, 2)],
    ids=["all-detected-genes", "hvg"],
)
def test_hide_gene_only_in_test_spots_is_not_selected(n_genes, background):
    """A gene varying only in the hidden spots must not enter the panel (it would, chosen on all spots).

    ``n_genes=50`` > 30 genes keeps every gene detected in the training spots: the gene is absent there.
    ``n_genes=3`` ranks highly variable genes: the gene is flat in the training spots and the top HVG of all
    spots.
    """
    from stpredict.tl._targets import select_genes

    sdata = _fresh(0)
    X = _counts(sdata)
    tr, te = hide_spots_split(len(X), 0.5, 0)
    leak = "gene_7"
    j = _cols(sdata, [leak])[0]

    def put(var_rows, flat_rows):
        X[flat_rows, j] = background
        X[var_rows, j] = np.where(np.arange(len(var_rows)) % 4 == 0, 80, background)
        _set_counts(sdata, X)
        return stp.tl.cross_validate(
            sdata, "mean", protocol="hide", fraction=0.5, seed=0, n_genes=n_genes, progress=False
        )

    res = put(te, tr)
    # the test is sensitive: chosen on all spots, the gene would be in the panel
    assert leak in select_genes([(sdata.tables["table"], np.arange(len(X)))], n_genes)[0]
    assert leak not in res.genes[0]
    assert 0 < len(res.genes[0]) <= n_genes
    # positive control: the same pattern on the training side is selected
    assert leak in put(tr, te).genes[0]


def test_mean_baseline_hide_predicts_the_training_mean(slide):
    res = stp.tl.cross_validate(slide, "mean", protocol="hide", fraction=0.5, seed=0, progress=False)
    genes = res.genes[0]
    tr, te = hide_spots_split(slide.tables["table"].n_obs, 0.5, 0)
    Y = _lognorm(_counts(slide), _cols(slide, genes))
    train_mean = np.broadcast_to(Y[tr].mean(0), Y[te].shape)
    _assert_scores(res, 0, _scores_by_hand(Y[te], train_mean).drop(columns="pearson"))
    assert (res.scores["pearson"] == 0.0).all()  # a constant prediction scores 0
    # the overall mean (which includes the hidden spots) would give other errors
    overall = np.broadcast_to(Y.mean(0), Y[te].shape)
    mse_all = mean_squared_error(Y[te], overall, multioutput="raw_values")
    assert not np.allclose(res.scores["mse"].to_numpy(), mse_all, rtol=1e-3)


# -------------------------------------------------------------------------------------------------
# leave one section / patient out
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", ["loso", "leave_one_section_out"])
def test_loso_fit_never_sees_the_held_out_slide(slides, spy, protocol):
    names = ["a", "b", "c"]
    res = stp.tl.cross_validate(slides, SPY, protocol=protocol, names=names, progress=False)
    assert res.params["protocol"] == "leave_one_section_out"
    assert len(res.splits) == 3
    fits, preds = _fits(spy), _predicts(spy)
    assert len(fits) == len(preds) == 3
    for f, split in enumerate(res.splits):
        others = [j for j in range(3) if j != f]
        assert split.test_slide == f
        assert split.train_slides == others
        assert [s["name"] for s in fits[f]["slides"]] == [names[j] for j in others]
        genes = res.genes[f]
        assert fits[f]["genes"] == genes
        # content: the fitted targets are the other slides' spots, all of them and nothing else
        for seen, j in zip(fits[f]["slides"], others, strict=True):
            np.testing.assert_allclose(
                seen["y"], _lognorm(_counts(slides[j]), _cols(slides[j], genes)), rtol=1e-5, atol=1e-6
            )
        assert split.train_obs == {j: list(slides[j].tables["table"].obs_names) for j in others}
        # prediction: from the held-out slide's image only, at all its spots
        p = preds[f]
        assert p["name"] == names[f]
        assert p["y"] is None and p["y_linear"] is None and p["library_size"] is None
        np.testing.assert_allclose(p["regions_px"], stp.pp.spots(slides[f]).centers)
        assert split.test_obs == list(slides[f].tables["table"].obs_names)
    assert res.scores.groupby("fold")["slide"].first().tolist() == names


@pytest.mark.parametrize(
    ("groups", "expected"),
    [(["p", "p", "q"], [[2], [2], [0, 1]]), (["p", "q", "r"], [[1, 2], [0, 2], [0, 1]])],
)
def test_lopo_fit_never_sees_the_held_out_patient(slides, spy, groups, expected):
    res = stp.tl.cross_validate(slides, SPY, protocol="lopo", groups=groups, names=["a", "b", "c"], progress=False)
    assert res.params["protocol"] == "leave_one_patient_out"
    assert res.params["groups"] == groups
    fits = _fits(spy)
    for f, split in enumerate(res.splits):
        assert split.train_slides == expected[f]
        assert [s["name"] for s in fits[f]["slides"]] == [["a", "b", "c"][j] for j in expected[f]]
        assert all(groups[j] != groups[f] for j in split.train_slides)
    assert all(p["y"] is None for p in _predicts(spy))


def test_loso_gene_only_in_held_out_slide_is_not_selected(slides):
    edited = [_fresh(s) for s in (0, 1, 2)]
    leak = "gene_7"
    for i, sd in enumerate(edited):
        X = _counts(sd)
        X[:, _cols(sd, [leak])[0]] = 300 if i == 2 else 0
        _set_counts(sd, X)
    res = stp.tl.cross_validate(edited, "mean", protocol="loso", progress=False)
    assert leak not in res.genes[2]  # held out: its counts must not choose the panel
    # positive control: where slide 2 trains, the gene is detected and selected
    assert leak in res.genes[0]
    assert leak in res.genes[1]


def test_mean_baseline_loso_predicts_the_training_mean(slides):
    res = stp.tl.cross_validate(slides, "mean", protocol="loso", progress=False)
    for f in range(3):
        genes = res.genes[f]
        Ys = [_lognorm(_counts(s), _cols(s, genes)) for s in slides]
        train = np.concatenate([Ys[j] for j in range(3) if j != f])
        pred = np.broadcast_to(train.mean(0), Ys[f].shape)
        _assert_scores(res, f, _scores_by_hand(Ys[f], pred).drop(columns="pearson"))


# -------------------------------------------------------------------------------------------------
# pool
# -------------------------------------------------------------------------------------------------
def _pool_by_hand(sdata, k: int):
    obs = sdata.tables["table"].obs
    arr = np.column_stack([obs["array_col"].to_numpy(), obs["array_row"].to_numpy()]).astype(int) // k
    keys, member = np.unique(arr, axis=0, return_inverse=True)
    member = member.ravel()
    X = _counts(sdata)
    xy = _centers_um(sdata)
    pooled = np.stack([X[member == g].sum(0) for g in range(len(keys))])
    centers = np.stack([xy[member == g].mean(0) for g in range(len(keys))])
    return pooled, centers, member


def test_pool_fit_sees_only_pseudo_spots(st_slide, spy):
    slide = st_slide
    res = stp.tl.cross_validate(slide, SPY, protocol="pool", pool=2, progress=False)
    pooled, pcenters, member = _pool_by_hand(slide, 2)
    genes = res.genes[0]
    (fit,) = _fits(spy)
    (seen,) = fit["slides"]
    assert len(seen["obs"]) == len(pooled) < slide.tables["table"].n_obs
    assert set(seen["obs"]).isdisjoint(slide.tables["table"].obs_names)
    # targets are the pooled counts' (sums of the member spots), never a measured spot's own
    np.testing.assert_allclose(seen["y"], _lognorm(pooled, _cols(slide, genes)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(seen["centers_px"], pcenters, rtol=1e-10)  # 1 µm/px
    np.testing.assert_array_equal(seen["meta"]["membership"], member)
    (pred,) = _predicts(spy)
    assert pred["obs"] == seen["obs"]  # the context is the pooled slide
    np.testing.assert_allclose(pred["regions_px"], stp.pp.spots(slide).centers)
    (split,) = res.splits
    assert split.train_obs == {0: seen["obs"]}
    assert split.test_obs == list(slide.tables["table"].obs_names)
    assert res.params["pool"] == 2
    assert res.folds.loc[0, "n_train"] == len(pooled)


def test_pool_gate_learns_from_out_of_fold_fits_of_the_pools(spy):
    from stpredict.tl._cv_folds import GATE_FOLDS

    slide = _synthetic(0, layout="st", size=2400)  # enough pools (>= 2 per gate fold) for the gate's folds
    res = stp.tl.cross_validate(slide, SPY, protocol="pool", pool=2, condition="measured", progress=False)
    pooled, _, _ = _pool_by_hand(slide, 2)
    assert len(pooled) >= 2 * GATE_FOLDS
    final, *gate = _fits(spy)
    (seen,) = final["slides"]
    assert len(seen["obs"]) == len(pooled)  # the scored model is fitted on every pool
    assert len(gate) == GATE_FOLDS
    held_out = []
    for fit in gate:
        (part,) = fit["slides"]
        assert 0 < len(part["obs"]) < len(pooled)
        assert set(part["obs"]) <= set(seen["obs"])  # pools only, never a measured spot
        held = [o for o in seen["obs"] if o not in set(part["obs"])]
        held_out += held
        # each gate fit's held-out pools are predicted, with its training pools as context
        assert any(p["obs"] == part["obs"] and len(p["regions_px"]) == len(held) for p in _predicts(spy))
    assert sorted(held_out) == sorted(seen["obs"])  # every pool held out exactly once
    assert np.isfinite(res.scores["pearson"]).any()


def test_copy_baseline_pool_reproduces_by_hand(st_slide):
    slide = st_slide
    res = stp.tl.cross_validate(slide, "copy", protocol="pool", pool=2, progress=False)
    genes = res.genes[0]
    cols = _cols(slide, genes)
    pooled, pcenters, _ = _pool_by_hand(slide, 2)
    _, idx = cKDTree(pcenters).query(_centers_um(slide), k=1)
    y_true = _lognorm(_counts(slide), cols)
    y_pred = _lognorm(pooled, cols)[idx]
    _assert_scores(res, 0, _scores_by_hand(y_true, y_pred))


def test_split_counts_gives_two_parts_that_sum_to_the_counts():
    from stpredict.tl._cv_folds import split_counts

    X = np.random.default_rng(0).poisson(20.0, size=(400, 30))
    a, b = split_counts(sp.csr_matrix(X.astype(np.float32)), 0.5, [0, 0])
    a, b = a.toarray(), b.toarray()
    np.testing.assert_array_equal(a + b, X)
    assert (a >= 0).all() and (b >= 0).all()
    assert abs(a.sum() / X.sum() - 0.5) < 0.01
    # Poisson thinning: the parts are uncorrelated (the input's noise is not the truth's)
    r = np.corrcoef((a - a.mean(0)).ravel(), (b - b.mean(0)).ravel())[0, 1]
    assert abs(r) < 0.02
    a2, _ = split_counts(sp.csr_matrix(X), 0.5, [0, 0])
    np.testing.assert_array_equal(a2.toarray(), a)  # seeded


def test_copy_pool_with_count_split_pools_one_part_and_scores_against_the_other(st_slide):
    from stpredict.tl._cv_folds import split_counts

    slide = st_slide
    res = stp.tl.cross_validate(slide, "copy", protocol="pool", pool=2, count_split=0.5, seed=3, progress=False)
    assert res.params["count_split"] == 0.5
    genes = res.genes[0]
    cols = _cols(slide, genes)
    part, rest = split_counts(sp.csr_matrix(_counts(slide)), 0.5, [3, 0])  # seed, fold
    _, pcenters, member = _pool_by_hand(slide, 2)
    pooled = np.stack([part.toarray()[member == g].sum(0) for g in range(member.max() + 1)])
    _, idx = cKDTree(pcenters).query(_centers_um(slide), k=1)
    _assert_scores(res, 0, _scores_by_hand(_lognorm(rest.toarray(), cols), _lognorm(pooled, cols)[idx]))
    plain = stp.tl.cross_validate(slide, "copy", protocol="pool", pool=2, seed=3, progress=False)
    assert plain.params["count_split"] is None
    assert (plain.scores["pearson"] > res.scores["pearson"]).mean() > 0.5  # shared noise flatters the copy


def test_count_split_is_checked_before_any_work(slides):
    slide = slides[0]
    for bad in (0, 1.0, -0.5, True, "half"):
        with pytest.raises(ValueError, match="count_split must be a fraction"):
            stp.tl.cross_validate(slide, "copy", protocol="pool", count_split=bad, progress=False)
    with pytest.raises(ValueError, match="applies to protocol='pool'"):
        stp.tl.cross_validate(slides, "mean", protocol="loso", count_split=0.5, progress=False)
    fractional = _fresh(0)
    fractional.tables["table"].X = sp.csr_matrix(_counts(fractional) * 1.5 + 31.25)
    with pytest.raises(ValueError, match="count_split splits each spot's counts binomially.*non-integer"):
        stp.tl.cross_validate(fractional, "copy", protocol="pool", count_split=0.5, progress=False)


@pytest.mark.parametrize(
    "layout",
    ["st", "visium"],
)
def test_pool_blocks_hold_pool_squared_spots(spy, layout):
    """Visium's array_col steps by 2 along a row: it is halved, so 2 x 2 blocks hold 4 spots as on ST."""
    sdata = _synthetic(0, layout=layout, size=1024)
    stp.tl.cross_validate(sdata, SPY, protocol="pool", pool=2, progress=False)
    (fit,) = _fits(spy)
    sizes = np.asarray(fit["slides"][0]["meta"]["pool_sizes"])
    assert sizes.sum() == sdata.tables["table"].n_obs
    assert sizes.max() == 4
    if layout == "visium":
        # by hand: (array_col // 2 // 2, array_row // 2); each block is 2 neighbouring spots of 2 neighbouring rows
        obs = sdata.tables["table"].obs
        col, row = obs["array_col"].to_numpy(), obs["array_row"].to_numpy()
        assert len(np.unique((col + row) % 2)) == 1  # hexagonal: one parity
        keys = np.column_stack([col // 2 // 2, row // 2])
        _, member = np.unique(keys, axis=0, return_inverse=True)
        np.testing.assert_array_equal(fit["slides"][0]["meta"]["membership"], member.ravel())
        xy = _centers_um(sdata)
        for g in np.unique(member):
            block = xy[member.ravel() == g]
            assert np.ptp(block, axis=0).max() <= 2 * 100.0 + 1e-6  # within one pitch or two of each other


def test_pool_without_array_coordinates_uses_the_fitted_lattice(spy):
    """No array coordinates: blocks of the fitted lattice, also k*k spots."""
    sdata = _synthetic(0, layout="visium", size=1024)
    sdata.tables["table"].obs = sdata.tables["table"].obs.drop(columns=["array_col", "array_row"])
    stp.tl.cross_validate(sdata, SPY, protocol="pool", pool=2, progress=False)
    (fit,) = _fits(spy)
    sizes = np.asarray(fit["slides"][0]["meta"]["pool_sizes"])
    assert sizes.sum() == sdata.tables["table"].n_obs
    assert sizes.max() == 4


# -------------------------------------------------------------------------------------------------
# the result
# -------------------------------------------------------------------------------------------------
def test_result_records_everything(slides):
    res = stp.tl.cross_validate(slides[:2], "mean", protocol="loso", seed=5, n_genes=6, progress=False)
    assert isinstance(res, CVResult)
    p = res.params
    assert p["model"] == "mean"
    assert p["protocol"] == "leave_one_section_out"
    assert p["seed"] == 5
    assert p["n_genes"] == 6
    assert p["fraction"] is None and p["pool"] is None and p["groups"] is None
    assert len(res.splits) == len(res.folds) == len(res.genes) == 2
    assert set(res.genes) == {0, 1}
    assert all(len(g) == 6 for g in res.genes.values())
    assert list(res.scores.columns) == [
        "gene", "fold", "slide", "pearson", "spearman", "mse", "mae", "truth_var", "n",
    ]  # fmt: skip
    for f in range(2):
        assert res.scores.loc[res.scores["fold"] == f, "gene"].tolist() == res.genes[f]
    assert {"fold", "slide", "n_train", "n_test", "n_genes", "pearson_mean", "n_nan_genes"} <= set(res.folds)
    s = res.summary()
    assert set(s) == {
        "pcc_mean", "pcc_sd_folds", "pcc_q25", "pcc_median", "pcc_q75", "mse", "n_folds", "n_nan_genes",
        "fit_seconds", "predict_seconds", "embed_seconds",
    }  # fmt: skip
    assert s["n_folds"] == 2
    assert "mean" in repr(res) and "leave_one_section_out" in repr(res)
    hide = stp.tl.cross_validate(slides[0], "mean", protocol="hide", fraction=0.3, progress=False)
    assert hide.params["protocol"] == "hide_spots"
    assert hide.params["fraction"] == 0.3


def _constant_test_gene_slide():
    """gene_7 is zero in every hidden spot (constant truth) but detected in the training spots."""
    sdata = _fresh(0)
    X = _counts(sdata)
    tr, te = hide_spots_split(len(X), 0.5, 0)
    j = _cols(sdata, ["gene_7"])[0]
    X[te, j] = 0
    X[tr, j] = 3 + np.arange(len(tr)) % 4
    _set_counts(sdata, X)
    return sdata


def test_constant_truth_genes_are_dropped_and_counted():
    sdata = _constant_test_gene_slide()
    res = stp.tl.cross_validate(sdata, "neighbors", protocol="hide", fraction=0.5, seed=0, progress=False)
    assert "gene_7" in res.genes[0]
    pcc = res.scores.set_index("gene")["pearson"]
    assert np.isnan(pcc["gene_7"])
    assert pcc.drop("gene_7").notna().all()
    assert res.folds.loc[0, "n_nan_genes"] == 1
    valid = pcc.dropna().to_numpy()
    assert res.folds.loc[0, "pearson_mean"] == pytest.approx(valid.mean())
    s = res.summary()
    assert s["n_nan_genes"] == 1
    assert s["pcc_mean"] == pytest.approx(valid.mean())
    assert [s["pcc_q25"], s["pcc_median"], s["pcc_q75"]] == pytest.approx(np.percentile(valid, [25, 50, 75]).tolist())


def test_summary_mse_drops_constant_truth_genes():
    sdata = _constant_test_gene_slide()
    res = stp.tl.cross_validate(sdata, "neighbors", protocol="hide", fraction=0.5, seed=0, progress=False)
    ok = res.scores["pearson"].notna()
    assert not ok.all()
    assert res.summary()["mse"] == pytest.approx(res.scores.loc[ok, "mse"].mean())
    assert res.summary()["mse"] != pytest.approx(res.scores["mse"].mean())


def test_same_seed_same_splits_and_scores(slide):
    kw = {"protocol": "hide", "fraction": 0.5, "progress": False}
    a = stp.tl.cross_validate(slide, "neighbors", seed=11, **kw)
    b = stp.tl.cross_validate(slide, "neighbors", seed=11, **kw)
    c = stp.tl.cross_validate(slide, "neighbors", seed=12, **kw)
    assert a.splits == b.splits
    assert a.genes == b.genes
    pd.testing.assert_frame_equal(a.scores, b.scores)
    assert a.splits[0].test_obs != c.splits[0].test_obs
    assert a.params["seed"] == 11 and c.params["seed"] == 12


@pytest.mark.slow
def test_ridge_is_deterministic_and_leaves_sdata_untouched(slide):
    from spatialdata import deepcopy

    sdata = deepcopy(slide)
    t = sdata.tables["table"]
    before = (t.shape, sorted(t.layers), sorted(t.obsm), sorted(t.uns), sorted(t.obs.columns), t.X.copy())
    a = stp.tl.cross_validate(sdata, "ridge", protocol="hide", seed=0, progress=False)
    b = stp.tl.cross_validate(sdata, "ridge", protocol="hide", seed=0, progress=False)
    pd.testing.assert_frame_equal(a.scores, b.scores)
    assert a.params["backbone"]["backbone"] == "handcrafted"
    t = sdata.tables["table"]
    after = (t.shape, sorted(t.layers), sorted(t.obsm), sorted(t.uns), sorted(t.obs.columns))
    assert after == before[:-1]
    np.testing.assert_array_equal(t.X.toarray(), before[-1].toarray())
    assert set(sdata.shapes) == {"spots"} and set(sdata.tables) == {"table"}


# -------------------------------------------------------------------------------------------------
# errors and model resolution
# -------------------------------------------------------------------------------------------------
def test_errors(slides):
    with pytest.raises(ValueError, match="Unknown protocol"):
        stp.tl.cross_validate(slides, "mean", protocol="kfold")
    with pytest.raises(ValueError, match="at least two slides"):
        stp.tl.cross_validate(slides[0], "mean", protocol="loso")
    with pytest.raises(ValueError, match="interpolates measured spots"):
        stp.tl.cross_validate(slides, "neighbors", protocol="loso")
    with pytest.raises(ValueError, match="groups"):
        stp.tl.cross_validate(slides, "mean", protocol="lopo")
    with pytest.raises(ValueError, match="groups"):
        stp.tl.cross_validate(slides, "mean", protocol="lopo", groups=["p", "q"])
    with pytest.raises(ValueError, match="two patients"):
        stp.tl.cross_validate(slides, "mean", protocol="lopo", groups=["p", "p", "p"], progress=False)
    with pytest.raises(ValueError, match="fraction"):
        stp.tl.cross_validate(slides[0], "mean", protocol="hide", fraction=1.0, progress=False)
    fitted = stp.models.create_predictor("mean")
    fitted.genes = ["gene_0"]
    with pytest.raises(ValueError, match="fresh model"):
        stp.tl.cross_validate(slides, fitted, protocol="loso")


def test_unfitted_instance_is_refitted_per_fold(slides, spy):
    res = stp.tl.cross_validate(slides, spy(), protocol="loso", progress=False)
    assert res.params["model"] == SPY
    assert len(_fits(spy)) == 3


def test_unregistered_subclass_instance_is_used(slides, spy):
    class Sub(spy):
        """Unregistered subclass."""

    stp.tl.cross_validate(slides, Sub(), protocol="loso", progress=False)
    assert {c["cls"] for c in _fits(spy)} == {"Sub"}
    stp.tl.cross_validate(slides[0], Sub(), protocol="pool", progress=False)
    assert _fits(spy)[-1]["cls"] == "Sub"


def test_config_device_and_progress_reach_every_fold(slide):
    """The fresh per-fold copy keeps the prototype's configuration and gets the call's device/progress."""
    from stpredict.models.baselines import NeighborsBaseline

    seen = []

    class Recording(NeighborsBaseline):
        """Unregistered: records the copies it is fitted as."""

        def fit(self, slides, **kw):
            seen.append((dict(self.config), self.device, self.progress))
            return super().fit(slides, **kw)

    proto = Recording(k=3)
    res = stp.tl.cross_validate(slide, proto, protocol="hide", device="cpu", progress=False)
    assert seen == [({"k": 3}, "cpu", False)]
    assert res.params["config"] == {"k": 3}
    assert not proto.is_fitted  # the prototype itself is never fitted


def test_slides_sharing_obs_names_do_not_warn(slides):
    assert slides[0].tables["table"].obs_names[0] == slides[1].tables["table"].obs_names[0]
    stp.tl.cross_validate(slides, "mean", protocol="loso", progress=False)  # two training slides per fold


def test_slides_of_one_name_are_told_apart(slides):
    """Synthetic slides are all named after their spots element: '#i' is appended, as stp.tl.fit does."""
    res = stp.tl.cross_validate(slides, "mean", protocol="loso", progress=False)
    names = res.folds["slide"].tolist()
    assert len(set(names)) == 3
    base = names[0].rsplit("#", 1)[0]
    assert names == [f"{base}#{i}" for i in range(3)]
    assert res.scores.groupby("fold")["slide"].first().tolist() == names
    # distinct names are kept as they are
    res = stp.tl.cross_validate(slides, "mean", protocol="loso", names=["a", "b", "c"], progress=False)
    assert res.folds["slide"].tolist() == ["a", "b", "c"]


def test_gene_selection_records_each_folds_method(slides):
    res = stp.tl.cross_validate(slides[:2], "mean", protocol="loso", n_genes=50, progress=False)  # 30 genes < 50
    hows = res.folds["gene_selection"].tolist()
    assert all(h.startswith("all ") and "detected genes" in h for h in hows)
    for f, h in enumerate(hows):
        assert h == f"all {len(res.genes[f])} detected genes"
    assert "HVG" not in res.params["gene_selection"] and "highly variable" not in res.params["gene_selection"]
    assert all(h in res.params["gene_selection"] for h in hows)
    res = stp.tl.cross_validate(slides[:2], "mean", protocol="loso", n_genes=6, progress=False)
    assert (res.folds["gene_selection"] == "top 6 highly variable genes (seurat_v3) of the training spots").all()
    assert res.params["gene_selection"].startswith("top 6 highly variable genes (seurat_v3)")
    res = stp.tl.cross_validate(slides[0], "mean", protocol="hide", genes=["gene_0", "gene_1"], progress=False)
    assert res.params["gene_selection"] == "given"
