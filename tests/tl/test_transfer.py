"""Stain normalisation and per-slide feature standardisation in the one input path."""

from __future__ import annotations

import numpy as np
import pytest

import stpredict as stp
from stpredict._image import image_levels
from stpredict.pp._stain import RUIFROK_HED, StainNormalizer, od_to_rgb, rgb_to_od, stain_concentrations
from stpredict.pp._stain_slide import normalized_levels, slide_stain_map, tissue_pixels


def _slide(seed=0, size=640):
    return stp.datasets.synthetic(image_size=size, n_genes=8, microns_per_pixel=1.0, seed=seed)


def _stain_shifted(sdata, h=1.35, e=0.7, od_shift=(0.0, 0.0, 0.0)):
    """A copy of ``sdata`` whose H&E is re-stained: H and E concentrations (Ruifrok basis) scaled, OD offset."""
    geo = stp.pp.spots(sdata)
    img = np.asarray(image_levels(sdata.images[geo.image_key])[0].array.compute())
    od = rgb_to_od(img)
    hed = RUIFROK_HED / np.linalg.norm(RUIFROK_HED, axis=1, keepdims=True)
    c = stain_concentrations(od, hed, channel_axis=0)  # (3, h, w): H, E, residual along DAB
    c = c * np.array([h, e, 1.0])[:, None, None]
    od2 = np.einsum("khw,kc->chw", c, hed) + np.asarray(od_shift)[:, None, None]
    table = sdata.tables[geo.table_key][geo.rows]
    return stp.io.from_arrays(
        od_to_rgb(od2), geo.centers, table.X, geo.microns_per_pixel_xy, geo.diameter_um, genes=list(table.var_names)
    )


def _levels(sdata):
    geo = stp.pp.spots(sdata)
    return image_levels(sdata.images[geo.image_key]), geo.microns_per_pixel_xy


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_normalising_a_slide_to_itself_is_the_identity(method):
    levels, mpp = _levels(_slide(size=512))
    own = StainNormalizer(method).fit(tissue_pixels(levels, mpp))
    out = normalized_levels(levels, slide_stain_map(own, own))
    for a, b in zip(out, levels, strict=True):
        diff = np.abs(np.asarray(a.array.compute()).astype(int) - np.asarray(b.array.compute()).astype(int))
        assert diff.max() <= 1  # rounding of the uint8 round trip
        assert diff.mean() < 0.01


@pytest.mark.parametrize(("method", "ratio", "most"), [("macenko", 0.5, 0.35), ("reinhard", 0.7, 0.65)])
def test_stain_shifted_copy_gets_back_the_original_features(method, ratio, most):
    """Features of a re-stained copy, normalised onto the original's reference, are close to the original's.

    Tolerance, as the mean absolute difference of the hand-crafted features in units of their sd over the spots:
    Macenko (which models the re-staining: H and E concentrations scaled) at most half the re-staining's
    difference and 0.35 sd; Reinhard (colour moments in CIELAB, which the re-staining moves non-linearly) at most
    0.7 of it and 0.65 sd. Measured: Macenko 0.92 -> 0.29, Reinhard 0.92 -> 0.54.
    """
    from stpredict.tl._transfer import SlideStains

    ref_sd, shifted = _slide(), _stain_shifted(_slide())
    slides = [stp.get.slide_data(s, "ridge", genes=None, n_genes=4, progress=False) for s in (ref_sd, shifted)]
    base, raw = slides[0].embeddings, slides[1].embeddings
    stains = SlideStains(method)
    reference = stains.reference([slides[0]])
    normed = stains.normalize(slides[1], reference)
    from stpredict.models.backbones import get_backbone
    from stpredict.tl._embedding_loop import compute_embeddings

    fixed = compute_embeddings(
        normed.image_levels, normed.centers_px, normed.microns_per_pixel_xy, get_backbone("handcrafted"),
        patch_size_um=112.0, progress=False,
    )  # fmt: skip
    sd = base.std(0) + 1e-6
    err_raw = np.mean(np.abs(raw - base) / sd)
    err_fixed = np.mean(np.abs(fixed - base) / sd)
    assert err_fixed < ratio * err_raw
    assert err_fixed < most


