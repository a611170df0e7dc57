from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from _hd_fixture import HIRES_SCALEF, write_visium_hd

import stpredict as stp
from stpredict.pp._spots import image_microns_per_pixel
from stpredict.tl._targets import targets

GENES = ["gene_0", "gene_1", "gene_2", "gene_3"]


@pytest.fixture(scope="module")
def hd(tmp_path_factory):
    """A Space Ranger HD folder (8 and 16 µm bins) over a 0.5 µm/px synthetic H&E."""
    return write_visium_hd(tmp_path_factory.mktemp("hd") / "slide_a", seed=0)


@pytest.fixture(scope="module")
def hd_b(tmp_path_factory):
    return write_visium_hd(tmp_path_factory.mktemp("hd") / "slide_b", seed=1)


def _read(truth, **kw):
    return stp.io.read_visium_hd(truth.outs, fullres_image_file=truth.fullres, **kw)


@pytest.mark.parametrize("bin_size", [8, 16])
def test_bins_are_squares_at_the_true_centres(hd, bin_size):
    sdata = _read(hd, bin_size=bin_size, dataset_id="fx")
    key = f"square_{bin_size:03d}um"
    # only the chosen bin size is read; the table annotates its square bins
    assert list(sdata.tables) == [key] and list(sdata.shapes) == [f"fx_{key}"]
    table = sdata.tables[key]
    attrs = table.uns["spatialdata_attrs"]
    assert attrs["region"] == f"fx_{key}" and attrs["region_key"] == "region"
    assert attrs["instance_key"] == "location_id"
    assert table.X.dtype == np.int32
    truth_counts = hd.counts[bin_size]
    np.testing.assert_array_equal(table.X.toarray(), truth_counts.loc[table.obs_names].to_numpy())
    assert table.n_obs == int(hd.bins[bin_size]["in_tissue"].sum()) > 80

    geo = stp.pp.spots(sdata)
    assert geo.image_key == "fx_full_image" and geo.kind == "square"
    assert geo.microns_per_pixel_xy == pytest.approx((0.5, 0.5))
    assert geo.mpp_source == "micrometers"
    assert geo.diameter_um == pytest.approx(bin_size)  # a square's diameter is its side
    bins = hd.bins[bin_size].loc[geo.obs_names]
    np.testing.assert_allclose(geo.centers_um, bins[["centre_x_um", "centre_y_um"]].to_numpy(), atol=1e-3)
    # the squares themselves: side bin_size µm, axis-aligned, centred on the bins
    shapes = sdata.shapes[f"fx_{key}"]
    bounds = shapes.geometry.bounds.to_numpy() * hd.microns_per_pixel
    np.testing.assert_allclose(bounds[:, 2] - bounds[:, 0], bin_size, atol=1e-3)
    np.testing.assert_allclose(bounds[:, 3] - bounds[:, 1], bin_size, atol=1e-3)
    np.testing.assert_allclose(shapes.geometry.area * hd.microns_per_pixel**2, bin_size**2, rtol=1e-5)
    src = sdata.tables[key].uns["stpredict_source"]
    assert src["bin_size_um"] == bin_size and src["finest_image"] == "fullres"


def test_pixel_size_with_fullres_and_with_hires_only(hd):
    full = _read(hd, dataset_id="fx")
    level0 = np.asarray(stp._image.image_levels(full.images["fx_full_image"])[0].array)
    np.testing.assert_array_equal(level0, hd.image.transpose(2, 0, 1))
    # every image carries its own µm per pixel; the finest is used
    mpp = {k: image_microns_per_pixel(full, image_key=k) for k in full.images}
    assert mpp == pytest.approx({"fx_full_image": 0.5, "fx_hires_image": 2.0, "fx_lowres_image": 4.0})

    hires = stp.io.read_visium_hd(hd.outs, dataset_id="fx")
    assert "fx_full_image" not in hires.images
    geo_h, geo_f = stp.pp.spots(hires), stp.pp.spots(full)
    assert geo_h.image_key == "fx_hires_image"
    assert geo_h.microns_per_pixel == pytest.approx(0.5 / HIRES_SCALEF)
    assert geo_h.diameter == pytest.approx(8 * HIRES_SCALEF / 0.5)  # 4 hires pixels
    # the same bins, in µm, whichever image
    np.testing.assert_allclose(geo_h.centers_um, geo_f.centers_um, atol=1e-3)
    np.testing.assert_allclose(geo_h.centers * 4, geo_f.centers, atol=1e-3)
    assert hires.tables["square_008um"].uns["stpredict_source"]["finest_image"] == "hires"


def test_zarr_round_trip(hd, tmp_path):
    from spatialdata import read_zarr

    sdata = _read(hd)
    sdata.write(tmp_path / "hd.zarr")
    back = read_zarr(tmp_path / "hd.zarr")
    assert set(back.images) == set(sdata.images) and set(back.tables) == set(sdata.tables)
    a, b = stp.pp.spots(sdata), stp.pp.spots(back)
    assert b.kind == "square" and b.diameter_um == pytest.approx(8.0)
    np.testing.assert_allclose(b.centers, a.centers)
    assert b.microns_per_pixel_xy == pytest.approx(a.microns_per_pixel_xy)
    np.testing.assert_array_equal(back.tables["square_008um"].X.toarray(), sdata.tables["square_008um"].X.toarray())
    assert back.tables["square_008um"].uns["stpredict_source"]["technology"] == "Visium HD"


