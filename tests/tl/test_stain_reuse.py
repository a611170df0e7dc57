"""Stain normalisation pays once: kept slide estimates, the identity map skipped, passes shared by equal references."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import stpredict as stp
from stpredict._image import image_levels
from stpredict.pp._stain import StainNormalizer
from stpredict.pp._stain_slide import SlideStainMap, normalized_levels, slide_stain_map, tissue_pixels
from stpredict.tl import _transfer


def _slide(seed=0, size=384):
    return stp.datasets.synthetic(image_size=size, n_genes=6, microns_per_pixel=1.0, seed=seed)


def _levels(sdata):
    geo = stp.pp.spots(sdata)
    return image_levels(sdata.images[geo.image_key]), geo.microns_per_pixel_xy


@pytest.fixture(autouse=True)
def _fresh_estimates():
    _transfer.clear_stain_estimates()
    yield
    _transfer.clear_stain_estimates()


def test_a_map_within_tolerance_of_the_identity_leaves_every_uint8_value_as_it_is():
    rng = np.random.default_rng(0)
    every = np.repeat(np.arange(256, dtype=np.uint8)[None, None], 3, axis=0)  # each value on each channel
    mixed = rng.integers(0, 256, (3, 64, 64), dtype=np.uint8)
    tol = SlideStainMap.IDENTITY_TOL
    near = np.eye(3) + rng.uniform(-tol, tol, (3, 3))
    smap = SlideStainMap("macenko", matrix=near)
    assert smap.is_identity
    for block in (every, mixed):
        np.testing.assert_array_equal(smap(block), block)
    assert not SlideStainMap("macenko", matrix=np.eye(3) * 1.01).is_identity
    assert not SlideStainMap("hed_jitter", matrix=np.eye(3), offset=np.zeros(3)).is_identity


def test_tissue_pixels_sample_is_the_optical_density_rule():
    levels, mpp = _levels(_slide())
    px = tissue_pixels(levels, mpp)
    od = stp.pp.rgb_to_od(px)
    assert px.dtype == np.uint8 and px.shape[0] == 3 and px.shape[1] > 1000
    assert (od > 0.15).all()


def test_normalised_levels_are_named_by_slide_and_map():
    levels, mpp = _levels(_slide())
    own = StainNormalizer("macenko").fit(tissue_pixels(levels, mpp))
    other = StainNormalizer("macenko").fit(tissue_pixels(*_levels(_slide(seed=3))))
    a1 = normalized_levels(levels, slide_stain_map(other, own))
    a2 = normalized_levels(levels, slide_stain_map(other, own))
    b = normalized_levels(levels, slide_stain_map(own, other))
    assert [lv.array.name for lv in a1] == [lv.array.name for lv in a2]  # same slide, same map: same arrays
    assert not {lv.array.name for lv in a1} & {lv.array.name for lv in b}  # another reference: other arrays
    np.testing.assert_array_equal(a1[0].array.compute(), a2[0].array.compute())


def test_fit_on_one_slide_normalises_to_itself_and_shares_the_raw_embeddings():
    raw = _slide()
    m_none = stp.tl.fit(raw, "ridge", progress=False)
    emb_none = np.asarray(raw.tables["table"].obsm["X_handcrafted"]).copy()
    m_mac = stp.tl.fit(raw, "ridge", stain="macenko", progress=False)
    assert m_mac.backbone["stain"]["method"] == "macenko"  # the reference still travels with the model
    rec = raw.tables["table"].uns["stpredict"]["embeddings"]["X_handcrafted"]
    assert "stain" not in rec  # the slide is its own reference: its pixels, and so its features, are unchanged
    np.testing.assert_array_equal(np.asarray(raw.tables["table"].obsm["X_handcrafted"]), emb_none)
    a = stp.tl.predict(_slide(), m_none, inplace=False)
    b = stp.tl.predict(_slide(), m_mac, inplace=False)
    np.testing.assert_allclose(b.layers["predicted"], a.layers["predicted"], rtol=1e-6, atol=1e-6)


def test_stain_estimates_are_kept_between_calls_and_change_nothing(monkeypatch):
    calls = []
    orig = _transfer.tissue_pixels

    def spy(*args, **kwargs):
        calls.append(1)
        return orig(*args, **kwargs)

    monkeypatch.setattr(_transfer, "tissue_pixels", spy)
    train = [_slide(0), _slide(1)]
    model = stp.tl.fit(train, "ridge", stain="macenko", progress=False)
    assert len(calls) == 2
    new = _slide(2)
    first = stp.tl.predict(new, model, inplace=False)
    second = stp.tl.predict(_slide(2), model, inplace=False)  # the same pixels: the estimate is kept
    assert len(calls) == 3
    _transfer.clear_stain_estimates()
    third = stp.tl.predict(_slide(2), model, inplace=False)
    assert len(calls) == 4
    np.testing.assert_array_equal(second.layers["predicted"], first.layers["predicted"])
    np.testing.assert_array_equal(third.layers["predicted"], first.layers["predicted"])


def test_embedding_cache_is_not_reused_across_references():
    new = _slide(2)
    table = new.tables["table"]
    stp.tl.fit([new, _slide(1)], "ridge", stain="macenko", progress=False)  # caches features under its reference
    cached = table.uns["stpredict"]["embeddings"]["X_handcrafted"]["stain"]["reference"]
    m_b = stp.tl.fit([_slide(0), _slide(3)], "ridge", stain="macenko", progress=False)
    ref_b = _transfer.StainNormalizer.from_record(m_b.backbone["stain"])
    assert cached != _transfer.SlideStains.digest(ref_b)
    reused = stp.tl.predict(new, m_b, inplace=False, progress=False)
    fresh = stp.tl.predict(_slide(2), m_b, inplace=False, progress=False)
    np.testing.assert_array_equal(reused.layers["predicted"], fresh.layers["predicted"])


def test_cross_validate_folds_with_the_same_reference_share_their_embedding_passes(monkeypatch):
    from stpredict.tl import _embeddings

    slides = [_slide(s) for s in range(4)]
    groups = ["a", "a", "b", "b"]
    passes = []
    orig = _embeddings.EmbeddingCache.spots

    def spy(self, *args, **kwargs):
        passes.append(1)
        return orig(self, *args, **kwargs)

    monkeypatch.setattr(_embeddings.EmbeddingCache, "spots", spy)
    kw = {"protocol": "lopo", "groups": groups, "n_genes": 4, "stain": "macenko", "progress": False}
    shared = stp.tl.cross_validate(slides, "ridge", **kw)
    assert len(passes) == 8  # 2 references × 4 slides, not 4 folds × 3 slides
    passes.clear()
    counter = iter(range(100))
    monkeypatch.setattr(_transfer.SlideStains, "digest", staticmethod(lambda ref: f"fold{next(counter)}"))
    alone = stp.tl.cross_validate(slides, "ridge", **kw)
    assert len(passes) == 12
    np.testing.assert_array_equal(shared.scores["pearson"].to_numpy(), alone.scores["pearson"].to_numpy())


def _pale(sdata):
    """``sdata``'s spots and counts on a near-white image: no pixel is tissue by Macenko's rule (OD > 0.15)."""
    geo = stp.pp.spots(sdata)
    img = np.asarray(image_levels(sdata.images[geo.image_key])[0].array.compute())
    pale = (235 + img // 64).astype(np.uint8)
    table = sdata.tables[geo.table_key][geo.rows]
    return stp.io.from_arrays(
        pale, geo.centers, table.X, geo.microns_per_pixel_xy, geo.diameter_um, genes=list(table.var_names)
    )


def test_fit_normalises_with_macenko_by_default_and_none_stays_none(tmp_path):
    default = stp.tl.fit([_slide(0), _slide(1)], "ridge", progress=False)
    assert default.backbone["stain"]["method"] == "macenko"
    plain = stp.tl.fit([_slide(0), _slide(1)], "ridge", stain="none", progress=False)
    assert "stain" not in plain.backbone
    plain.save(tmp_path / "plain.pt")  # a checkpoint without a stain record, as every one saved before
    loaded = stp.models.load(tmp_path / "plain.pt")
    transfer, reference = _transfer.fitted_transfer(loaded, None, None)
    assert transfer.stain == "none" and reference is None
    with pytest.raises(ValueError, match="fitted with stain='none'"):
        stp.tl.predict(_slide(2), loaded, stain="macenko", progress=False)


def test_cross_validate_scores_fit_s_default_pipeline(caplog):
    slides = [_slide(0), _slide(1), _slide(2)]
    kw = {"n_genes": 4, "seed": 0, "progress": False}
    default = stp.tl.cross_validate(slides, "ridge", protocol="loso", **kw)
    assert default.params["stain"] == "macenko"  # as fit(stain=None)
    explicit = stp.tl.cross_validate(slides, "ridge", protocol="loso", stain="macenko", **kw)
    pd.testing.assert_frame_equal(default.scores, explicit.scores)
    plain = stp.tl.cross_validate(slides, "ridge", protocol="loso", stain="none", **kw)
    assert plain.params["stain"] == "none"
    assert not np.allclose(plain.scores["pearson"], default.scores["pearson"])  # the default did normalise
    # a model that never reads the image, and a protocol within one slide: nothing to normalise
    assert stp.tl.cross_validate(slides, "mean", protocol="loso", **kw).params["stain"] == "none"
    assert stp.tl.cross_validate(slides[0], "ridge", protocol="hide", **kw).params["stain"] == "none"
    # a slide whose stains cannot be estimated: the default falls back to none before any fold, as in fit
    with caplog.at_level("WARNING", logger="stpredict"):
        pale = stp.tl.cross_validate([_pale(_slide(0)), *slides[1:]], "ridge", protocol="loso", **kw)
    assert pale.params["stain"] == "none" and "is not applied" in caplog.text
    assert pale.failures.empty


def test_default_stain_falls_back_to_none_on_a_slide_without_tissue_pixels(caplog):
    pale = _pale(_slide(0))
    with caplog.at_level("WARNING", logger="stpredict"):
        model = stp.tl.fit(pale, "ridge", n_genes=4, progress=False)
    assert "stain" not in model.backbone
    assert "is not applied" in caplog.text
    with pytest.raises(_transfer.StainEstimateError, match="too few to estimate its stains"):
        stp.tl.fit(_pale(_slide(0)), "ridge", n_genes=4, stain="macenko", progress=False)


def test_default_stain_is_skipped_for_a_model_that_never_reads_the_image(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the image was read for its stains")

    monkeypatch.setattr(_transfer, "tissue_pixels", fail)
    model = stp.tl.fit([_slide(0), _slide(1)], "mean", n_genes=4, progress=False)
    assert "stain" not in (model.backbone or {})