def test_macenko_falls_back_on_confounded_stains():
    # one hue only: the two Macenko extremes coincide, the Ruifrok vectors are used
    rng = np.random.default_rng(0)
    od = rng.uniform(0.2, 1.5, (1, 64, 64)) * np.array([0.6, 0.7, 0.35])[:, None, None]
    stains = stp.pp.macenko_stains(od_to_rgb(od))
    np.testing.assert_allclose(stains, RUIFROK_HED[:2])


def test_reference_travels_in_the_checkpoint(tmp_path):
    train, new = _slide(0), _stain_shifted(_slide(1))
    pred = stp.tl.fit(train, "ridge", n_genes=4, stain="macenko", progress=False)
    rec = pred.backbone["stain"]
    assert rec["method"] == "macenko" and np.shape(rec["stains"]) == (2, 3) and len(rec["max_conc"]) == 2
    path = pred.save(tmp_path / "m")
    loaded = stp.models.load(path)
    assert loaded.backbone["stain"] == rec
    a = stp.tl.predict(new, pred, inplace=False, progress=False)
    b = stp.tl.predict(new, loaded, inplace=False, progress=False)
    np.testing.assert_allclose(a.layers["predicted"], b.layers["predicted"], rtol=1e-5, atol=1e-6)
    assert b.uns["stpredict"]["predicted"]["backbone"]["stain"]["method"] == "macenko"
    # the normalised slide is what is embedded: not the same as without normalisation
    plain = stp.tl.fit(train, "ridge", n_genes=4, progress=False)
    c = stp.tl.predict(new, plain, inplace=False, progress=False)
    assert not np.allclose(a.layers["predicted"], c.layers["predicted"])
    with pytest.raises(ValueError, match="fitted with stain='macenko'"):
        stp.tl.predict(new, loaded, stain="reinhard", progress=False)


def test_bad_options_fail_before_work():
    sdata = _slide()
    before = set(sdata.tables["table"].obsm)
    with pytest.raises(ValueError, match="stain must be one of"):
        stp.tl.fit(sdata, "ridge", stain="vahadane")
    with pytest.raises(ValueError, match="feature_norm must be one of"):
        stp.tl.predict(sdata, "ridge", feature_norm="batch")
    assert set(sdata.tables["table"].obsm) == before


def test_feature_norm_standardises_spots_and_grid_with_the_slide_statistics():
    sdata = _slide()
    slide = stp.get.slide_data(sdata, "ridge", n_genes=4, feature_norm="slide", progress=False)
    emb = slide.embeddings
    np.testing.assert_allclose(emb.mean(0), 0.0, atol=1e-4)
    assert np.all((np.abs(emb.std(0) - 1.0) < 1e-3) | (emb.std(0) < 1e-6))
    stp.tl.superresolve(sdata, "ridge", grid="ps4", n_genes=4, feature_norm="slide", progress=False)
    rec = sdata.tables["ridge_spots_ps4"].uns["stpredict"]["superresolve"]
    assert rec["backbone"]["feature_norm"] == "slide" and rec["embeddings"]["feature_norm"] == "slide"
    # without the option, the features are as computed
    raw = stp.get.slide_data(sdata, "ridge", n_genes=4, progress=False).embeddings
    assert np.abs(raw.mean(0)).max() > 1e-2
    np.testing.assert_allclose((raw - raw.mean(0)) / np.where(raw.std(0) > 1e-8, raw.std(0), 1), emb, atol=1e-3)


