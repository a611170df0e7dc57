"""stp.pp.pool_to_spots: Visium/ST-like pseudo-spots summed from a high-resolution slide (8 µm bins, cells)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.spatial import cKDTree

import stpredict as stp

BIN_UM = 8.0
POOLED = "bins_pooled_visium"
POOLED_TABLE = f"{POOLED}_table"


def _bin_slide(*, unit_um: float = 1.0, circles: bool = False, seed: int = 0):
    """The synthetic H&E (768 µm, 1 µm/px) tiled with 8 µm bins whose counts are Poisson draws of the known truth.

    Bins are squares (polygons) or, with ``circles``, disks of equal area; their intrinsic unit is ``unit_um`` µm
    (transformations ``Scale(unit_um)`` to ``global`` pixels and to ``micrometers``).
    """
    import geopandas as gpd
    import shapely
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import Scale

    sdata = stp.datasets.synthetic(image_size=768, n_genes=8, seed=seed)
    truth = stp.datasets.synthetic_truth(sdata)
    del sdata.tables["table"], sdata.shapes["spots"]
    g = np.arange(BIN_UM / 2, 768, BIN_UM)
    xy_um = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    lam = truth.mean_rates(xy_um, BIN_UM, "square", step_um=4.0)
    counts = np.random.default_rng(seed).poisson(5.0 * lam).astype(np.int32)
    xy = xy_um / unit_um
    ts = {cs: Scale([unit_um, unit_um], axes=("x", "y")) for cs in ("global", "micrometers")}
    n = len(xy)
    if circles:
        radius = np.full(n, BIN_UM / np.sqrt(np.pi) / unit_um)
        bins = ShapesModel.parse(xy, geometry=0, radius=radius, index=np.arange(n) + 100, transformations=ts)
    else:
        h = BIN_UM / 2 / unit_um
        boxes = shapely.box(xy[:, 0] - h, xy[:, 1] - h, xy[:, 0] + h, xy[:, 1] + h)
        bins = ShapesModel.parse(gpd.GeoDataFrame(geometry=boxes, index=np.arange(n) + 100), transformations=ts)
    # table rows in another order than the shapes: the link goes through instance ids
    perm = np.random.default_rng(1).permutation(n)
    obs = pd.DataFrame(
        {"region": pd.Categorical(["bins"] * n), "bin_id": np.arange(n)[perm] + 100},
        index=[f"bin_{i}" for i in perm],
    )
    adata = ad.AnnData(sp.csr_matrix(counts[perm]), obs=obs, var=pd.DataFrame(index=truth.genes))
    sdata.shapes["bins"] = bins
    sdata.tables["bin_table"] = TableModel.parse(adata, region="bins", region_key="region", instance_key="bin_id")
    return sdata


@pytest.fixture(scope="module")
def _bins_session():
    return _bin_slide()


@pytest.fixture
def sdata_bins(_bins_session):
    from spatialdata import deepcopy

    return deepcopy(_bins_session)


def _source_um(sdata, shapes_key="bins", table_key="bin_table"):
    """Centroids (µm) of the source regions in table row order, and the table's counts (dense)."""
    from spatialdata.transformations import get_transformation

    shapes, table = sdata.shapes[shapes_key], sdata.tables[table_key]
    shapes = shapes.loc[table.obs["bin_id"].to_numpy()]
    if "radius" in shapes.columns:
        xy = np.column_stack([shapes.geometry.x, shapes.geometry.y])
    else:
        xy = np.column_stack([shapes.geometry.centroid.x, shapes.geometry.centroid.y])
    m = get_transformation(shapes, "micrometers").to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))
    return xy @ m[:2, :2].T + m[:2, 2], table.X.toarray()


def _spots_um(sdata, key=POOLED):
    from spatialdata.transformations import get_transformation

    shapes = sdata.shapes[key]
    m = get_transformation(shapes, "micrometers").to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))
    xy = np.column_stack([shapes.geometry.x, shapes.geometry.y]) @ m[:2, :2].T + m[:2, 2]
    return xy, shapes["radius"].to_numpy() * np.sqrt(abs(np.linalg.det(m[:2, :2])))


