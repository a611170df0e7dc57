from __future__ import annotations

import numpy as np
import pytest

import stpredict as stp
from stpredict.pp import fit_lattice


@pytest.mark.parametrize("kind", ["square", "hex", "centred"])
def test_fit_lattice_and_ps4_density(kind):
    i, j = np.meshgrid(np.arange(12), np.arange(12))
    i, j = i.ravel(), j.ravel()
    if kind == "square":
        pts = np.column_stack([i * 200.0, j * 200.0])
    elif kind == "hex":
        pts = np.column_stack([i * 100.0 + 50.0 * (j % 2), j * 100.0 * np.sqrt(3) / 2])
    else:  # the 2k ST array: x + y even, anisotropic scan
        keep = (i + j) % 2 == 0
        pts = np.column_stack([i[keep] * 21.6, j[keep] * 24.1])
    lat = fit_lattice(pts + 1000)
    assert lat.residual < 1e-6
    recon = lat.coords @ lat.basis.T + lat.origin
    np.testing.assert_allclose(recon, pts + 1000, atol=1e-6)


def test_fit_lattice_rejects_random_points():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="lattice"):
        fit_lattice(rng.uniform(0, 1000, (200, 2)))


@pytest.mark.parametrize("grid_name", ["ps4", "pseudospot16"])
def test_ps_grids_inside_tissue(sdata_mob, grid_name):
    geo = stp.pp.spots(sdata_mob)
    shapes = stp.pp.grid(sdata_mob, grid_name)
    factor = 4 if grid_name == "ps4" else 16
    # close to factor × the spots (fewer at the tissue's edge, never more)
    assert 0.85 * factor * geo.n_spots < len(shapes) < 1.05 * factor * geo.n_spots
    xy = np.column_stack([shapes.geometry.x, shapes.geometry.y])
    mask = stp.pp.tissue_mask(sdata_mob)
    from scipy.spatial import cKDTree

    d, _ = cKDTree(geo.centers).query(xy)
    lat = fit_lattice(geo.centers)
    assert d.max() <= lat.pitch * 1.0001
    on_tissue = mask.contains(xy) | (d < 1e-6)
    assert on_tissue.all()
    # every measured spot is one of the grid points
    d2, _ = cKDTree(xy).query(geo.centers)
    assert d2.max() < 1e-6
    np.testing.assert_allclose(shapes["radius"], geo.diameter / (2 if grid_name == "ps4" else 4) / 2, rtol=0.05)


def test_bins(sdata_syn):
    geo = stp.pp.spots(sdata_syn)
    shapes = stp.pp.grid(sdata_syn, bin_size=16)
    areas = shapes.geometry.area.to_numpy()
    np.testing.assert_allclose(areas, 16.0**2)  # 1 µm/px
    c = np.column_stack([shapes.geometry.centroid.x, shapes.geometry.centroid.y])
    assert np.allclose((c - 8) % 16, 0)  # aligned with the image origin
    # spots are not square bins: squares on the image axes, every corner exactly on the 16 µm grid
    assert shapes.attrs["lattice"] == "image axes"
    np.testing.assert_array_equal(shapes.get_coordinates().to_numpy() % 16, 0)
    truth = stp.datasets.synthetic_truth(sdata_syn)
    assert truth.tissue(c[:, 0], c[:, 1]).mean() > 0.95
    assert len(shapes) > geo.n_spots
    with pytest.raises(ValueError, match="pixels"):
        stp.pp.grid(sdata_syn, bin_size=1.5)


def test_grid_shapes_follow_spot_transform(sdata_syn):
    from spatialdata.transformations import Scale, set_transformation

    # spots stored in µm/2 units: the grid comes back in the same units with the same transformation
    spots = sdata_syn.shapes["spots"]
    spots.geometry = spots.geometry.scale(0.5, 0.5, origin=(0, 0))
    spots["radius"] = spots["radius"] * 0.5
    set_transformation(spots, Scale([2.0, 2.0], axes=("x", "y")), "global")
    set_transformation(spots, Scale([2.0, 2.0], axes=("x", "y")), "micrometers")
    geo = stp.pp.spots(sdata_syn)
    shapes = stp.pp.grid(sdata_syn, "ps4")
    xy = np.column_stack([shapes.geometry.x, shapes.geometry.y])
    from scipy.spatial import cKDTree

    assert cKDTree(xy * 2).query(geo.centers)[0].max() < 1e-6
