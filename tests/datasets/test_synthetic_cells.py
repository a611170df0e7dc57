"""``stp.datasets.synthetic_cells`` / ``synthetic_cells_truth``: the synthetic nuclei as a segmentation with known truth."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

import stpredict as stp

RADIUS_UM = 8.0


def _hd(seed: int = 3):
    # 300 µm square at 0.5 µm/px: ~350 candidate nuclei, a few hundred bins
    return stp.datasets.synthetic(image_size=600, microns_per_pixel=0.5, layout="visium_hd", n_genes=6, seed=seed)


@pytest.fixture(scope="module")
def hd():
    sdata = _hd()
    stp.datasets.synthetic_cells(sdata)
    return sdata


def _nuclei_brute(tissue) -> np.ndarray:
    """Present nuclei whose centre is on tissue inside the image, from every grid cell around the image (µm)."""
    c = tissue.p.cell_um
    w, h = tissue.extent_um
    gi, gj = np.meshgrid(np.arange(-3, int(w / c) + 4), np.arange(-3, int(h / c) + 4), indexing="ij")
    nx, ny, rad = tissue._cells(gi.ravel(), gj.ravel())
    keep = (rad > 0) & (nx >= 0) & (nx < w) & (ny >= 0) & (ny < h)
    keep[keep] = tissue.tissue(nx[keep], ny[keep])
    return np.column_stack([nx[keep], ny[keep]])


def test_one_polygon_per_nucleus_on_tissue_inside_the_image(hd):
    from spatialdata import transform

    tissue = stp.datasets.synthetic_truth(hd)
    mpp = tissue.p.microns_per_pixel
    cells = hd.shapes["cells"]
    polys = cells.geometry.to_numpy()
    nuclei = _nuclei_brute(tissue)
    assert len(polys) == len(nuclei) > 100
    # each polygon holds exactly one nucleus centre, each centre lies in exactly one polygon
    inside = shapely.contains_xy(polys[:, None], nuclei[None, :, 0] / mpp, nuclei[None, :, 1] / mpp)
    assert (inside.sum(0) == 1).all() and (inside.sum(1) == 1).all()
    owner = inside.argmax(1)
    # within radius_um of its nucleus, inside the image (pixels and µm), no overlap
    for p, (x, y) in zip(polys, nuclei[owner] / mpp, strict=True):
        d = np.hypot(*(shapely.get_coordinates(p) - [x, y]).T)
        assert d.max() <= RADIUS_UM / mpp * (1 + 1e-9)
    h, w = tissue.p.image_size
    b = cells.total_bounds
    assert b[0] >= 0 and b[1] >= 0 and b[2] <= w and b[3] <= h
    b_um = transform(cells, to_coordinate_system="micrometers").total_bounds
    np.testing.assert_allclose(b_um, b * mpp)
    assert shapely.union_all(polys).area == pytest.approx(shapely.area(polys).sum(), rel=1e-9)
    # equal-area diameters of a nucleus-expansion segmentation: about the 11 µm grid, at most 2 × radius
    d_um = 2 * np.sqrt(shapely.area(polys) / np.pi) * mpp
    assert 9 < np.median(d_um) < 2 * RADIUS_UM
    # the true domain of each cell: the region at its nucleus
    nx, ny = nuclei[owner].T
    assert list(cells["domain"]) == [f"region_{k}" for k in tissue.region(nx, ny)]


def test_only_the_new_shapes_are_added():
    sdata = _hd()
    before = {kind: dict(getattr(sdata, kind)) for kind in ("images", "shapes", "tables")}
    stp.datasets.synthetic_cells(sdata, key_added="segmentation", radius_um=6.0)
    assert set(sdata.shapes) == {"spots", "segmentation"}
    for kind, elements in before.items():
        for name, element in elements.items():
            assert getattr(sdata, kind)[name] is element
    assert set(sdata.coordinate_systems) == {"global", "micrometers"}
    from spatialdata.transformations import get_transformation

    assert get_transformation(sdata.shapes["segmentation"], get_all=True) == get_transformation(
        sdata.shapes["spots"], get_all=True
    )


def test_deterministic_for_a_seed(hd):
    again = _hd()
    stp.datasets.synthetic_cells(again)
    a, b = hd.shapes["cells"].geometry.to_numpy(), again.shapes["cells"].geometry.to_numpy()
    assert len(a) == len(b) and shapely.equals_exact(a, b, tolerance=0).all()
    other = _hd(seed=4)
    stp.datasets.synthetic_cells(other)
    c = other.shapes["cells"].geometry.to_numpy()
    assert len(c) != len(a) or not shapely.equals_exact(a, c, tolerance=1e-6).all()


def test_truth_is_the_mean_rate_over_each_polygon(hd):
    tissue = stp.datasets.synthetic_truth(hd)
    mpp = tissue.p.microns_per_pixel
    truth = stp.datasets.synthetic_cells_truth(hd)
    cells = hd.shapes["cells"]
    assert list(truth.index) == list(cells.index)
    assert list(truth.columns) == tissue.genes
    assert np.isfinite(truth.to_numpy()).all() and (truth.to_numpy() >= 0).all()
    # brute force: λ averaged over a 0.05 µm point grid inside the polygon; the default 0.5 µm grid is within a few
    # % of the largest rate of a cell (nucleus edges), a 0.25 µm grid within 1 %
    idx = np.linspace(0, len(cells) - 1, 12).astype(int)
    brute = []
    for i in idx:
        p = shapely.transform(cells.geometry.iloc[i], lambda xy: xy * mpp)
        x0, y0, x1, y1 = p.bounds
        X, Y = np.meshgrid(np.arange(x0 + 0.025, x1, 0.05), np.arange(y0 + 0.025, y1, 0.05))
        on = shapely.contains_xy(p, X, Y)
        brute.append(tissue.rates(X[on], Y[on]).mean(0))
    brute = np.array(brute)
    err = np.abs(truth.to_numpy()[idx] - brute).max(1) / brute.max(1)
    assert err.max() < 0.04 and np.median(err) < 0.01
    fine = stp.datasets.synthetic_cells_truth(hd, step_um=0.25).to_numpy()[idx]
    assert (np.abs(fine - brute).max(1) / brute.max(1)).max() < 0.01


def test_truth_of_the_bins_is_their_mean_rate(hd):
    """Any shapes of the slide: on the 8 µm bins it is mean_rates(..., "square") on the same sample points."""
    tissue = stp.datasets.synthetic_truth(hd)
    geo = stp.pp.spots(hd)
    truth = stp.datasets.synthetic_cells_truth(hd, "spots")
    order = truth.index.get_indexer(hd.shapes["spots"].index)
    expected = tissue.mean_rates(geo.centers_um, 8.0, "square", step_um=0.5)
    np.testing.assert_allclose(truth.to_numpy()[order], expected, rtol=1e-9, atol=1e-12)


def test_errors(hd):
    from spatialdata import SpatialData

    bare = SpatialData(images=dict(hd.images), shapes=dict(hd.shapes), tables={"table": hd.tables["table"].copy()})
    del bare.tables["table"].uns["synthetic"]
    with pytest.raises(KeyError, match=r"not made by stp\.datasets\.synthetic"):
        stp.datasets.synthetic_cells(bare)
    with pytest.raises(KeyError, match=r"not made by stp\.datasets\.synthetic"):
        stp.datasets.synthetic_cells_truth(bare)
    with pytest.raises(KeyError, match="No table 'counts'"):
        stp.datasets.synthetic_cells(hd, table_key="counts")
    with pytest.raises(KeyError, match="already has a shape element 'cells'.*overwrite=True"):
        stp.datasets.synthetic_cells(hd)
    with pytest.raises(KeyError, match="already has an image element 'he'"):
        stp.datasets.synthetic_cells(hd, key_added="he", overwrite=True)
    with pytest.raises(KeyError, match="annotates"):
        stp.datasets.synthetic_cells(hd, key_added="spots", overwrite=True)
    with pytest.raises(ValueError, match="radius_um must be a positive"):
        stp.datasets.synthetic_cells(hd, key_added="other", radius_um=0)
    with pytest.raises(KeyError, match="No shapes element 'nuclei'"):
        stp.datasets.synthetic_cells_truth(hd, "nuclei")
    n = len(hd.shapes["cells"])
    stp.datasets.synthetic_cells(hd, radius_um=RADIUS_UM, overwrite=True)  # replaced by the same cells
    assert len(hd.shapes["cells"]) == n


def test_superresolve_predicts_every_cell(sdata_syn):
    stp.datasets.synthetic_cells(sdata_syn)
    n_cells = len(sdata_syn.shapes["cells"])
    stp.tl.superresolve(sdata_syn, "ridge", grid="cells", shapes_key="cells", progress=False)
    t = sdata_syn.tables["ridge_spots_cells"]
    assert t.n_obs == n_cells > 500
    assert np.isfinite(t.X).all()
    assert t.uns["stpredict"]["superresolve"]["condition"]["condition"] == "measured"  # 55 µm spots: cells finer
    truth = stp.datasets.synthetic_cells_truth(sdata_syn)
    assert list(truth.index.astype(str)) == list(t.obs_names)