def test_pooled_counts_are_member_sums_brute_force(sdata_bins):
    assert stp.pp.pool_to_spots(sdata_bins) is None
    table = sdata_bins.tables[POOLED_TABLE]
    centers, radius = _spots_um(sdata_bins)
    np.testing.assert_allclose(radius, 27.5)
    src_xy, src_x = _source_um(sdata_bins)
    X = table.X.toarray()
    assert np.issubdtype(X.dtype, np.integer)
    column = sdata_bins.tables["bin_table"].obs[POOLED]
    members = table.obsm["members"].tocsr()
    assert members.shape == (table.n_obs, sdata_bins.tables["bin_table"].n_obs)
    for i, c in enumerate(centers):  # brute force: every bin whose centroid is in the disk
        inside = np.flatnonzero(np.hypot(*(src_xy - c).T) <= 27.5)
        assert len(inside) == table.obs["n_members"].iloc[i] > 0
        np.testing.assert_array_equal(X[i], src_x[inside].sum(0))
        np.testing.assert_array_equal(members[i].indices, inside)  # the link recovers the members...
        assert set(np.flatnonzero((column == table.obs_names[i]).to_numpy())) == set(inside)  # ...both ways
    assert column.isna().sum() == len(src_xy) - members.nnz
    np.testing.assert_array_equal((members @ sp.csr_matrix(src_x)).toarray(), X)
    # a full disk of 8 µm bins holds about π 27.5² / 64 ≈ 37 of them
    assert 30 <= np.median(table.obs["n_members"]) <= 40
    rec = table.uns["stpredict"]["pool_to_spots"]
    assert rec["layout"] == "visium"
    assert rec["diameter_um"] == 55.0
    assert rec["spacing_um"] == 100.0
    assert rec["member_rule"] == "centroid_in_disk"
    assert rec["source_table_key"] == "bin_table"


def test_visium_centres_on_hex_lattice(sdata_bins):
    stp.pp.pool_to_spots(sdata_bins)
    centers, _ = _spots_um(sdata_bins)
    obs = sdata_bins.tables[POOLED_TABLE].obs
    d, _ = cKDTree(centers).query(centers, k=7)
    np.testing.assert_allclose(d[:, 1], 100.0, atol=1e-6)  # nearest neighbours 100 µm apart
    # rows are 100·√3/2 apart, odd rows shifted by 50 µm; array_col steps by 2 along a row (Visium's convention)
    dy = 100.0 * np.sqrt(3) / 2
    r, c = obs["array_row"].to_numpy(), obs["array_col"].to_numpy()
    assert ((r + c) % 2 == 0).all()
    assert r.min() == 0
    assert c.min() in (0, 1)
    rel = centers - centers[0]
    np.testing.assert_allclose(rel[:, 1], (r - r[0]) * dy, atol=1e-6)
    np.testing.assert_allclose(rel[:, 0], (c - c[0]) * 50.0, atol=1e-6)
    # the lattice covers the bins: centres inside their extent, none missing where a disk holds bins
    assert centers.min() >= BIN_UM / 2 - 1e-9
    assert centers.max() <= 768 - BIN_UM / 2 + 1e-9
    assert len(centers) >= 60


def test_st_layout_square_lattice_and_offset(sdata_bins):
    stp.pp.pool_to_spots(sdata_bins, layout="st", offset_um=(60.0, 70.0))
    key = "bins_pooled_st"
    centers, radius = _spots_um(sdata_bins, key)
    np.testing.assert_allclose(radius, 50.0)
    d, _ = cKDTree(centers).query(centers, k=2)
    np.testing.assert_allclose(d[:, 1], 200.0, atol=1e-6)
    np.testing.assert_allclose((centers - [60.0, 70.0]) / 200.0 % 1.0 * 200.0 % 200.0, 0.0, atol=1e-6)
    assert np.any(np.all(np.isclose(centers, [60.0, 70.0]), axis=1))  # the origin is a spot
    assert len(centers) == 16  # x, y in {60, 260, 460, 660} and {70, 270, 470, 670}
    obs = sdata_bins.tables[f"{key}_table"].obs
    np.testing.assert_allclose(centers[:, 0], 60.0 + 200.0 * obs["array_col"], atol=1e-6)
    np.testing.assert_allclose(centers[:, 1], 70.0 + 200.0 * obs["array_row"], atol=1e-6)
    geo = stp.pp.spots(sdata_bins, spots_key=key, table_key=f"{key}_table")
    assert geo.diameter_um == pytest.approx(100.0)


