"""The hand-crafted backbone's optional feature groups: LBP, GLCM, colour levels and opened-mask nuclei."""

from __future__ import annotations

import numpy as np
import pytest

import stpredict as stp
from stpredict.models import HandcraftedBackbone
from stpredict.models.backbones._texture import GLCM_LEVELS, LBP_POINTS, glcm_maps, lbp_codes

ALL = ("base", "colour", "lbp", "glcm", "nuclei")


def test_lbp_codes_match_scikit_image():
    from skimage.feature import local_binary_pattern

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 50)).astype(np.uint8)
    inner = (slice(4, -4), slice(4, -4))  # the border differs: edge repetition vs skimage's zero padding
    for radius in (1.0, 3.0):
        ours = lbp_codes(img[None].astype(np.float64), radius)[0]
        np.testing.assert_array_equal(ours[inner], local_binary_pattern(img, LBP_POINTS, radius, "uniform")[inner])


def test_lbp_histograms_sum_to_one_per_radius():
    sdata = stp.datasets.synthetic(image_size=512, n_genes=3, seed=1)
    bb = HandcraftedBackbone(features=("lbp",))
    read_um, px = bb.input_spec(112.0)
    ds = stp.pp.patches(sdata, size_um=read_um, patch_px=px)
    feats = bb.embed(np.stack([np.asarray(ds[i]) for i in range(4)]))
    names = np.array(bb.feature_names)
    for view in ("context", "window", "centre"):
        for r in ("r1", "r3"):
            cols = [i for i, n in enumerate(names) if n.startswith(f"lbp_{r}_") and n.endswith(f"_{view}")]
            assert len(cols) == LBP_POINTS + 2
            np.testing.assert_allclose(feats[:, cols].sum(axis=1), 1.0, atol=1e-5)
            assert (feats[:, cols] >= 0).all()


def test_glcm_of_a_constant_image_and_of_a_checkerboard():
    const = np.full((1, 32, 32), 7.0, dtype=np.float32)
    for d in (1, 3):
        m = glcm_maps(const, d)[0]
        np.testing.assert_allclose(m[0].mean(), 0.0)  # contrast
        np.testing.assert_allclose(m[1].mean(), 0.0)  # dissimilarity
        np.testing.assert_allclose(m[2].mean(), 1.0)  # homogeneity
    # a one-pixel checkerboard of levels 0 and L − 1: horizontal and vertical pairs differ by L − 1 at odd
    # distances, diagonal pairs never; over the four angles, contrast (L − 1)² / 2, homogeneity (1 + 1/(1+(L−1)²)) / 2
    yy, xx = np.mgrid[:32, :32]
    board = (((yy + xx) % 2) * (GLCM_LEVELS - 1)).astype(np.float32)[None]
    inner = (slice(4, -4), slice(4, -4))
    for d in (1, 3):
        m = glcm_maps(board, d)[0]
        np.testing.assert_allclose(m[0][inner], (GLCM_LEVELS - 1) ** 2 / 2)
        np.testing.assert_allclose(m[1][inner], (GLCM_LEVELS - 1) / 2)
        np.testing.assert_allclose(m[2][inner], (1 + 1 / (1 + (GLCM_LEVELS - 1) ** 2)) / 2, rtol=1e-6)


def test_glcm_window_means_match_scikit_image():
    """Over a window, the maps' means are skimage's symmetric GLCM statistics averaged over the four angles."""
    from skimage.feature import graycomatrix, graycoprops

    rng = np.random.default_rng(3)
    q = rng.integers(0, GLCM_LEVELS, (200, 200))
    angles = [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4]
    for d in (1, 3):
        m = glcm_maps(q[None].astype(np.float32), d)[0]
        glcm = graycomatrix(q.astype(np.uint8), [d], angles, levels=GLCM_LEVELS, symmetric=True, normed=True)
        for j, prop in enumerate(("contrast", "dissimilarity", "homogeneity")):
            # the border pairs (an offset past the edge repeats it) are 1–3 % of the pixels here
            np.testing.assert_allclose(m[j].mean(), graycoprops(glcm, prop).mean(), rtol=0.04)


def test_feature_groups_are_checked():
    with pytest.raises(ValueError, match=r"unknown: 'haralick'"):
        HandcraftedBackbone(features=("base", "haralick"))
    with pytest.raises(ValueError, match="each feature group once"):
        HandcraftedBackbone(features=("lbp", "lbp"))
    with pytest.raises(ValueError, match="each feature group once"):
        HandcraftedBackbone(features=())


def test_groups_extend_the_base_features_and_are_recorded():
    bb = HandcraftedBackbone(features=ALL)
    base = HandcraftedBackbone()
    assert bb.dim == len(bb.feature_names) > base.dim
    assert "features" not in base.params() and bb.params()["features"] == list(ALL)
    sdata = stp.datasets.synthetic(image_size=512, n_genes=3, seed=4)
    read_um, px = bb.input_spec(112.0)
    ds = stp.pp.patches(sdata, size_um=read_um, patch_px=px)
    batch = np.stack([np.asarray(ds[i]) for i in range(3)])
    feats, ref = bb.embed(batch), base.embed(batch)
    assert np.isfinite(feats).all()
    per_view = bb.dim // 3
    for v in range(3):  # the base features come first in each view, unchanged
        np.testing.assert_array_equal(feats[:, v * per_view : v * per_view + 18], ref[:, v * 18 : (v + 1) * 18])


def test_dense_features_of_every_group_agree_with_windows():
    from stpredict.pp._tiles import tile_reader
    from stpredict.tl._embedding_loop import compute_embeddings

    sdata = stp.datasets.synthetic(image_size=640, n_genes=3, seed=0)
    slide, geo = stp.get.slide_data(sdata), stp.pp.spots(sdata)
    bb = HandcraftedBackbone(features=ALL[1:])
    windows = compute_embeddings(slide.image_levels, geo.centers, geo.microns_per_pixel_xy, bb, patch_size_um=112)
    um = geo.centers * np.asarray(geo.microns_per_pixel_xy)
    dense = bb.dense(tile_reader(slide.image_levels, geo.microns_per_pixel_xy), um, window_um=112)
    keep = windows.std(0) > 1e-6
    r = np.array([np.corrcoef(windows[:, j], dense[:, j])[0, 1] for j in np.flatnonzero(keep)])
    assert keep.mean() > 0.8
    assert np.median(r) > 0.999
    assert r.min() > 0.9


def test_a_fitted_model_predicts_with_its_feature_groups():
    """A model fitted on extra groups rebuilds the same backbone from its record to predict a new slide."""
    train = stp.datasets.synthetic(image_size=512, n_genes=5, seed=5)
    new = stp.datasets.synthetic(image_size=512, n_genes=5, seed=6)
    bb = HandcraftedBackbone(features=("base", "glcm"))
    model = stp.tl.fit(train, "ridge", backbone=bb, n_genes=5, progress=False)
    assert model.backbone["features"] == ["base", "glcm"]
    out = stp.tl.predict(new, model, inplace=False, progress=False)
    pred = np.asarray(out.layers["predicted"])
    assert pred.shape == (out.n_obs, 5) and np.isfinite(pred).all()
