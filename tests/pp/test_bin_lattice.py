"""``bin<N>um`` grids on a Visium HD slide whose bins are rotated and offset in the image (Space Ranger's registration)."""

from __future__ import annotations

import numpy as np
import pytest

import stpredict as stp
from stpredict.pp._bin_lattice import bin_indices, fit_bin_lattice, measured_bin_lattice

ANGLE = 0.4  # degrees, counter-clockwise in the image's (x, y)
SHIFT_PX = (1.3, -0.7)
PIVOT_PX = (300.0, 300.0)


def _rotate(sdata, angle=ANGLE, shift=SHIFT_PX):
    """Turn the bins' squares by ``angle`` about the image centre and shift them (the H&E stays)."""
    import geopandas as gpd
    from shapely import affinity
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import get_transformation

    g = sdata.shapes["spots"]
    geoms = [affinity.translate(affinity.rotate(p, angle, origin=PIVOT_PX), *shift) for p in g.geometry]
    sdata.shapes["spots"] = ShapesModel.parse(
        gpd.GeoDataFrame(geometry=geoms, index=g.index), transformations=get_transformation(g, get_all=True)
    )
    return sdata


@pytest.fixture(scope="module")
def _hd_session():
    # 300 µm square at 0.5 µm/px: ~670 bins of 8 µm (16 px) on tissue
    return stp.datasets.synthetic(image_size=600, microns_per_pixel=0.5, layout="visium_hd", n_genes=5, seed=3)


@pytest.fixture
def hd(_hd_session):
    from spatialdata import SpatialData

    s = _hd_session
    return SpatialData(images=dict(s.images), shapes=dict(s.shapes), tables={"table": s.tables["table"].copy()})


@pytest.fixture
def rotated(hd):
    return _rotate(hd)


def _polys_um(shapes, geo):
    import shapely

    return shapely.transform(np.asarray(shapes.geometry.array), lambda xy: geo.px_to_um(xy))


def test_fitted_rotation_matches_the_applied_one(rotated):
    geo = stp.pp.spots(rotated)
    assert geo.kind == "square"
    idx = bin_indices(rotated.tables["table"], geo)
    assert idx is not None
    for indices in (idx, None, idx * [1, -1]):  # array indices, centres alone, rows running the other way
        lat = fit_bin_lattice(geo.centers_um, geo.diameter_um, indices)
        assert lat.rotation_deg == pytest.approx(ANGLE, abs=0.01)
        assert lat.side_um == pytest.approx(8.0, rel=1e-9)
        assert lat.residual_um < 1e-6
    assert fit_bin_lattice(geo.centers_um, geo.diameter_um, idx).source == "array_row/array_col"
    # indices that are not this slide's (shuffled) do not fit: the centres are used instead
    rng = np.random.default_rng(0)
    lat = measured_bin_lattice(geo, idx[rng.permutation(len(idx))])
    assert lat.source == "centres" and lat.rotation_deg == pytest.approx(ANGLE, abs=0.01)
    # a lattice turned by more than 45°: the same lattice, its rotation reported in [-45, 45)
    turned = geo.centers_um @ np.array([[0.0, -1.0], [1.0, 0.0]]).T  # +90°
    assert fit_bin_lattice(turned, geo.diameter_um, idx).rotation_deg == pytest.approx(ANGLE, abs=0.01)


def test_bins_of_the_measured_side_are_the_measured_bins(rotated):
    import shapely

    geo = stp.pp.spots(rotated)
    shapes = stp.pp.grid(rotated, bin_size=8, tissue=False)
    assert shapes.attrs["lattice"] == f"measured bins (rotation {ANGLE:.2f}°)"
    grid_polys, bins = _polys_um(shapes, geo), _polys_um(rotated.shapes["spots"], geo)
    c_grid = shapely.get_coordinates(shapely.centroid(grid_polys))
    c_bins = shapely.get_coordinates(shapely.centroid(bins))
    from scipy.spatial import cKDTree

    d, j = cKDTree(c_grid).query(c_bins)
    assert d.max() < 1e-6  # every measured bin is a grid square, centre for centre
    # the same rotated squares: polygons, not axis-aligned boxes
    assert shapely.hausdorff_distance(grid_polys[j], bins).max() < 1e-6
    edge = np.diff(shapely.get_coordinates(shapely.get_exterior_ring(grid_polys[:1]))[:2], axis=0)[0]
    assert np.degrees(np.arctan2(edge[1], edge[0])) == pytest.approx(ANGLE, abs=1e-9)


def test_half_bins_nest_four_in_each_measured_bin(rotated):
    import shapely

    geo = stp.pp.spots(rotated)
    shapes = stp.pp.grid(rotated, bin_size=4, tissue=False)
    small, bins = _polys_um(shapes, geo), _polys_um(rotated.shapes["spots"], geo)
    assert shapely.area(small) == pytest.approx(16.0, rel=1e-9)
    tree = shapely.STRtree(small)
    inside = tree.query(shapely.buffer(bins, 1e-6), predicate="contains")  # (2, pairs): bin, square
    per_bin = np.bincount(inside[0], minlength=len(bins))
    np.testing.assert_array_equal(per_bin, 4)
    # a square lies in one bin only, and the four tile it
    assert len(np.unique(inside[1])) == inside.shape[1]
    np.testing.assert_allclose(np.bincount(inside[0], weights=shapely.area(small[inside[1]])), 64.0, rtol=1e-9)


