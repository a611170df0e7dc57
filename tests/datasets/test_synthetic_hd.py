"""``stp.datasets.synthetic(layout="visium_hd")``: 8 µm square bins with known truth, usable as a measured slide."""

from __future__ import annotations

import numpy as np
import pytest

import stpredict as stp

BIN_UM = 8.0
SPOT_AREA_UM2 = np.pi * 27.5**2


@pytest.fixture(scope="module")
def hd():
    # 600 µm square at 0.5 µm/px (bins 16 px across): ~2,500 bins on tissue, ~15 Visium-like spots when pooled
    return stp.datasets.synthetic(image_size=1200, microns_per_pixel=0.5, layout="visium_hd", n_genes=6, seed=3)


def _centers_um(sdata):
    geo = stp.pp.spots(sdata)
    return geo, geo.centers_um


def _copy(sdata):
    """A SpatialData sharing the image and shapes, with its own copy of the counts table."""
    from spatialdata import SpatialData

    return SpatialData(
        images=dict(sdata.images), shapes=dict(sdata.shapes), tables={"table": sdata.tables["table"].copy()}
    )


def test_bins_are_squares_that_tile_without_overlap(hd):
    from shapely import union_all

    geo, centers = _centers_um(hd)
    table = hd.tables["table"]
    assert geo.kind == "square"
    assert geo.diameter_um == pytest.approx(BIN_UM)
    assert geo.n_spots == table.n_obs > 1000
    # on the 8 µm lattice from the image origin, one bin per (row, col)
    cell = centers / BIN_UM - 0.5
    np.testing.assert_allclose(cell, np.round(cell), atol=1e-9)
    rc = np.round(cell[:, ::-1]).astype(int)
    assert len({tuple(v) for v in rc}) == len(rc)
    order = table.obs_names.get_indexer(geo.obs_names)
    np.testing.assert_array_equal(table.obs[["array_row", "array_col"]].to_numpy()[order], rc)
    # squares (in pixels): their union is as large as their sum (no overlap), each of 64 µm²
    squares = hd.shapes["spots"].geometry.to_numpy()
    side_px = BIN_UM / geo.microns_per_pixel
    assert union_all(squares).area == pytest.approx(len(squares) * side_px**2, rel=1e-9)
    assert squares[0].area == pytest.approx(side_px**2)
    # Space Ranger's barcodes and obs, every bin under tissue
    assert table.obs_names[0].startswith("s_008um_") and table.obs_names[0].endswith("-1")
    assert (table.obs["in_tissue"] == 1).all()
    assert {"domain", "array_row", "array_col"} <= set(table.obs.columns)
    truth = stp.datasets.synthetic_truth(hd)
    assert truth.tissue(centers[:, 0], centers[:, 1]).all()
    assert hd.tables["table"].uns["stpredict_source"]["bin_size_um"] == BIN_UM


def test_counts_follow_the_truth(hd):
    _, centers = _centers_um(hd)
    geo = stp.pp.spots(hd)
    table = hd.tables["table"]
    counts = table[np.asarray(geo.obs_names)].X.toarray()
    depth = table.uns["synthetic"]["depth"]
    assert table.uns["synthetic"]["layout"] == "visium_hd"
    lam = stp.datasets.synthetic_truth(hd).mean_rates(centers, BIN_UM, "square")
    expected = depth * BIN_UM**2 / SPOT_AREA_UM2 * lam  # depth is per Visium spot area
    np.testing.assert_allclose(counts.sum(0), expected.sum(0), rtol=0.1)
    # Poisson around the truth, bin by bin: standardised residuals have mean 0 and variance 1
    pos = expected > 0
    z = (counts[pos] - expected[pos]) / np.sqrt(expected[pos])
    assert abs(z.mean()) < 0.05
    assert 0.9 < z.var() < 1.1
    assert (counts[~pos] == 0).all()
    # summed over 48 µm blocks (36 bins) the noise averages out and the truth shows, gene by gene
    block = np.floor(centers / 48.0).astype(int)
    _, inv = np.unique(block, axis=0, return_inverse=True)
    got = np.stack([np.bincount(inv.ravel(), weights=counts[:, g]) for g in range(6)], 1)
    want = np.stack([np.bincount(inv.ravel(), weights=expected[:, g]) for g in range(6)], 1)
    r = [np.corrcoef(got[:, g], want[:, g])[0, 1] for g in range(6)]
    assert min(r) > 0.6 and np.median(r) > 0.8


