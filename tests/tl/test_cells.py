"""superresolve(grid="cells", shapes_key=...): one prediction per polygon of a shapes element (a cell segmentation)."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from smoke import smoke_config
from spatialdata import deepcopy
from spatialdata.models import PointsModel, ShapesModel
from spatialdata.transformations import Identity, Scale, Translation, get_transformation

import stpredict as stp
from stpredict.tl._targets import targets

N_CELLS = 40


def _hexagons(centers_px: np.ndarray, rng: np.random.Generator) -> list:
    """Random convex hexagons of 10-15 µm across (1 µm/px on the synthetic slide)."""
    out = []
    for x, y in centers_px:
        r = rng.uniform(5.0, 7.5)
        a = np.sort(rng.uniform(-0.35, 0.35, 6) + np.arange(6) * np.pi / 3 + rng.uniform(0, np.pi))
        out.append(shapely.Polygon(np.column_stack([x + r * np.cos(a), y + r * np.sin(a)])))
    return out


def _seq(*ts):
    from spatialdata.transformations import Sequence

    return Sequence(list(ts))


@pytest.fixture(scope="module")
def base():
    """Synthetic slide + ``cells``: hexagons in the spots' frame (level-0 px), indexed in a shuffled order."""
    sdata = stp.datasets.synthetic(image_size=512, n_genes=5, seed=0)
    geo = stp.pp.spots(sdata)
    rng = np.random.default_rng(1)
    # inside the tissue: around the spots, half of them inside a spot disk, the others in the gaps
    c = geo.centers[rng.choice(geo.n_spots, N_CELLS)] + rng.uniform(-45, 45, (N_CELLS, 2))
    h, w = geo.image_shape
    c = np.clip(c, 10, [w - 10, h - 10])
    polys = _hexagons(c, rng)
    index = pd.Index([f"c{k}" for k in rng.permutation(1000)[:N_CELLS]])  # not sorted: the order is the shapes'
    gdf = gpd.GeoDataFrame(geometry=polys, index=index)
    ts = get_transformation(sdata.shapes["spots"], get_all=True)
    sdata.shapes["cells"] = ShapesModel.parse(gdf, transformations=ts)
    return sdata


@pytest.fixture
def sdata(base):
    return deepcopy(base)


def _centroids_px(sdata, key="cells") -> np.ndarray:
    return shapely.get_coordinates(sdata.shapes[key].geometry.centroid.array)


@pytest.mark.parametrize("model", ["ridge", "neighbors"])
def test_one_row_per_cell_in_shapes_order(sdata, model):
    stp.tl.superresolve(sdata, model, grid="cells", shapes_key="cells", condition="none", progress=False)
    assert "spots_cells" not in sdata.shapes  # the segmentation is annotated, not copied
    t = sdata.tables[f"{model}_spots_cells"]
    cells = sdata.shapes["cells"]
    assert t.n_obs == len(cells) == N_CELLS
    assert list(t.obs_names) == [str(i) for i in cells.index]
    assert list(t.obs["instance_id"]) == list(cells.index)
    assert t.uns["spatialdata_attrs"]["region"] == "cells"
    assert (t.obs["region"] == "cells").all()
    np.testing.assert_allclose(t.obsm["spatial"], _centroids_px(sdata), atol=1e-9)
    np.testing.assert_allclose(t.obs["area_um2"], cells.geometry.area, rtol=1e-9)  # 1 µm/px
    assert np.isfinite(t.X).all()
    assert t.n_vars > 0
    rec = t.uns["stpredict"]["superresolve"]
    assert rec["grid"] == "cells" and rec["region_kind"] == "polygon" and rec["n_regions"] == N_CELLS
    assert rec["cells"]["shapes_key"] == "cells"
    assert not t.obs["measured"].any()


def test_cells_in_another_frame_and_circles(sdata):
    """Shapes in their own units, related to the image only through ``micrometers``; circles become 64-gons."""
    geo = stp.pp.spots(sdata)
    c_px = _centroids_px(sdata)
    # intrinsic coordinates: 4 units per µm, shifted; reach the image only through the micrometers system
    intr = (c_px * geo.microns_per_pixel - 3.0) * 4.0
    circles = ShapesModel.parse(
        intr,
        geometry=0,
        radius=np.full(len(intr), 24.0),  # 6 µm
        index=np.arange(len(intr)) * 7,
        transformations={
            "micrometers": _seq(Scale([0.25, 0.25], axes=("x", "y")), Translation([3.0, 3.0], axes=("x", "y")))
        },
    )
    sdata.shapes["nuclei"] = circles
    stp.tl.superresolve(sdata, "ridge", grid="cells", shapes_key="nuclei", condition="none", progress=False)
    t = sdata.tables["ridge_spots_cells"]
    assert list(t.obs_names) == [str(7 * k) for k in range(len(intr))]
    np.testing.assert_allclose(t.obsm["spatial"], c_px, atol=1e-6)
    np.testing.assert_allclose(t.obs["area_um2"], np.pi * 36.0, rtol=3e-3)
    rec = t.uns["stpredict"]["superresolve"]["cells"]
    assert rec["coordinate_system"] == "micrometers" and rec["source_kind"] == "circle"