def test_bins_twice_the_side_group_whole_bins_and_others_keep_the_image_axes(rotated):
    import shapely

    geo = stp.pp.spots(rotated)
    big, bins = _polys_um(stp.pp.grid(rotated, bin_size=16, tissue=False), geo), _polys_um(rotated.shapes["spots"], geo)
    pairs = shapely.STRtree(bins).query(big, predicate="intersects")
    share = shapely.area(shapely.intersection(big[pairs[0]], bins[pairs[1]])) / 64.0
    touching = share > 1e-9
    np.testing.assert_allclose(share[touching], 1.0, atol=1e-6)  # a measured bin is in one 16 µm square, whole
    # 5 µm neither splits nor groups 8 µm bins: squares on the image axes, from its origin
    shapes = stp.pp.grid(rotated, bin_size=5, tissue=False)
    assert shapes.attrs["lattice"] == "image axes"
    c = shapely.get_coordinates(shapely.centroid(_polys_um(shapes, geo)))
    np.testing.assert_allclose((c - 2.5) % 5.0, 0.0, atol=1e-9)


def test_rotated_square_overlap_is_exact():
    import shapely

    from stpredict.pp._condition_core import overlap_matrix

    rng = np.random.default_rng(1)
    spots = rng.uniform(0, 30, (6, 2))
    regions = rng.uniform(0, 30, (40, 2))
    angle, side, diameter = 17.0, 6.0, 11.0
    got = overlap_matrix(spots, diameter, regions, "square", side, rotation_deg=angle).toarray()
    t = np.radians(angle)
    u, v = side / 2 * np.array([np.cos(t), np.sin(t)]), side / 2 * np.array([-np.sin(t), np.cos(t)])
    squares = shapely.polygons(regions[:, None, :] + np.stack([-u - v, u - v, u + v, v - u])[None])
    disks = shapely.buffer(shapely.points(spots), diameter / 2, quad_segs=2048)
    want = shapely.area(shapely.intersection(disks[:, None], squares[None, :]))
    np.testing.assert_allclose(got, want, atol=2e-4 * side**2)
    assert (got > 0).sum() > 10


def test_conditioning_on_rotated_bins_pools_back_to_them(rotated):
    geo = stp.pp.spots(rotated)
    table = rotated.tables["table"]
    genes = list(table.var_names[:3])
    stp.tl.superresolve(rotated, model="ridge", genes=genes, bin_size=4, tissue=False, progress=False)
    grid = rotated.tables["ridge_spots_bin4um"]
    record = grid.uns["stpredict"]["superresolve"]
    assert record["lattice"] == f"measured bins (rotation {ANGLE:.2f}°)"
    assert record["condition"]["max_rel_error"] <= 1e-4
    # independently: the plain mean of each bin's four squares, in linear space, is its normalised count
    import shapely

    squares = _polys_um(rotated.shapes["spots_bin4um"], geo)
    bins = _polys_um(rotated.shapes["spots"].loc[geo.shapes_index], geo)  # in the order of geo's rows
    pairs = shapely.STRtree(squares).query(shapely.buffer(bins, 1e-6), predicate="contains")
    counts = table.X.toarray()[geo.rows]
    total = counts.sum(1, keepdims=True)
    measured = counts[:, table.var_names.get_indexer(genes)] / np.maximum(total, 1) * 1e4  # normalize_total(1e4)
    lin = np.expm1(np.asarray(grid.X, dtype=float)[pairs[1]])  # rows in the order of the grid's shapes
    pooled = np.stack([np.bincount(pairs[0], weights=lin[:, g], minlength=len(bins)) / 4 for g in range(3)], 1)
    pos = measured > 0
    np.testing.assert_allclose(pooled[pos], measured[pos], rtol=1e-4)
    assert np.abs(pooled[~pos]).max() < 1e-3


def test_a_rotated_space_ranger_folder(tmp_path):
    """Space Ranger's bins on a lattice turned by 1.5°: our 8 and 16 µm grids are its 8 and 16 µm bins."""
    from _hd_fixture import write_visium_hd
    from scipy.spatial import cKDTree

    truth = write_visium_hd(tmp_path / "slide", rotation_deg=1.5, origin_um=(24.0, 12.0))
    sdata = stp.io.read_visium_hd(truth.outs, fullres_image_file=truth.fullres, bin_size=8)
    geo = stp.pp.spots(sdata)
    lat = measured_bin_lattice(geo, bin_indices(sdata.tables["square_008um"], geo))
    assert lat.source == "array_row/array_col"
    assert lat.rotation_deg == pytest.approx(1.5, abs=0.01)
    for size in (8, 16):
        shapes = stp.pp.grid(sdata, bin_size=size, tissue=False)
        assert shapes.attrs["lattice"] == "measured bins (rotation 1.50°)"
        a = geo.shapes_to_image
        corners = geo.px_to_um(shapes.get_coordinates().to_numpy() @ a[:2, :2].T + a[:2, 2])
        got = corners.reshape(len(shapes), 5, 2)[:, :4].mean(1)  # centres
        bins = truth.bins[size]
        want = bins.loc[bins["in_tissue"] == 1, ["centre_x_um", "centre_y_um"]].to_numpy()
        assert cKDTree(got).query(want)[0].max() < 1e-6  # every Space Ranger bin of that size is a grid square


def test_unrotated_bins_give_the_image_axis_squares(hd):
    geo = stp.pp.spots(hd)
    for size in (8, 4):
        shapes = stp.pp.grid(hd, bin_size=size, tissue=False)
        assert shapes.attrs["lattice"] == "measured bins (rotation 0.00°)"
        xy = geo.px_to_um(shapes.get_coordinates().to_numpy())
        np.testing.assert_allclose(xy / size, np.round(xy / size), atol=1e-9)  # corners on the image's N µm grid
