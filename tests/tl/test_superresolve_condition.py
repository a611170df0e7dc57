"""superresolve(condition=...): a conditioned grid pooled back over every measured spot gives the spot."""

from __future__ import annotations

import numpy as np
import pytest

import stpredict as stp
from stpredict.pp._condition_core import circle_circle_area, circle_square_area
from stpredict.tl._targets import targets


@pytest.fixture(scope="module")
def slide():
    return stp.datasets.synthetic(image_size=768, n_genes=5, seed=0)


def _measured(sdata, genes):
    geo = stp.pp.spots(sdata)
    _, lin, _ = targets(sdata.tables["table"], geo.rows, genes, None)
    return geo, lin


def _pooled(grid, geo, kind: str, size_um: float) -> np.ndarray:
    """Overlap-area-weighted mean of the grid (linear units) over each measured spot, areas in closed form."""
    centers = geo.px_to_um(np.asarray(grid.obsm["spatial"]))
    spots = geo.centers_um
    r = geo.diameter_um / 2
    d = centers[None, :, :] - spots[:, None, :]
    if kind == "square":
        area = circle_square_area(d[..., 0], d[..., 1], r, size_um)
    else:
        area = circle_circle_area(np.hypot(d[..., 0], d[..., 1]), r, size_um / 2)
    lin = np.expm1(np.asarray(grid.X, dtype=float))
    return (area @ lin) / area.sum(1, keepdims=True)


@pytest.mark.parametrize(("grid", "kind"), [("bin16um", "square"), ("ps4", "circle")])
def test_conditioned_grid_pools_back_to_the_measured_spots(slide, grid, kind):
    stp.tl.superresolve(slide, "ridge", grid=grid, progress=False)
    g = slide.tables[f"ridge_spots_{grid}"]
    rec = g.uns["stpredict"]["superresolve"]
    assert rec["condition"]["condition"] == "measured"
    assert rec["condition"]["max_rel_error"] <= 1e-4
    geo, lin = _measured(slide, list(g.var_names))
    pooled = _pooled(g, geo, kind, float(rec["region_size_um"]))
    rel = np.abs(pooled - lin) / np.maximum(np.abs(lin), 1e-3)
    assert rel.max() <= 1e-4
    # the image-only prediction is kept beside it, and it does not agree with the spots
    image = g.layers["image_only"]
    assert image.shape == g.X.shape
    assert not np.allclose(image, g.X)
    assert (g.layers["predicted_std"] >= 0).all()


def test_condition_none_is_the_image_only_prediction(slide):
    stp.tl.superresolve(slide, "ridge", grid="ps4", condition="none", key_added="plain", progress=False)
    stp.tl.superresolve(slide, "ridge", grid="ps4", key_added="cond", progress=False)
    plain, cond = slide.tables["plain"], slide.tables["cond"]
    assert "image_only" not in plain.layers
    assert plain.uns["stpredict"]["superresolve"]["condition"]["condition"] == "none"
    np.testing.assert_allclose(np.asarray(plain.X), cond.layers["image_only"], rtol=1e-6, atol=1e-6)


def test_condition_measured_needs_counts(slide):
    pred = stp.tl.fit(slide, "ridge", progress=False, cache_embeddings=False)
    he_only = stp.datasets.synthetic(image_size=768, n_genes=5, seed=0)
    del he_only.tables["table"]
    with pytest.raises(ValueError, match="condition='none'"):
        stp.tl.superresolve(he_only, pred, grid="ps4", condition="measured", progress=False)
    assert set(he_only.tables) == set()
    assert "spots_ps4" not in he_only.shapes
    stp.tl.superresolve(he_only, pred, grid="ps4", progress=False)  # default: image-only there
    rec = he_only.tables["ridge_spots_ps4"].uns["stpredict"]["superresolve"]
    assert rec["condition"]["condition"] == "none"
    with pytest.raises(ValueError, match="'denoised' or 'none'"):
        stp.tl.superresolve(slide, "ridge", grid="ps4", condition="exact", progress=False)


def test_cross_validate_pool_takes_the_condition(slide):
    res = stp.tl.cross_validate(slide, "ridge", protocol="pool", condition="measured", progress=False)
    assert res.params["condition"] == "measured"
    assert np.isfinite(res.scores["pearson"]).any()
    with pytest.raises(ValueError, match="protocol='pool'"):
        stp.tl.cross_validate(slide, "ridge", protocol="hide", condition="measured", progress=False)


def test_condition_denoised_pools_back_to_the_denoised_spots(slide):
    stp.tl.superresolve(slide, "ridge", grid="bin16um", condition="denoised", key_added="den", progress=False)
    stp.tl.superresolve(slide, "ridge", grid="bin16um", key_added="exact", progress=False)
    den, exact = slide.tables["den"], slide.tables["exact"]
    rec = den.uns["stpredict"]["superresolve"]["condition"]
    assert rec["condition"] == "denoised"
    assert len(rec["denoise"]["dispersion"]) == den.n_vars
    assert 0.0 < rec["denoise"]["shrinkage_median"] < 1.0
    # the same image-only prediction and gate; only the level differs, and it is the denoised spots exactly
    np.testing.assert_allclose(den.layers["image_only"], exact.layers["image_only"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(rec["weights"], exact.uns["stpredict"]["superresolve"]["condition"]["weights"])
    geo, lin = _measured(slide, list(den.var_names))
    _, _, lib = targets(slide.tables["table"], geo.rows, list(den.var_names), None)
    pooled_den = _pooled(den, geo, "square", 16.0)
    prior = _pooled(_with_x(den, den.layers["image_only"]), geo, "square", 16.0)
    level = stp.pp.denoise_measured(lin, lib, prior).values
    np.testing.assert_allclose(pooled_den, level, rtol=1e-4, atol=1e-6)
    assert not np.allclose(pooled_den, lin, rtol=1e-3)
    # between the measurement and the prediction, gene by gene
    pooled_exact = _pooled(exact, geo, "square", 16.0)
    assert np.abs(pooled_den - prior).sum() < np.abs(pooled_exact - prior).sum()


def _with_x(adata, x):
    out = adata.copy()
    out.X = np.asarray(x)
    return out


def test_cross_validate_pool_takes_denoised(slide):
    res = stp.tl.cross_validate(slide, "ridge", protocol="pool", condition="denoised", progress=False)
    assert res.params["condition"] == "denoised"
    assert np.isfinite(res.scores["pearson"]).any()
    with pytest.raises(ValueError, match="protocol='pool'"):
        stp.tl.cross_validate(slide, "ridge", protocol="hide", condition="denoised", progress=False)