def test_pixnet_cells_are_polygon_means_of_the_map(sdata):
    """Per-cell pixnet values = the dense map's mean over each polygon (linear space, then log1p)."""
    from stpredict.pp import aggregate_map, region_masks

    genes = list(sdata.tables["table"].var_names)
    p = stp.tl.fit(sdata, "pixnet", genes=genes, max_epochs=1, seed=0, progress=False, **smoke_config("pixnet"))
    stp.tl.superresolve(sdata, p, grid="cells", shapes_key="cells", condition="none", progress=False)
    t = sdata.tables["pixnet_spots_cells"]
    slide = stp.get.slide_data(sdata, genes=genes)
    polys_um = list(sdata.shapes["cells"].geometry)  # 1 µm/px, spots' frame = level-0 px
    lo = np.min([q.bounds[:2] for q in polys_um], axis=0) - 20
    hi = np.max([q.bounds[2:] for q in polys_um], axis=0) + 20
    m, map_um, origin = p.predict_map(slide, (lo[0], lo[1], hi[0], hi[1]))
    masks = region_masks(m.shape[1:], polygons=polys_um, origin=origin, cell_size=map_um)
    ref = aggregate_map(m, masks)
    got = np.expm1(np.asarray(t.X, float))
    assert np.isfinite(got).all()
    # the stitched map and predict's tile-by-tile sums are the same map (measured: ~2e-4 at 16 µm map pixels)
    np.testing.assert_allclose(got, ref, rtol=2e-3)
    assert (got.std(0) > 0).all()  # cells differ
    assert t.uns["stpredict"]["superresolve"]["region_kind"] == "polygon"


def _disk_overlap(spots_um: np.ndarray, diameter_um: float, polys: list) -> np.ndarray:
    disks = shapely.buffer(shapely.points(spots_um), diameter_um / 2, quad_segs=256)
    return shapely.area(shapely.intersection(disks[:, None], np.asarray(polys, dtype=object)[None, :]))


def test_condition_measured_pools_back_to_the_spots(sdata):
    """Cells weighted by polygon ∩ spot-disk area pool back to every spot they touch; gap cells stay finite."""
    stp.tl.superresolve(sdata, "ridge", grid="cells", shapes_key="cells", progress=False)
    t = sdata.tables["ridge_spots_cells"]
    rec = t.uns["stpredict"]["superresolve"]["condition"]
    assert rec["condition"] == "measured" and rec["max_rel_error"] <= 1e-6
    geo = stp.pp.spots(sdata)
    _, lin, _ = targets(sdata.tables["table"], geo.rows, list(t.var_names), None)
    area = _disk_overlap(geo.centers_um, geo.diameter_um, list(sdata.shapes["cells"].geometry))
    hit = area.sum(1) > 0
    assert 3 <= hit.sum() < geo.n_spots  # some spots hold cells, some none
    vals = np.expm1(np.asarray(t.X, float))
    pooled = (area[hit] @ vals) / area[hit].sum(1, keepdims=True)
    rel = np.abs(pooled - lin[hit]) / np.maximum(np.abs(lin[hit]), 1e-3)
    assert rel.max() <= 1e-3  # independent 1024-gon disks vs the 256-gon ones used inside
    gap = area.sum(0) == 0
    assert gap.any() and np.isfinite(t.X[gap]).all()
    assert rec["gap_fraction"] == pytest.approx(gap.mean())
    assert "image_only" in t.layers and not np.allclose(t.layers["image_only"], t.X)


