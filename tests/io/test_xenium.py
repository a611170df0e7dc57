"""stp.io.read_xenium on a tiny Xenium bundle written to 10x's layout (tests/xenium_fixture.py)."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
from xenium_fixture import write_alignment_csv, write_xenium_fixture

import stpredict as stp
from stpredict._image import image_levels


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return write_xenium_fixture(tmp_path_factory.mktemp("xenium"))


def _read(fx, **kw):
    kw.setdefault("he_image", fx.he_path)
    kw.setdefault("alignment", fx.alignment_path)
    return stp.io.read_xenium(fx.path, **kw)


@pytest.fixture(scope="module")
def sdata_x(bundle):
    """Read once for the tests that only look."""
    return _read(bundle)


@pytest.fixture
def stp_log(caplog):
    log = logging.getLogger("stpredict")
    log.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="stpredict")
    yield caplog
    log.removeHandler(caplog.handler)


def _affine(element, cs):
    from spatialdata.transformations import get_transformation

    t = get_transformation(element, to_coordinate_system=cs)
    return np.asarray(t.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")), dtype=float)


def _apply(m, xy):
    return np.asarray(xy, float) @ m[:2, :2].T + m[:2, 2]


def _truth_index(fx, ids):
    pos = {c: i for i, c in enumerate(fx.cell_ids)}
    return np.array([pos[str(c)] for c in ids])


def _snapshot(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*"))


# -- what is read ----------------------------------------------------------------------------------------------


def test_cells_in_micrometres_are_the_truth(bundle, sdata_x):
    fx, sdata = bundle, sdata_x
    assert set(sdata.images) == {"he"}  # morphology dropped by default
    assert {"cell_circles", "cell_boundaries", "nucleus_boundaries"} <= set(sdata.shapes)
    table = sdata.tables["table"]
    attrs = table.uns["spatialdata_attrs"]
    assert attrs == {"region": "cell_circles", "region_key": "region", "instance_key": "cell_id"}
    assert table.X.dtype == np.int32
    assert table.var_names.tolist() == fx.genes  # gex_only: no control probes or codewords
    idx = _truth_index(fx, table.obs_names)
    assert len(idx) == len(fx.cell_ids)
    np.testing.assert_array_equal(table.X.toarray(), fx.counts[idx])
    assert (table.obs["cell_id"].astype(str).to_numpy() == table.obs_names.to_numpy()).all()

    # circles in the micrometers coordinate system: centres and equal-area radii
    circles = sdata.shapes["cell_circles"]
    xy = np.column_stack([circles.geometry.x, circles.geometry.y])
    um = _apply(_affine(circles, "micrometers"), xy)
    ci = _truth_index(fx, circles.index)
    np.testing.assert_allclose(um, fx.centers_um[ci], atol=1e-9)
    np.testing.assert_allclose(circles["radius"], np.sqrt(fx.cell_area[ci] / np.pi), rtol=1e-12)

    # polygons (float32 vertices in the parquet) and nuclei
    polys = sdata.shapes["cell_boundaries"]
    pi = _truth_index(fx, polys.index)
    cent = _apply(_affine(polys, "micrometers"), np.column_stack([polys.centroid.x, polys.centroid.y]))
    np.testing.assert_allclose(cent, fx.centers_um[pi], atol=1e-4)
    assert len(sdata.shapes["nucleus_boundaries"]) == int(fx.has_nucleus.sum())

    # the verbs' geometry: cells in the H&E's pixels, in µm through the H&E's micrometers transformation
    geo = stp.pp.spots(sdata)
    assert (geo.image_key, geo.spots_key, geo.table_key) == ("he", "cell_circles", "table")
    gi = _truth_index(fx, geo.obs_names)
    np.testing.assert_allclose(_apply(_affine(sdata.images["he"], "micrometers"), geo.centers), fx.centers_um[gi])
    np.testing.assert_allclose(geo.microns_per_pixel_xy, (fx.he_mpp, fx.he_mpp), rtol=1e-9)
    assert geo.mpp_source == "micrometers"
    assert geo.diameter_um == pytest.approx(2 * np.median(np.sqrt(fx.cell_area / np.pi)), rel=1e-9)
    src = table.uns["stpredict_source"]
    assert src["technology"] == "Xenium" and src["pixel_size_um"] == fx.pixel_size
    assert src["n_cells_dropped_outside_he"] == 0


def test_he_is_rgb_multiscale(bundle, sdata_x):
    levels = image_levels(sdata_x.images["he"])
    assert len(levels) >= 2
    lvl0 = np.asarray(levels[0].array)
    assert lvl0.dtype == np.uint8 and lvl0.shape == bundle.he_image.shape
    np.testing.assert_array_equal(lvl0, bundle.he_image)
    assert list(sdata_x.images["he"]["scale0"]["image"].coords["c"].values) == ["r", "g", "b"]


def test_he_pixel_at_each_cell_is_the_known_one(bundle, sdata_x):
    """Registration: the H&E pixel under a cell (spatialdata's transformations) is the synthetic image's pixel at
    the position the fixture put the cell on it (Xenium px -> H&E px by the inverse of the known affine)."""
    from spatialdata.transformations import get_transformation

    fx, sdata = bundle, sdata_x
    he = sdata.images["he"]
    to_he = get_transformation(he, to_coordinate_system="micrometers").inverse()
    m = np.asarray(to_he.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")), dtype=float)
    px = _apply(m, fx.centers_um)  # read: µm -> H&E pixels through the element's own transformation
    known = _apply(np.linalg.inv(fx.he_to_xenium), fx.centers_um / fx.pixel_size)  # the fixture's truth
    np.testing.assert_allclose(px, known, atol=1e-6)  # within a millionth of a pixel

    lvl0 = np.asarray(image_levels(he)[0].array)
    c, r = np.floor(px[:, 0]).astype(int), np.floor(px[:, 1]).astype(int)
    kc, kr = np.floor(known[:, 0]).astype(int), np.floor(known[:, 1]).astype(int)
    read = lvl0[:, r, c].T
    truth = fx.he_image[:, kr, kc].T
    assert (read == truth).all(axis=1).mean() == 1.0
    # the check can fail: 3 pixels off, most cells see another pixel
    shifted = lvl0[:, r, np.clip(c + 3, 0, lvl0.shape[2] - 1)].T
    assert (shifted == truth).all(axis=1).mean() < 0.5


def test_roundtrip_zarr(bundle, sdata_x, tmp_path):
    from spatialdata import read_zarr

    sdata_x.write(tmp_path / "x.zarr")
    back = read_zarr(tmp_path / "x.zarr")
    assert set(back.images) == set(sdata_x.images) and set(back.shapes) == set(sdata_x.shapes)
    assert set(back.points) == set(sdata_x.points)
    ta, tb = sdata_x.tables["table"], back.tables["table"]
    assert (ta.obs_names == tb.obs_names).all() and (ta.var_names == tb.var_names).all()
    assert abs(ta.X - tb.X).sum() == 0 and tb.X.dtype == np.int32
    assert tb.uns["spatialdata_attrs"] == ta.uns["spatialdata_attrs"]
    for k in sdata_x.shapes:
        assert (sdata_x.shapes[k].index == back.shapes[k].index).all()
        for cs in ("global", "micrometers"):
            np.testing.assert_allclose(_affine(back.shapes[k], cs), _affine(sdata_x.shapes[k], cs))
    for cs in ("global", "micrometers"):
        np.testing.assert_allclose(_affine(back.images["he"], cs), _affine(sdata_x.images["he"], cs))
        np.testing.assert_allclose(_affine(back.points["transcripts"], cs), _affine(sdata_x.points["transcripts"], cs))
    ga, gb = stp.pp.spots(sdata_x), stp.pp.spots(back)
    np.testing.assert_allclose(gb.centers, ga.centers)
    np.testing.assert_allclose(gb.microns_per_pixel_xy, ga.microns_per_pixel_xy)
    assert (gb.obs_names == ga.obs_names).all()
    np.testing.assert_array_equal(np.asarray(image_levels(back.images["he"])[0].array), bundle.he_image)
    assert len(back.points["transcripts"].compute()) == len(sdata_x.points["transcripts"].compute())


def test_feeds_predict(bundle):
    sdata = _read(bundle)
    stp.tl.predict(sdata, model="ridge", n_genes=8, progress=False)
    table = sdata.tables["table"]
    panel = np.flatnonzero(table.var["predicted"].to_numpy())
    assert len(panel) == 8
    pred = table.layers["predicted"][:, panel]
    assert np.isfinite(pred).all()
    # the counts follow the synthetic tissue at the cells' places on the H&E: out-of-fold predictions from the
    # registered H&E recover them (a misregistered H&E would not)
    X = table.X.toarray().astype(float)
    y = np.log1p(X / np.maximum(X.sum(1, keepdims=True), 1) * 1e4)[:, panel]
    pcc = [np.corrcoef(y[:, j], pred[:, j])[0, 1] for j in range(len(panel))]
    assert np.nanmean(pcc) > 0.4


def test_zarr_copy_feeds_cross_validate_and_superresolve(bundle, tmp_path):
    from spatialdata import read_zarr

    _read(bundle).write(tmp_path / "x.zarr")
    back = read_zarr(tmp_path / "x.zarr")
    res = stp.tl.cross_validate(back, "ridge", protocol="hide", n_genes=6, seed=0, progress=False)
    assert len(res.folds) == 1 and res.failures.empty
    assert np.isfinite(res.scores["pearson"]).all()
    # the cells themselves as the grid: one prediction per cell polygon, in the cells' order
    model = stp.tl.fit(back, "ridge", n_genes=6, progress=False)
    stp.tl.superresolve(back, model, grid="cells", shapes_key="cell_boundaries", condition="none", progress=False)
    (key,) = [k for k in back.tables if k != "table"]
    grid = back.tables[key]
    assert grid.n_obs == back.tables["table"].n_obs and np.isfinite(np.asarray(grid.X)).all()


# -- options ---------------------------------------------------------------------------------------------------


def test_array_and_png_inputs_match_files(bundle, sdata_x, tmp_path):
    from PIL import Image

    sdata = _read(bundle, he_image=bundle.he_image.transpose(1, 2, 0), alignment=bundle.he_to_xenium, transcripts=False)
    assert "transcripts" not in sdata.points
    np.testing.assert_allclose(stp.pp.spots(sdata).centers, stp.pp.spots(sdata_x).centers, atol=1e-9)
    png = tmp_path / "he.png"
    Image.fromarray(bundle.he_image.transpose(1, 2, 0)).save(png)
    sdata = _read(bundle, he_image=png, transcripts=False)
    np.testing.assert_allclose(stp.pp.spots(sdata).centers, stp.pp.spots(sdata_x).centers, atol=1e-9)
    np.testing.assert_array_equal(np.asarray(image_levels(sdata.images["he"])[0].array), bundle.he_image)
    np.testing.assert_allclose(stp.io.read_alignment(bundle.alignment_path), bundle.he_to_xenium, rtol=0, atol=0)


def test_morphology_and_labels_on_request(bundle):
    sdata = _read(bundle, morphology=True, labels=True)
    assert {"he", "morphology_focus"} <= set(sdata.images)
    assert {"cell_labels", "nucleus_labels"} <= set(sdata.labels)
    ps = bundle.pixel_size
    for element in (sdata.images["morphology_focus"], sdata.labels["cell_labels"]):
        np.testing.assert_allclose(_affine(element, "micrometers"), np.diag([ps, ps, 1.0]))
    # a cell's label in the mask (morphology pixels, through µm) is the cell's
    labels = np.asarray(image_levels_labels(sdata.labels["cell_labels"]))
    table = sdata.tables["table"]
    idx = _truth_index(bundle, table.obs_names)
    px = np.floor(bundle.centers_um[idx] / ps).astype(int)
    np.testing.assert_array_equal(labels[px[:, 1], px[:, 0]], table.obs["cell_labels"].to_numpy())
    # with the morphology images kept, the H&E is named
    geo = stp.pp.spots(sdata, image_key="he")
    assert geo.image_key == "he"


def test_verbs_pick_the_he_beside_morphology(bundle):
    # an 8-bit RGB image is the H&E: preferred over the finer uint16 morphology image
    sdata = _read(bundle, morphology=True, transcripts=False)
    assert stp.pp.spots(sdata).image_key == "he"


def image_levels_labels(element):
    return element["scale0"]["image"].data.compute() if hasattr(element, "children") else element.data.compute()


def test_he_found_in_the_bundle(bundle, tmp_path):
    outs = tmp_path / "outs"
    shutil.copytree(bundle.path, outs)
    shutil.copy(bundle.he_path, outs / bundle.he_path.name)
    shutil.copy(bundle.alignment_path, outs / bundle.alignment_path.name)
    sdata = stp.io.read_xenium(outs, transcripts=False)
    assert "he" in sdata.images
    np.testing.assert_allclose(_affine(sdata.images["he"], "global"), bundle.he_to_xenium)


def test_cells_off_the_he_are_dropped(bundle, tmp_path, stp_log):
    shifted = bundle.he_to_xenium.copy()
    shifted[0, 2] += 300.0  # the H&E moves right by 300 Xenium px: cells on the left fall off it
    csv = tmp_path / "shifted_imagealignment.csv"
    write_alignment_csv(csv, shifted)
    sdata = _read(bundle, alignment=csv, transcripts=False)
    table = sdata.tables["table"]
    n_drop = table.uns["stpredict_source"]["n_cells_dropped_outside_he"]
    assert 0 < n_drop < len(bundle.cell_ids)
    assert table.n_obs == len(sdata.shapes["cell_circles"]) == len(bundle.cell_ids) - n_drop
    assert len(sdata.shapes["cell_boundaries"]) == len(bundle.cell_ids)  # polygons keep every cell
    assert "outside the registered H&E" in stp_log.text
    geo = stp.pp.spots(sdata)
    h, w = geo.image_shape
    assert (geo.centers >= 0).all() and (geo.centers[:, 0] <= w).all() and (geo.centers[:, 1] <= h).all()
    kept = _read(bundle, alignment=csv, transcripts=False, drop_cells_outside_he=False)
    assert kept.tables["table"].n_obs == len(bundle.cell_ids)
    with pytest.raises(ValueError, match="outside image"):
        stp.pp.spots(kept)


# -- bad input: a clear error before anything is read ----------------------------------------------------------


@pytest.fixture
def no_read(monkeypatch):
    import spatialdata_io

    def boom(*args, **kwargs):
        raise AssertionError("spatialdata_io.xenium was called")

    monkeypatch.setattr(spatialdata_io, "xenium", boom)


def test_he_without_alignment(bundle, no_read):
    before = _snapshot(bundle.path.parent)
    with pytest.raises(ValueError, match="without alignment=.*imagealignment.csv"):
        stp.io.read_xenium(bundle.path, he_image=bundle.he_path)
    with pytest.raises(ValueError, match="without he_image"):
        stp.io.read_xenium(bundle.path, alignment=bundle.alignment_path)
    assert _snapshot(bundle.path.parent) == before


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("1,0,0\n0,1,0\n", r"not a 3×3 matrix \(shape \(2, 3\)\)"),
        ("1,0,0,0\n0,1,0,0\n0,0,1,0\n0,0,0,1\n", r"not a 3×3 matrix \(shape \(4, 4\)\)"),
        ("1,0\n0,1,0\n0,0,1\n", "unequal length"),
        ("fixedX,fixedY,alignmentX,alignmentY\n1,2,3,4\n", "keypoints"),
        ("a,b,c\n1,0,0\n0,1,0\n", "not a 3×3 matrix of numbers"),
        ("1,0,0\n0,1,0\n0.001,0,1\n", "last row"),
        ("1,2,0\n2,4,0\n0,0,1\n", "singular"),
        ("nan,0,0\n0,1,0\n0,0,1\n", "non-finite"),
    ],
)
def test_alignment_not_a_3x3_affine(bundle, tmp_path, no_read, content, match):
    csv = tmp_path / "bad_imagealignment.csv"
    csv.write_text(content)
    before = _snapshot(bundle.path.parent)
    with pytest.raises(ValueError, match=match):
        _read(bundle, alignment=csv)
    assert _snapshot(bundle.path.parent) == before


def test_alignment_array_and_missing_file(bundle, tmp_path, no_read):
    with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
        _read(bundle, alignment=bundle.he_to_xenium[:2])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _read(bundle, alignment=tmp_path / "nope.csv")
    zipped = tmp_path / "alignment_files.zip"
    zipped.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    with pytest.raises(ValueError, match="unzip"):
        _read(bundle, alignment=zipped)


def test_he_off_the_cells(bundle, tmp_path, no_read):
    far = bundle.he_to_xenium.copy()
    far[:2, 2] += 1e5
    csv = tmp_path / "far_imagealignment.csv"
    write_alignment_csv(csv, far)
    before = _snapshot(bundle.path.parent)
    with pytest.raises(ValueError, match="no cell is on the H&E"):
        _read(bundle, alignment=csv)
    assert _snapshot(bundle.path.parent) == before


def test_not_a_bundle_and_not_rgb(bundle, tmp_path, no_read):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        stp.io.read_xenium(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="lacks"):
        stp.io.read_xenium(tmp_path)
    grey = bundle.he_image[0]
    with pytest.raises(ValueError, match="8-bit RGB"):
        _read(bundle, he_image=grey, alignment=bundle.he_to_xenium)
    with pytest.raises(TypeError, match="sets"):
        _read(bundle, cells_as_circles=False)