def test_pool_to_spots_gives_visium_like_spots(hd):
    sdata = _copy(hd)
    stp.pp.pool_to_spots(sdata, layout="visium")
    pooled = sdata.tables["spots_pooled_visium_table"]
    bins = sdata.tables["table"]
    members = pooled.obsm["members"]
    np.testing.assert_array_equal(pooled.X.toarray(), (members @ bins.X).toarray())
    # about 37 bins of 8 µm per 55 µm disk (centroid in disk)
    full = pooled.obs["n_members"].to_numpy() >= 30
    assert full.sum() >= 5
    assert np.median(pooled.obs["n_members"][full]) == pytest.approx(SPOT_AREA_UM2 / BIN_UM**2, abs=3)
    # a pooled spot holds about depth × the mean rate over its disk, as a synthetic Visium spot does
    geo = stp.pp.spots(sdata, spots_key="spots_pooled_visium", table_key="spots_pooled_visium_table")
    lam = stp.datasets.synthetic_truth(hd).mean_rates(geo.centers_um, 55.0)
    order = pooled.obs_names.get_indexer(geo.obs_names)
    got = pooled.X.toarray()[order][full[order]].sum()
    want = bins.uns["synthetic"]["depth"] * lam[full[order]].sum()
    assert got == pytest.approx(want, rel=0.1)


def test_zarr_round_trip_keeps_squares_and_truth(hd, tmp_path):
    from spatialdata import read_zarr

    _copy(hd).write(tmp_path / "hd.zarr")
    back = read_zarr(tmp_path / "hd.zarr")
    geo = stp.pp.spots(back)
    assert geo.kind == "square" and geo.diameter_um == pytest.approx(BIN_UM)
    t0, t1 = stp.datasets.synthetic_truth(hd), stp.datasets.synthetic_truth(back)
    np.testing.assert_allclose(
        t0.mean_rates(geo.centers_um[:5], 8.0, "square"), t1.mean_rates(geo.centers_um[:5], 8.0, "square")
    )


def test_bins_are_a_measured_slide_for_the_verbs(hd):
    sdata = _copy(hd)
    genes = list(sdata.tables["table"].var_names[:4])
    stp.tl.predict(sdata, model="ridge", genes=genes, progress=False)
    table = sdata.tables["table"]
    assert np.isfinite(table.layers["predicted"][:, table.var_names.get_indexer(genes)]).all()
    # 4 µm squares: each measured 8 µm bin holds four, and pools back to it
    stp.tl.superresolve(sdata, model="ridge", genes=genes, bin_size=4, progress=False)
    grid = sdata.tables["ridge_spots_bin4um"]
    assert grid.n_obs > 3 * table.n_obs
    assert grid.uns["stpredict"]["superresolve"]["condition"]["max_rel_error"] <= 1e-4


def test_a_grid_coarser_than_the_bins_is_not_conditioned(hd, caplog):
    sdata = _copy(hd)
    genes = list(sdata.tables["table"].var_names[:3])
    before = set(sdata.tables), set(sdata.shapes)
    # 16 µm squares each cover four measured 8 µm bins: one value cannot equal four measurements
    for condition in ("measured", "denoised"):
        with pytest.raises(ValueError, match=r"16 µm, larger than the 8 µm measured regions.*condition='none'"):
            stp.tl.superresolve(
                sdata, "ridge", genes=genes, bin_size=16, condition=condition, tissue=False, progress=False
            )
    assert (set(sdata.tables), set(sdata.shapes)) == before  # refused before any work
    # the default falls back to the image-only prediction, with a warning
    with caplog.at_level("WARNING", logger="stpredict"):
        stp.tl.superresolve(sdata, "ridge", genes=genes, bin_size=16, tissue=False, progress=False)
    assert "cannot agree with the measurement" in caplog.text
    grid = sdata.tables["ridge_spots_bin16um"]
    assert grid.uns["stpredict"]["superresolve"]["condition"] == {"condition": "none"}
    assert "image_only" not in grid.layers


def test_lazy_and_fast():
    """A 1.5 mm square at 0.5 µm/px (~15,000 bins on tissue, 35,000 in the square) builds without rendering."""
    import time

    t = time.perf_counter()
    sdata = stp.datasets.synthetic(image_size=3000, microns_per_pixel=0.5, layout="visium_hd", n_genes=50, seed=0)
    assert time.perf_counter() - t < 60  # behaviour guard: seconds on a quiet machine, no image render
    assert 12_000 < sdata.tables["table"].n_obs < 20_000