def test_condition_measured_refuses_cells_outside_every_spot(sdata, monkeypatch):
    import stpredict.tl._superresolve as sr

    geo = stp.pp.spots(sdata)
    far = np.array([c for c in _centroids_px(sdata) if np.hypot(*(geo.centers - c).T).min() > geo.diameter / 2 + 10])
    sdata.shapes["gaps"] = ShapesModel.parse(far, geometry=0, radius=np.full(len(far), 3.0))
    monkeypatch.setattr(sr, "train", lambda *a, **k: pytest.fail("trained before the check"))
    with pytest.raises(ValueError, match="condition='none'"):
        stp.tl.superresolve(sdata, "ridge", grid="cells", shapes_key="gaps", condition="measured", progress=False)
    assert "ridge_spots_cells" not in sdata.tables


def test_squidpy_and_zarr_round_trip(sdata, tmp_path):
    import squidpy as sq
    from spatialdata import read_zarr

    stp.tl.superresolve(sdata, "ridge", grid="cells", shapes_key="cells", condition="none", key_added="expr")
    t = sdata.tables["expr"]
    sq.gr.spatial_neighbors(t, coord_type="generic", n_neighs=5)
    assert t.obsp["spatial_connectivities"].shape == (N_CELLS, N_CELLS)
    path = tmp_path / "cells.zarr"
    sdata.write(path)
    back = read_zarr(path)
    bt = back.tables["expr"]
    assert list(bt.obs_names) == list(t.obs_names)
    np.testing.assert_allclose(bt.X, t.X)
    np.testing.assert_allclose(bt.obsm["spatial"], t.obsm["spatial"])
    assert bt.uns["spatialdata_attrs"]["region"] == "cells"
    from spatialdata import join_spatialelement_table

    el, joined = join_spatialelement_table(
        sdata=back, spatial_element_names="cells", table_name="expr", how="left", match_rows="left"
    )
    assert list(joined.obs_names) == [str(i) for i in el["cells"].index]


def test_inplace_false_leaves_sdata_untouched(sdata):
    before = set(sdata.tables), set(sdata.shapes)
    out = stp.tl.superresolve(
        sdata, "ridge", grid="cells", shapes_key="cells", condition="none", inplace=False, progress=False
    )
    assert (set(sdata.tables), set(sdata.shapes)) == before
    assert set(out.shapes) == {"cells"} and set(out.tables) == {"ridge_spots_cells"}
    assert out.tables["ridge_spots_cells"].n_obs == N_CELLS


def _points_without_radius(sdata):
    sdata.shapes["pts"] = ShapesModel.parse(_centroids_px(sdata), geometry=0, radius=np.ones(N_CELLS))
    del sdata.shapes["pts"]["radius"]
    return {"shapes_key": "pts"}


def _transcripts(sdata):
    xy = pd.DataFrame(_centroids_px(sdata), columns=["x", "y"])
    sdata.points["transcripts"] = PointsModel.parse(xy, transformations={"global": Identity()})
    return {"shapes_key": "transcripts"}


def _other_frame(sdata):
    gdf = gpd.GeoDataFrame(geometry=sdata.shapes["cells"].geometry.copy())
    sdata.shapes["elsewhere"] = ShapesModel.parse(gdf, transformations={"aligned": Identity()})
    return {"shapes_key": "elsewhere"}


def _off_image(sdata):
    gdf = gpd.GeoDataFrame(geometry=sdata.shapes["cells"].geometry.translate(5000, 5000))
    sdata.shapes["far"] = ShapesModel.parse(gdf, transformations={"global": Identity()})
    return {"shapes_key": "far"}


@pytest.mark.parametrize(
    ("make", "err", "match"),
    [
        (lambda s: {}, ValueError, "pass shapes_key"),
        (lambda s: {"shapes_key": "nope"}, KeyError, "No shapes element 'nope'"),
        (_transcripts, KeyError, "is a point element"),
        (_points_without_radius, ValueError, "points without a 'radius'"),
        (_other_frame, ValueError, "share no coordinate system"),
        (_off_image, ValueError, "does not overlap the image"),
        (lambda s: {"shapes_key": "cells", "grid": "ps4"}, ValueError, "grid='cells' only"),
    ],
)
def test_bad_input_is_refused_before_any_work(sdata, monkeypatch, make, err, match):
    import stpredict.tl._superresolve as sr

    kwargs = {"grid": "cells", **make(sdata)}
    tables, shapes = set(sdata.tables), set(sdata.shapes)

    def no_work(*a, **k):
        raise AssertionError("work started before the input was checked")

    monkeypatch.setattr(sr, "prepare_training", no_work)
    with pytest.raises(err, match=match):
        stp.tl.superresolve(sdata, "ridge", condition="none", progress=False, **kwargs)
    assert set(sdata.tables) == tables and set(sdata.shapes) == shapes
