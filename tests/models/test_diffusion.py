"""Cross-modal diffusion: lattice maps, reproducible sampling, and the synthetic must-shows at a test budget."""

from __future__ import annotations

import numpy as np
import pytest
from smoke import smoke_config

import stpredict as stp
from stpredict.models._diffusion_sampler import coarse_condition
from stpredict.pp._lattice import lattice_map, pool2

FAST = {"max_epochs": 12, "steps_per_epoch": 40, "n_samples": 8, "steps": 12}


@pytest.mark.parametrize(("layout", "size"), [("visium", 600), ("st", 1400)])
def test_lattice_map_puts_each_spot_in_its_own_cell(layout, size):
    sdata = stp.datasets.synthetic(image_size=size, n_genes=3, layout=layout, seed=0)
    geo = stp.pp.spots(sdata)
    values = np.arange(geo.n_spots, dtype=float)[:, None] + 1
    lm = lattice_map(geo.centers, values)
    assert lm.mask.sum() == geo.n_spots
    cells = lm.centers_px()[lm.mask.ravel()]
    # every measured cell sits on its spot (to a fraction of a pixel), carrying that spot's value
    order = np.argsort(lm.values[0][lm.mask])
    np.testing.assert_allclose(cells[order], geo.centers, atol=0.5)
    fine = lm.finer(2)
    assert fine.shape == ((lm.shape[0] - 1) * 2 + 1, (lm.shape[1] - 1) * 2 + 1)
    # the fine lattice contains the measured positions at even indices
    np.testing.assert_allclose(
        fine.centers_px().reshape(*fine.shape, 2)[::2, ::2], lm.centers_px().reshape(*lm.shape, 2)
    )


def test_pool2_pools_measured_cells_as_summed_counts():
    """The pooled value is the normalised expression of the summed counts of the measured cells."""
    rng = np.random.default_rng(0)
    counts = rng.poisson(5.0, size=(4, 4)).astype(float)
    lib = rng.integers(500, 3000, size=(4, 4)).astype(float)
    v = np.log1p(counts / lib * 1e4)[None].astype(np.float32)
    m = np.ones((4, 4), bool)
    m[0, 0] = False
    low, lmask = pool2(v, m, weights=lib)
    assert lmask.all()
    sel = m[:2, :2]
    expect = np.log1p(counts[:2, :2][sel].sum() / lib[:2, :2][sel].sum() * 1e4)
    assert low[0, 0, 0] == pytest.approx(expect, rel=1e-5)
    expect = np.log1p(counts[2:, 2:].sum() / lib[2:, 2:].sum() * 1e4)
    assert low[0, 1, 1] == pytest.approx(expect, rel=1e-5)
    # without library sizes: the linear mean, never the mean of the logs
    low, _ = pool2(v, m)
    assert low[0, 1, 1] == pytest.approx(np.log1p(np.expm1(v[0, 2:, 2:]).mean()), rel=1e-5)
    assert low[0, 1, 1] > v[0, 2:, 2:].mean()
    up, cover = coarse_condition(low, lmask, (4, 4), training=True)
    assert up.shape == (1, 4, 4) and cover.shape == (4, 4)


def test_sampling_is_reproducible_and_seeded(sdata_syn):
    cfg = smoke_config("diffusion")
    genes = list(sdata_syn.tables["table"].var_names[:4])
    p = stp.tl.fit(sdata_syn, "diffusion", genes=genes, seed=0, progress=False, max_epochs=2, **cfg)
    out = []
    for seed in (0, 0, 1):
        stp.tl.superresolve(sdata_syn, p, grid="ps4", seed=seed, progress=False, tissue=False)
        t = sdata_syn.tables["diffusion_spots_ps4"]
        out.append((np.asarray(t.X).copy(), np.asarray(t.layers["predicted_std"]).copy()))
        assert t.uns["stpredict"]["superresolve"]["n_samples"] == cfg["n_samples"]
    np.testing.assert_array_equal(out[0][0], out[1][0])
    assert not np.array_equal(out[0][0], out[2][0])
    assert (out[0][1] >= 0).all() and (out[0][1] > 0).any()


def _fine_truth(truth, fine, keep, geo):
    centers_um = fine.centers_px()[keep] * geo.microns_per_pixel
    lam = truth.mean_rates(centers_um, geo.diameter_um / 2, "circle")  # a ps4 pseudo-spot: half the spot diameter
    ok = lam.sum(1) > 0
    return np.log1p(lam / np.maximum(lam.sum(1, keepdims=True), 1e-12) * 1e4), ok


@pytest.mark.slow
def test_beats_bicubic_and_is_calibrated():
    """Sample mean closer to the high-resolution truth than bicubic upsampling (PCC and SSIM); 90 % coverage.

    Known (2026-12-07): on this slide the calibrated residual gate is 0 for 9 of 10 genes at both the CPU and the
    GPU budget (10 or 30 epochs), so the sample mean is the model's interpolated coarse condition: this test
    checks the map representation, the interpolation and the calibrated spread, not yet a learned refinement.
    The gate is right to close: with it forced open the mean scores PCC 0.783 against the truth, below the
    interpolation's 0.811 (CPU budget, seed 5).
    """
    from scipy.ndimage import zoom

    from stpredict.pp._lattice import fill

    sdata = stp.datasets.synthetic(image_size=1200, n_genes=10, depth=50, seed=5)
    genes = list(sdata.tables["table"].var_names)
    slide, geo = stp.get.slide_data(sdata, genes=genes), stp.pp.spots(sdata)
    p = stp.models.create_predictor("diffusion", **FAST)
    p.device, p.progress = "cpu", False
    p.fit([slide], genes=genes, seed=0)
    lm = lattice_map(slide.centers_px, slide.y)
    maps, fine = p.sample_maps(slide, lm, seed=0)
    keep = fine.mask.ravel()
    truth, ok = _fine_truth(stp.datasets.synthetic_truth(sdata), fine, keep, geo)
    n, G, H, W = maps.shape
    samples = maps.reshape(n, G, -1)[:, :, keep].transpose(0, 2, 1)
    mean = samples.mean(0)
    zf = (1, (H - 1) / (lm.shape[0] - 1), (W - 1) / (lm.shape[1] - 1))
    bicubic = zoom(fill(lm.values, lm.mask), zf, order=3, grid_mode=False)[:, :H, :W].reshape(G, -1)[:, keep].T

    def as_maps(v):
        out = np.full((G, H * W), np.nan)
        v = v.copy()
        v[~ok] = np.nan
        out[:, np.flatnonzero(keep)] = v.T
        return out.reshape(G, H, W)

    pcc_model = np.nanmean(stp.metrics.pearson_per_gene(truth[ok], mean[ok]))
    pcc_bicubic = np.nanmean(stp.metrics.pearson_per_gene(truth[ok], bicubic[ok]))
    ssim_model = np.nanmean(stp.metrics.map_ssim(as_maps(truth), as_maps(mean)))
    ssim_bicubic = np.nanmean(stp.metrics.map_ssim(as_maps(truth), as_maps(bicubic)))
    lo, hi = np.percentile(samples, [5, 95], axis=0)
    coverage = float(((truth >= lo) & (truth <= hi))[ok].mean())
    print(
        f"PCC {pcc_model:.3f} vs bicubic {pcc_bicubic:.3f}; SSIM {ssim_model:.3f} vs {ssim_bicubic:.3f}; coverage90 {coverage:.2f}"
    )
    assert pcc_model > pcc_bicubic
    assert ssim_model > ssim_bicubic
    assert 0.75 <= coverage <= 0.99