def test_units_and_transformations_follow_the_source():
    from spatialdata.transformations import get_transformation

    # circles (equal-area disks) in 0.5 µm units: centroids are the circle centres, radius in the same units
    sdata = _bin_slide(unit_um=0.5, circles=True)
    stp.pp.pool_to_spots(sdata, key_added="ps")
    shapes = sdata.shapes["ps"]
    np.testing.assert_allclose(shapes["radius"], 55.0)  # 27.5 µm in 0.5 µm units
    src_ts = get_transformation(sdata.shapes["bins"], get_all=True)
    new_ts = get_transformation(shapes, get_all=True)
    assert set(new_ts) == set(src_ts) == {"global", "micrometers"}
    for cs in src_ts:
        np.testing.assert_allclose(
            new_ts[cs].to_affine_matrix(("x", "y"), ("x", "y")), src_ts[cs].to_affine_matrix(("x", "y"), ("x", "y"))
        )
    np.testing.assert_allclose(
        sdata.tables["ps_table"].obsm["spatial"], np.column_stack([shapes.geometry.x, shapes.geometry.y])
    )
    geo = stp.pp.spots(sdata, spots_key="ps", table_key="ps_table")
    assert geo.diameter_um == pytest.approx(55.0)
    d, _ = cKDTree(geo.centers_um).query(geo.centers_um, k=2)
    np.testing.assert_allclose(d[:, 1], 100.0, atol=1e-6)
    # counts equal the polygon slide's: the same bins, the same centroids
    poly = _bin_slide()
    stp.pp.pool_to_spots(poly)
    np.testing.assert_array_equal(sdata.tables["ps_table"].X.toarray(), poly.tables[POOLED_TABLE].X.toarray())


def test_valid_measured_slide_predict_and_zarr(sdata_bins, tmp_path):
    from spatialdata import read_zarr

    stp.pp.pool_to_spots(sdata_bins)
    geo = stp.pp.spots(sdata_bins, spots_key=POOLED, table_key=POOLED_TABLE)
    assert geo.diameter_um == pytest.approx(55.0)
    assert geo.n_spots == sdata_bins.tables[POOLED_TABLE].n_obs
    path = tmp_path / "pooled.zarr"
    sdata_bins.write(path)
    back = read_zarr(path)
    t0, t1 = sdata_bins.tables[POOLED_TABLE], back.tables[POOLED_TABLE]
    np.testing.assert_array_equal(t1.X.toarray(), t0.X.toarray())
    assert sp.issparse(t1.obsm["members"])
    np.testing.assert_array_equal(t1.obsm["members"].toarray(), t0.obsm["members"].toarray())
    assert dict(t1.uns["stpredict"]["pool_to_spots"])["layout"] == "visium"
    assert back.tables["bin_table"].obs[POOLED].equals(sdata_bins.tables["bin_table"].obs[POOLED])
    geo1 = stp.pp.spots(back, spots_key=POOLED, table_key=POOLED_TABLE)
    np.testing.assert_allclose(geo1.centers, geo.centers)
    assert geo1.diameter_um == pytest.approx(55.0)
    stp.tl.predict(back, model="ridge", spots_key=POOLED, table_key=POOLED_TABLE, n_genes=5, progress=False)
    pred = back.tables[POOLED_TABLE].layers["predicted"]
    panel = back.tables[POOLED_TABLE].var["predicted"].to_numpy()
    assert panel.sum() == 5
    assert np.isfinite(pred[:, panel]).all()


def test_inplace_false_and_overlapping_disks(sdata_bins):
    before = sorted(n for _, n, _ in sdata_bins.gen_elements())
    cols = list(sdata_bins.tables["bin_table"].obs.columns)
    out = stp.pp.pool_to_spots(sdata_bins, diameter_um=120.0, spacing_um=100.0, inplace=False)
    assert sorted(n for _, n, _ in sdata_bins.gen_elements()) == before
    assert list(sdata_bins.tables["bin_table"].obs.columns) == cols
    key = "bins_pooled_visium_d120_s100"
    assert set(out.shapes) == {key}
    assert set(out.tables) == {f"{key}_table"}
    table = out.tables[f"{key}_table"]
    members = table.obsm["members"].tocsr()
    assert np.asarray(members.sum(0)).max() > 1  # a bin may lie in several overlapping disks
    src = sdata_bins.tables["bin_table"].X
    np.testing.assert_array_equal((members @ src).toarray(), table.X.toarray())
    assert table.uns["stpredict"]["pool_to_spots"]["diameter_um"] == 120.0


