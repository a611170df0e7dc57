from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import HER2ST_SECTIONS, her2st_paths, shared_data

import stpredict as stp


def _roundtrip(sdata, tmp_path):
    from spatialdata import read_zarr

    path = tmp_path / "s.zarr"
    sdata.write(path)
    return read_zarr(path)


def _assert_same(a, b):
    assert set(a.images) == set(b.images) and set(a.shapes) == set(b.shapes) and set(a.tables) == set(b.tables)
    for k in a.tables:
        ta, tb = a.tables[k], b.tables[k]
        assert (ta.obs_names == tb.obs_names).all()
        assert (ta.var_names == tb.var_names).all()
        assert abs(ta.X - tb.X).sum() == 0
    for k in a.shapes:
        ga, gb = a.shapes[k], b.shapes[k]
        np.testing.assert_allclose(ga.geometry.x, gb.geometry.x)
        np.testing.assert_allclose(ga["radius"], gb["radius"])
    ga, gb = stp.pp.spots(a), stp.pp.spots(b)
    np.testing.assert_allclose(ga.centers, gb.centers)
    np.testing.assert_allclose(ga.microns_per_pixel_xy, gb.microns_per_pixel_xy)
    for k in a.images:
        lv_a = np.asarray(stp._image.image_levels(a.images[k])[-1].array)
        lv_b = np.asarray(stp._image.image_levels(b.images[k])[-1].array)
        np.testing.assert_array_equal(lv_a, lv_b)


def test_mob_demo(sdata_mob, tmp_path):
    table = sdata_mob.tables["table"]
    assert table.shape == (379, 1000)
    assert table.X.dtype == np.int32
    geo = stp.pp.spots(sdata_mob)
    # spot centres equal the source alignment table exactly
    src = shared_data("mob", "counts")
    ali = pd.read_csv(src / "alignment_table_MOB1.tsv", sep="\t")
    ali.index = [f"{x}x{y}" for x, y in zip(ali.x, ali.y, strict=True)]
    np.testing.assert_array_equal(geo.centers, ali.loc[table.obs_names, ["pixel_x", "pixel_y"]].to_numpy())
    counts = pd.read_csv(src / "MOB1.tsv", sep="\t", index_col=0)
    np.testing.assert_array_equal(table.X.toarray(), counts.loc[table.obs_names].to_numpy())
    # anisotropic pixels: 200 µm per x+2 / y+2 step on the 2k array
    assert 4.4 < geo.microns_per_pixel_xy[0] < 4.8 and 4.0 < geo.microns_per_pixel_xy[1] < 4.3
    assert geo.diameter_um == pytest.approx(100.0)
    assert "MIT" in table.uns["stpredict_source"]["license"]
    _assert_same(sdata_mob, _roundtrip(sdata_mob, tmp_path))


@pytest.mark.realdata
@pytest.mark.parametrize("section", list(HER2ST_SECTIONS))
def test_read_st_her2st(section, tmp_path):
    counts, spots, image = her2st_paths(section)
    sdata = stp.io.read_st(counts, spots, image)
    table = sdata.tables["table"]
    src = pd.read_csv(spots, sep="\t")
    src.index = [f"{x}x{y}" for x, y in zip(src.x, src.y, strict=True)]
    cnt = pd.read_csv(counts, sep="\t", index_col=0)
    expected = {"C2": 187, "C3": 180, "C4": 184, "C5": 181, "C6": 178}[section]
    assert table.n_obs == expected
    geo = stp.pp.spots(sdata)
    np.testing.assert_array_equal(geo.centers, src.loc[table.obs_names, ["pixel_x", "pixel_y"]].to_numpy())
    np.testing.assert_array_equal(table.X[:5].toarray(), cnt.loc[table.obs_names[:5]].to_numpy())
    # 290 px per 200 µm, spot ≈ 145 px
    assert 0.67 < geo.microns_per_pixel < 0.71
    assert 140 < geo.diameter < 150
    if section == "C2":
        _assert_same(sdata, _roundtrip(sdata, tmp_path))


def test_read_visium_fixture(tmp_path):
    path = shared_data("visium_format_fixture")
    sdata = stp.io.read_visium(path, dataset_id="fx")
    # the blank hires PNG is dropped; the lowres image is used
    assert list(sdata.images) == ["fx_lowres_image"]
    geo = stp.pp.spots(sdata)
    assert geo.n_spots == 100
    pos = pd.read_csv(path / "spatial" / "tissue_positions_list.csv", header=None, index_col=0)
    s = 0.045004502
    exp = pos.loc[sdata.tables["table"].obs_names, [5, 4]].to_numpy() * s
    np.testing.assert_allclose(geo.centers, exp, rtol=1e-6)
    assert geo.diameter == pytest.approx(89.42751063343188 * s, rel=1e-6)
    assert geo.microns_per_pixel == pytest.approx(55 / 89.42751063343188 / s, rel=1e-6)
    _assert_same(sdata, _roundtrip(sdata, tmp_path))


def test_from_arrays_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
    coords = np.array([[50.0, 60.0], [200.0, 150.5], [350.0, 250.0]])
    counts = pd.DataFrame([[1, 2], [0, 5], [3, 0]], index=["a", "b", "c"], columns=["g1", "g2"])
    sdata = stp.io.from_arrays(img, coords, counts, 0.5, 55.0)
    geo = stp.pp.spots(sdata)
    np.testing.assert_array_equal(geo.centers, coords)
    assert list(geo.obs_names) == ["a", "b", "c"]
    assert geo.diameter == pytest.approx(110.0)
    level0 = np.asarray(stp._image.image_levels(sdata.images["he"])[0].array)
    np.testing.assert_array_equal(level0, img.transpose(2, 0, 1))
    _assert_same(sdata, _roundtrip(sdata, tmp_path))


def test_from_arrays_bad_input():
    img = np.zeros((50, 50, 3), np.uint8)
    with pytest.raises(ValueError, match="rows but coords"):
        stp.io.from_arrays(img, np.zeros((2, 2)), np.zeros((3, 1)), 1.0, 55)
    with pytest.raises(ValueError, match="positive"):
        stp.io.from_arrays(img, np.zeros((2, 2)), np.zeros((2, 1)), -1.0, 55)


def test_a_lowres_only_slide_is_fitted_with_a_warning(caplog, sdata_mob):
    """The fixture's spots are 4 px across in its only (lowres) image: fitting says so instead of going silent."""
    import logging

    from stpredict._validate import warn_coarse_image

    sdata = stp.io.read_visium(shared_data("visium_format_fixture"), dataset_id="fx")
    with caplog.at_level(logging.WARNING, logger="stpredict"):
        stp.tl.fit(sdata, "ridge", n_genes=5, progress=False)
    assert any("4.0 px across" in r.getMessage() and "full-resolution" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stpredict"):  # the demo's 23 px spots are fine
        warn_coarse_image([stp.get.slide_data(sdata_mob)])
    assert not caplog.records
