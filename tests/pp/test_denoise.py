"""denoise_measured: the Gamma–Poisson posterior mean of measured spots around a prediction."""

from __future__ import annotations

import numpy as np
import pytest

from stpredict.pp import denoise_measured


def _spots(n=400, g=6, depth=400.0, seed=0):
    """Spots with known rates (normalised to 1e4), their libraries and Poisson counts of them."""
    rng = np.random.default_rng(seed)
    rates = rng.gamma(2.0, 1.0, (n, g)) * rng.lognormal(3, 1, g)  # counts per 1e4
    lib = rng.uniform(0.5, 1.5, n) * depth
    counts = rng.poisson(rates * lib[:, None] / 1e4)
    return rates, lib, counts * 1e4 / lib[:, None]


def test_a_good_prior_denoises_toward_the_truth():
    rates, lib, measured = _spots()
    prior = rates * np.random.default_rng(1).lognormal(0, 0.1, rates.shape)  # a prediction 10 % off
    res = denoise_measured(measured, lib, prior)
    err_raw = ((measured - rates) ** 2).mean(0)
    err_den = ((res.values - rates) ** 2).mean(0)
    assert (err_den < 0.5 * err_raw).all()
    assert (res.dispersion < 0.1).all()  # ~0.01 = the prior's squared cv
    assert res.shrinkage.shape == measured.shape
    assert ((res.shrinkage >= 0) & (res.shrinkage <= 1)).all()


def test_an_uninformative_prior_keeps_the_measurement():
    rates, lib, measured = _spots(depth=20000.0)
    prior = np.broadcast_to(rates.mean(0), rates.shape) * np.random.default_rng(2).lognormal(0, 1, rates.shape)
    res = denoise_measured(measured, lib, prior)
    assert (res.dispersion > 0.5).all()
    # deep spots, a prior that explains nothing: the posterior is the measurement up to a few per cent
    np.testing.assert_allclose(res.values.sum(0), measured.sum(0), rtol=0.05)
    assert np.median(res.shrinkage) < 0.05


def test_more_counts_trust_the_measurement_more():
    rates, lib, measured = _spots()
    prior = rates * 1.5  # biased prediction
    shallow = denoise_measured(measured, lib, prior)
    deep = denoise_measured(measured, lib * 100, prior)
    assert np.median(deep.shrinkage) < np.median(shallow.shrinkage)


def test_a_zero_prior_does_not_erase_counts():
    rates, lib, measured = _spots()
    prior = rates.copy()
    prior[:, 0] = 0.0
    res = denoise_measured(measured, lib, prior)
    has = measured[:, 0] > 0
    assert (res.values[has, 0] > 0).all()
    assert np.isfinite(res.values).all()
    rec = res.summary()
    assert set(rec) == {"dispersion", "shrinkage_median", "shrinkage_mean"}
    assert len(rec["dispersion"]) == rates.shape[1]


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"library_size": np.ones(3)}, "do not match"),
        ({"prior": -np.ones((5, 2))}, "negative"),
        ({"measured": np.full((5, 2), np.nan)}, "non-finite"),
    ],
)
def test_bad_input_names_the_argument(kw, match):
    args = {"measured": np.ones((5, 2)), "library_size": np.ones(5), "prior": np.ones((5, 2))}
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        denoise_measured(**args)


def test_conditioning_denoises_toward_the_prediction_pooled_over_each_spot():
    """The denoising prior is ``W @ pred`` also when the gate learns from another spot pattern (out-of-fold)."""
    import scipy.sparse as sp

    from stpredict.pp import condition_on_spots

    rng = np.random.default_rng(0)
    side, g = 12, 4
    ij = np.stack(np.meshgrid(np.arange(side), np.arange(side), indexing="ij"), -1).reshape(-1, 2)
    region_xy = ij * 50.0 + 25.0  # 50 µm members, 2 x 2 per spot
    member = (ij[:, 0] // 2) * (side // 2) + ij[:, 1] // 2
    n_spots = member.max() + 1
    W = sp.csr_matrix((np.ones(len(member)), (member, np.arange(len(member)))), shape=(n_spots, len(member)))
    spot_xy = (W @ region_xy) / 4
    pred = rng.gamma(4.0, 50.0, (len(member), g))
    lib = rng.uniform(500, 1500, n_spots)
    measured = rng.poisson((W @ pred) / 4 * lib[:, None] / 1e4) * 1e4 / lib[:, None]
    oof = (W @ pred) / 4 * rng.lognormal(0, 0.5, (n_spots, g))  # another pattern for the gate
    res = condition_on_spots(
        pred, region_xy, spot_xy, measured, region_kind="circle", region_size_um=50.0, spot_diameter_um=100.0,
        overlap=W, library_size=lib, spot_pattern=oof,
    )  # fmt: skip
    level = (W @ res.values) / 4
    want = denoise_measured(measured, lib, (W @ pred) / 4).values
    np.testing.assert_allclose(level, want, rtol=1e-4, atol=1e-6)
    assert not np.allclose(want, denoise_measured(measured, lib, oof).values, rtol=1e-3)