def test_layer_and_min_members(sdata_bins):
    src = sdata_bins.tables["bin_table"]
    src.layers["counts"] = src.X.copy()
    src.X = src.X.astype(np.float32) * 0.37
    with pytest.raises(ValueError, match="non-integer"):
        stp.pp.pool_to_spots(sdata_bins)
    full = stp.pp.pool_to_spots(sdata_bins, layer="counts", min_members=37, inplace=False)
    n = full.tables[f"{POOLED}_table"].obs["n_members"]
    assert (n >= 37).all()
    stp.pp.pool_to_spots(sdata_bins, layer="counts")
    assert len(sdata_bins.shapes[POOLED]) > len(n)
    assert sdata_bins.tables[POOLED_TABLE].uns["stpredict"]["pool_to_spots"]["source_layer"] == "counts"


def test_bad_input_raises_before_any_change(sdata_bins):
    from spatialdata.transformations import remove_transformation

    def names():
        return sorted(n for _, n, _ in sdata_bins.gen_elements()), list(sdata_bins.tables["bin_table"].obs.columns)

    before = names()
    with pytest.raises(ValueError, match="layout"):
        stp.pp.pool_to_spots(sdata_bins, layout="hd")
    with pytest.raises(ValueError, match="diameter_um"):
        stp.pp.pool_to_spots(sdata_bins, diameter_um=-5)
    with pytest.raises(ValueError, match="min_members"):
        stp.pp.pool_to_spots(sdata_bins, min_members=0)
    with pytest.raises(ValueError, match="No spot"):
        stp.pp.pool_to_spots(sdata_bins, min_members=10_000)
    with pytest.raises(KeyError, match="nope"):
        stp.pp.pool_to_spots(sdata_bins, shapes_key="nope")
    with pytest.raises(ValueError, match="source"):
        stp.pp.pool_to_spots(sdata_bins, key_added="bins")
    assert names() == before
    # a key that exists: refused unless overwrite=True
    stp.pp.pool_to_spots(sdata_bins)
    with pytest.raises(KeyError, match="already has"):
        stp.pp.pool_to_spots(sdata_bins)
    with pytest.raises(KeyError, match="already has"):
        stp.pp.pool_to_spots(sdata_bins, key_added="he")
    stp.pp.pool_to_spots(sdata_bins, layout="st", key_added=POOLED, overwrite=True)
    assert sdata_bins.shapes[POOLED]["radius"].iloc[0] == pytest.approx(50.0)
    # negative and non-integer counts
    src = sdata_bins.tables["bin_table"]
    X = src.X.copy()
    src.X = X.astype(np.float64) * 1.5
    with pytest.raises(ValueError, match="non-integer"):
        stp.pp.pool_to_spots(sdata_bins, key_added="other")
    src.X = -X
    with pytest.raises(ValueError, match="negative"):
        stp.pp.pool_to_spots(sdata_bins, key_added="other")
    src.X = X
    # shapes without a micrometre scale
    remove_transformation(sdata_bins.shapes["bins"], "micrometers")
    with pytest.raises(ValueError, match="set_microns_per_pixel"):
        stp.pp.pool_to_spots(sdata_bins, key_added="other")
    assert "other" not in sdata_bins.shapes
    assert "other_table" not in sdata_bins.tables


def test_overwrite_replaces_elements_and_stale_column(sdata_bins):
    stp.pp.pool_to_spots(sdata_bins)
    assert POOLED in sdata_bins.tables["bin_table"].obs
    # overlapping disks under the same name: the old column would mislead, so it goes
    stp.pp.pool_to_spots(sdata_bins, diameter_um=120.0, key_added=POOLED, overwrite=True)
    assert POOLED not in sdata_bins.tables["bin_table"].obs
    rec = sdata_bins.tables[POOLED_TABLE].uns["stpredict"]["pool_to_spots"]
    assert rec["diameter_um"] == 120.0
    assert "source_obs_column" not in rec  # None is not stored in uns
    np.testing.assert_allclose(_spots_um(sdata_bins)[1], 60.0)