def test_predict_and_superresolve_on_bins(hd):
    sdata = _read(hd)
    stp.tl.predict(sdata, "ridge", genes=GENES, progress=False)
    table = sdata.tables["square_008um"]
    pred = table.layers["predicted"]
    assert pred.shape == table.shape and np.isfinite(pred[:, table.var["predicted"].to_numpy()]).all()

    # 4 µm squares: each 8 µm bin is exactly four of them (the bins sit on the image's 8 µm grid)
    stp.tl.superresolve(sdata, "ridge", grid="bin4um", genes=GENES, tissue=False, progress=False)
    grid = sdata.tables["ridge_outs_square_008um_bin4um"]
    rec = grid.uns["stpredict"]["superresolve"]
    assert rec["condition"]["condition"] == "measured" and rec["region_size_um"] == 4.0
    geo = stp.pp.spots(sdata)
    sub_um = geo.px_to_um(np.asarray(grid.obsm["spatial"]))
    bin_um = geo.centers_um
    # the 4 sub-squares of every bin, by their centres at (±2, ±2) µm
    d = np.abs(sub_um[None, :, :] - bin_um[:, None, :])
    inside = (np.abs(d - 2.0) < 1e-3).all(axis=2)
    assert (inside.sum(axis=1) == 4).all()
    # pooled back over its bin (linear space), the grid gives the measured bin
    _, measured, _ = targets(table, geo.rows, list(grid.var_names), None)
    lin = np.expm1(np.asarray(grid.X, dtype=float))
    pooled = (inside @ lin) / 4.0
    np.testing.assert_allclose(pooled, measured, rtol=1e-3, atol=1e-3 * measured.max())


def test_cross_validate_two_hd_slides(hd, hd_b):
    a, b = _read(hd), _read(hd_b)
    res = stp.tl.cross_validate([a, b], "ridge", genes=GENES, names=["a", "b"], progress=False)
    assert list(res.folds["slide"]) == ["a", "b"]
    assert set(res.scores["gene"]) == set(GENES)
    assert (res.folds["n_test"].to_numpy() == [a.tables["square_008um"].n_obs, b.tables["square_008um"].n_obs]).all()
    assert np.isfinite(res.scores["pearson"]).all()


def test_bad_input(hd, tmp_path):
    with pytest.raises(ValueError, match=r"No 2 µm bins.*present are \[8, 16\]"):
        stp.io.read_visium_hd(hd.outs, bin_size=2)
    with pytest.raises(FileNotFoundError, match="nope.tif.*does not exist"):
        stp.io.read_visium_hd(hd.outs, fullres_image_file=tmp_path / "nope.tif")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        stp.io.read_visium_hd(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="binned_outputs"):
        stp.io.read_visium_hd(tmp_path)
    with pytest.raises(TypeError, match="sets.*bin_size"):
        stp.io.read_visium_hd(hd.outs, bins_as_squares=False)
    # the hires PNG passed as the full-resolution image would make every pixel 4× too small
    with pytest.raises(ValueError, match="not a downsampled one"):
        stp.io.read_visium_hd(hd.outs, fullres_image_file=hd.outs / "spatial" / "tissue_hires_image.png")


def test_inconsistent_scalefactors_and_missing_files(hd, tmp_path):
    outs = tmp_path / "outs"
    shutil.copytree(hd.outs, outs)
    sf_path = outs / "binned_outputs" / "square_016um" / "spatial" / "scalefactors_json.json"
    sf = json.loads(sf_path.read_text())
    sf["microns_per_pixel"] = 0.25
    sf_path.write_text(json.dumps(sf))
    with pytest.raises(ValueError, match="disagree with its 16 µm bins"):
        stp.io.read_visium_hd(outs, bin_size=16)
    (outs / "feature_slice.h5").unlink()
    with pytest.raises(FileNotFoundError, match="no feature_slice.h5"):
        stp.io.read_visium_hd(outs, bin_size=8)
    (outs / "binned_outputs" / "square_008um" / "spatial" / "tissue_positions.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="tissue_positions.parquet"):
        stp.io.read_visium_hd(outs, bin_size=8)


@pytest.mark.parametrize("squares", [True, False])
def test_spatialdata_io_bins_without_micrometers_are_not_visium_spots(hd, squares):
    """Read straight with spatialdata-io, HD bins have Visium's obs columns but are not 55 µm spots."""
    import spatialdata_io

    sdata = spatialdata_io.visium_hd(
        hd.outs, dataset_id="fx", bin_size=[8], bins_as_squares=squares, load_segmentations_only=False,
        fullres_image_file=hd.fullres,
    )  # fmt: skip
    assert ("radius" in sdata.shapes["fx_square_008um"].columns) is not squares
    with pytest.raises(ValueError, match="No physical pixel size"):
        stp.pp.spots(sdata)
    geo = stp.pp.spots(sdata, microns_per_pixel=0.5)
    assert geo.kind == ("square" if squares else "circle") and geo.diameter_um == pytest.approx(8.0)