def test_cross_validate_fits_each_fold_reference_on_its_training_slides(monkeypatch):
    from stpredict.tl import _transfer

    slides = [_slide(0, 512), _stain_shifted(_slide(1, 512)), _slide(2, 512)]
    seen = []
    orig = _transfer.SlideStains.reference

    def spy(self, sl):
        seen.append(sorted(s.name for s in sl))
        return orig(self, sl)

    monkeypatch.setattr(_transfer.SlideStains, "reference", spy)
    res = stp.tl.cross_validate(slides, "ridge", protocol="loso", n_genes=4, stain="reinhard", progress=False)
    assert res.params["stain"] == "reinhard"
    names = list(res.folds["slide"])
    assert len(seen) == 3
    for test_name, train_names in zip(names, seen, strict=True):
        assert test_name not in train_names and len(train_names) == 2
    assert np.isfinite(res.summary()["pcc_mean"])


def test_hed_jitter_map_identity_and_augmented_copies_are_reproducible():
    from stpredict.pp._stain_slide import hed_jitter_map
    from stpredict.tl._transfer import augment_slide

    levels, _ = _levels(_slide(size=512))
    same = normalized_levels(levels, hed_jitter_map(np.ones(3), np.zeros(3)))
    a, b = np.asarray(same[0].array.compute()).astype(int), np.asarray(levels[0].array.compute()).astype(int)
    assert np.abs(a - b).max() <= 1
    slide = stp.get.slide_data(_slide(size=512), "ridge", n_genes=4, progress=False)
    c1, c2, other = augment_slide(slide, 0, 0), augment_slide(slide, 0, 0), augment_slide(slide, 0, 1)
    x1, x2, x3 = (np.asarray(c.image_levels[0].array.compute()) for c in (c1, c2, other))
    np.testing.assert_array_equal(x1, x2)
    assert np.abs(x1.astype(int) - x3.astype(int)).mean() > 0.5  # another draw, another stain
    assert np.abs(x1.astype(int) - b).mean() > 0.5
    assert c1.meta["stain"]["augment"] != other.meta["stain"]["augment"]


def test_stain_augment_trains_on_restained_copies_with_the_slide_targets(monkeypatch):
    from stpredict.models.ridge import RidgePredictor

    seen = {}
    orig = RidgePredictor.fit

    def spy(self, slides, **kw):
        seen["slides"] = list(slides)
        return orig(self, slides, **kw)

    monkeypatch.setattr(RidgePredictor, "fit", spy)
    sdata = _slide()
    pred = stp.tl.fit(sdata, "ridge", n_genes=4, stain_augment=2, progress=False)
    slides = seen["slides"]
    assert [s.name for s in slides][1:] == [f"{slides[0].name}~stain1", f"{slides[0].name}~stain2"]
    for copy in slides[1:]:
        np.testing.assert_array_equal(copy.y, slides[0].y)
        assert copy.embeddings.shape == slides[0].embeddings.shape
        assert not np.allclose(copy.embeddings, slides[0].embeddings)
    assert pred.training["stain_augment"] == 2 and pred.training["n_spots"] == 3 * slides[0].n  # rows fitted
    # raw embeddings, not the copies', are what the table caches
    np.testing.assert_allclose(
        sdata.tables["table"].obsm["X_handcrafted"][stp.pp.spots(sdata).rows], slides[0].embeddings
    )
    with pytest.raises(ValueError, match="already fitted"):
        stp.tl.predict(sdata, pred, stain_augment=1)
    with pytest.raises(ValueError, match="stain_augment must be"):
        stp.tl.fit(sdata, "ridge", stain_augment=-1)
    # out-of-fold predict: copies of each fold's training spots only
    stp.tl.predict(sdata, "ridge", n_genes=4, stain_augment=1, oof_folds=2, progress=False)
    names = [s.name for s in seen["slides"]]
    assert len(names) == 2 and names[1].endswith("~stain1")
    assert seen["slides"][1].n == seen["slides"][0].n < slides[0].n