def test_micrometre_units_come_from_the_spots_module(sdata_bins, caplog):
    """pp.spots owns coordinate systems: pool_to_spots reads the shapes' µm affine through _spots_units."""
    import logging

    from spatialdata.transformations import Scale, set_transformation

    from stpredict.pp import _pool, _pool_args, _spots_units

    assert _pool.micrometers_affine is _spots_units.micrometers_affine
    assert not hasattr(_pool_args, "micrometers_affine")
    set_transformation(sdata_bins.shapes["bins"], Scale([1.0, 1.1], axes=("x", "y")), "micrometers")
    with caplog.at_level(logging.WARNING, logger="stpredict"):
        out = stp.pp.pool_to_spots(sdata_bins, inplace=False)
    assert "anisotropic µm units (1 vs 1.1 µm per unit" in caplog.text
    assert out.shapes[POOLED]["radius"].iloc[0] == pytest.approx(27.5 / np.sqrt(1.1))  # geometric mean


def test_integer_counts_one_check_with_fit(sdata_bins, caplog):
    """Pooling refuses any non-integer count (one check_counts, require_integer=True); fit's rule is unchanged."""
    import logging

    from stpredict._validate import check_counts

    src = sdata_bins.tables["bin_table"]
    src.layers["counts"] = src.X.copy()
    big = src.X.astype(np.float64).tocsr()
    big.data = big.data * 10.5 + 100.0
    src.X = big  # large non-integers: counts to fit, not to pool
    with caplog.at_level(logging.WARNING, logger="stpredict"):
        check_counts(src, "bin_table")  # fit and predict: accepted with a warning
        assert "taken as counts" in caplog.text
        caplog.clear()
        with pytest.raises(ValueError, match=r"\.X holds \d+ non-integer values .* layer='counts'"):
            stp.pp.pool_to_spots(sdata_bins)
    assert "taken as counts" not in caplog.text  # refused, not first accepted with a warning
    src.X = src.layers["counts"].astype(np.float64).log1p()  # log-like: refused by both, as log-normalised
    for kw in ({}, {"require_integer": True}):
        with pytest.raises(ValueError, match="look log-normalised"):
            check_counts(src, "bin_table", **kw)
    with pytest.raises(ValueError, match="look log-normalised"):
        stp.pp.pool_to_spots(sdata_bins)
    src.X = src.layers["counts"].astype(np.float32)  # whole floats pool
    stp.pp.pool_to_spots(sdata_bins)
    assert sdata_bins.tables[POOLED_TABLE].X.dtype == np.int32
    from stpredict.pp import _pool_args

    assert not hasattr(_pool_args, "check_integer_counts")


def test_spots_after_pooling_names_each_table_and_the_fix(sdata_bins):
    """Bins and pooled spots are two measured slides: pp.spots without keys names both tables and how to choose."""
    stp.pp.pool_to_spots(sdata_bins)
    n_bins, n_spots = sdata_bins.tables["bin_table"].n_obs, sdata_bins.tables[POOLED_TABLE].n_obs
    with pytest.raises(KeyError, match="Several tables annotate the spots") as e:
        stp.pp.spots(sdata_bins)
    msg = e.value.args[0]
    assert f"'bin_table' ({n_bins} rows annotating shapes 'bins')" in msg
    assert f"{POOLED_TABLE!r} ({n_spots} rows annotating shapes {POOLED!r}, pooled from table 'bin_table'" in msg
    assert f"table_key={POOLED_TABLE!r} for the pooled spots" in msg and "spots_key=" in msg
    for kw in ({"table_key": POOLED_TABLE}, {"spots_key": POOLED}):  # either fix works
        geo = stp.pp.spots(sdata_bins, **kw)
        assert (geo.table_key, geo.spots_key, geo.kind, geo.n_spots) == (POOLED_TABLE, POOLED, "circle", n_spots)
        assert geo.diameter_um == pytest.approx(55.0)
    assert stp.pp.spots(sdata_bins, spots_key="bins").table_key == "bin_table"
