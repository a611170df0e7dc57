"""The lattice of ``bin<N>um`` grids: known after a zarr round trip, and shared by spots pooled from rotated bins."""

from __future__ import annotations

import numpy as np
import pytest
from _hd_fixture import write_visium_hd

import stpredict as stp

ANGLE = 0.4


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    root = tmp_path_factory.mktemp("hd")
    return write_visium_hd(
        root / "slide", bin_sizes=(8,), microns_per_pixel=1.0, image_size=(320, 320), extent_um=(256.0, 256.0),
        rotation_deg=ANGLE, origin_um=(24.0, 12.0),
    )  # fmt: skip


@pytest.fixture
def hd(slide):
    return stp.io.read_visium_hd(slide.outs, fullres_image_file=slide.fullres, bin_size=8)


def _cells_of_bins(lat, truth, k):
    """The lattice cell of every measured bin, and the one Space Ranger's nesting gives it: ``(col, row) // k``."""
    bins = truth.bins[8]
    bins = bins[bins["in_tissue"] == 1]
    got = lat.cells(bins[["centre_x_um", "centre_y_um"]].to_numpy())
    return got, np.column_stack([bins["col"], bins["row"]]) // k


def test_superresolve_records_the_lattice_and_a_zarr_round_trip_keeps_it(hd, slide, tmp_path):
    from spatialdata import read_zarr

    genes = list(hd.tables["square_008um"].var_names[:2])
    stp.tl.superresolve(hd, "neighbors", genes=genes, bin_size=16, tissue=False, condition="none", progress=False)
    (shapes_key,) = [k for k in hd.shapes if k.endswith("bin16um")]
    before = stp.pp.grid_lattice(hd, shapes_key)
    assert before.source == "record" and before.side_um == 16.0
    assert before.rotation_deg == pytest.approx(ANGLE, abs=1e-6) and before.pitch_um == pytest.approx(8.0)
    hd.write(tmp_path / "slide.zarr")
    back = read_zarr(tmp_path / "slide.zarr")
    for k in ("lattice", "lattice_frame"):  # as geopandas without attrs support writes them: the record holds
        back.shapes[shapes_key].attrs.pop(k, None)
    after = stp.pp.grid_lattice(back, shapes_key)
    assert after.source == "record"
    for name in ("origin_um", "axes", "side_um", "pitch_um", "rotation_deg"):
        np.testing.assert_allclose(getattr(after, name), getattr(before, name), rtol=0, atol=1e-12)
    # the recorded lattice nests Space Ranger's bins: 2 × 2 of them in each 16 µm square
    got, want = _cells_of_bins(after, slide, 2)
    np.testing.assert_array_equal(got, want)


def test_a_grid_without_record_is_refitted_after_a_round_trip(hd, slide, tmp_path):
    from spatialdata import read_zarr

    shapes = stp.pp.grid(hd, bin_size=8, tissue=False)
    frame = shapes.attrs["lattice_frame"]
    assert frame["rotation_deg"] == pytest.approx(ANGLE, abs=1e-6) and frame["side_um"] == 8.0
    hd.shapes["my_grid"] = shapes
    assert stp.pp.grid_lattice(hd, "my_grid").source == "record"  # in memory: the attrs
    hd.write(tmp_path / "slide.zarr")
    back = read_zarr(tmp_path / "slide.zarr")
    assert stp.pp.grid_lattice(back, "my_grid").source == "record"  # attrs kept by this geopandas
    for k in ("lattice", "lattice_frame"):  # as geopandas without attrs support writes them: no record, refitted
        back.shapes["my_grid"].attrs.pop(k)
    lat = stp.pp.grid_lattice(back, "my_grid")
    assert lat.source == "refit"
    assert lat.rotation_deg == pytest.approx(ANGLE, abs=1e-6) and lat.side_um == pytest.approx(8.0, rel=1e-9)
    # the same squares: every measured bin is alone in its cell of the refitted lattice
    got, _ = _cells_of_bins(lat, slide, 1)
    assert len(np.unique(got, axis=0)) == len(got)


def test_spots_pooled_from_rotated_bins_get_grids_on_the_bins_lattice(hd, slide):
    import shapely

    bins_key = next(k for k in hd.shapes if k.endswith("square_008um"))
    stp.pp.pool_to_spots(hd, shapes_key=bins_key, table_key="square_008um", key_added="pooled")
    geo = stp.pp.spots(hd, spots_key="pooled", table_key="pooled_table")
    assert geo.kind == "circle" and stp.pp.grid_lattice(hd, "pooled") is None  # circles: no lattice
    for size, k in ((8, 1), (16, 2)):
        shapes = stp.pp.grid(hd, bin_size=size, spots_key="pooled", table_key="pooled_table", tissue=False)
        assert shapes.attrs["lattice"] == f"measured bins (rotation {ANGLE:.2f}°)"
        lat = stp.pp.GridLattice.from_record(shapes.attrs["lattice_frame"])
        got, want = _cells_of_bins(lat, slide, k)
        np.testing.assert_array_equal(got, want)
        # the squares are rotated polygons whose centres are on the bins' lattice
        a = geo.shapes_to_image
        xy = shapes.get_coordinates().to_numpy() @ a[:2, :2].T + a[:2, 2]
        centres = geo.px_to_um(xy).reshape(len(shapes), 5, 2)[:, :4].mean(1)
        q = (centres - lat.origin_um) @ lat.axes / size
        np.testing.assert_allclose(q - np.floor(q), 0.5, atol=1e-6)
        assert shapely.area(shapes.geometry.iloc[0]) > 0
    # a ps grid on the pooled spots stays a pseudo-spot grid (no lattice)
    assert "lattice" not in stp.pp.grid(hd, "ps4", spots_key="pooled", table_key="pooled_table", tissue=False).attrs
