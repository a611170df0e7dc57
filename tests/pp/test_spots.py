from __future__ import annotations

import numpy as np
import pytest

import stpredict as stp


def _img_sdata(img, mpp=1.0):
    coords = np.array([[20.0, 20.0], [60.0, 20.0], [40.0, 50.0]])
    return stp.io.from_arrays(img, coords, np.ones((3, 2), int), mpp, 10.0)


def test_missing_and_ambiguous_keys(sdata_syn):
    with pytest.raises(KeyError, match="No image element 'nope'.*he"):
        stp.pp.spots(sdata_syn, image_key="nope")
    with pytest.raises(KeyError, match="spots"):
        stp.pp.spots(sdata_syn, spots_key="other")
    # a misspelt key is answered as such, with the fix (not "no table annotates a shapes element")
    with pytest.raises(KeyError, match=r"No shape element 'spot'.*Did you mean spots_key='spots'\?"):
        stp.tl.predict(sdata_syn, "ridge", spots_key="spot", progress=False)
    sdata_syn.images["he2"] = sdata_syn.images["he"]
    with pytest.raises(KeyError, match="image_key"):
        stp.pp.spots(sdata_syn)
    assert stp.pp.spots(sdata_syn, image_key="he2").n_spots > 0


def test_no_pixel_size_is_an_error_until_set(sdata_syn):
    from spatialdata.transformations import remove_transformation

    before = {k: dict(v.attrs) for k, v in sdata_syn.shapes.items()}
    for el in (sdata_syn.images["he"], sdata_syn.shapes["spots"]):
        remove_transformation(el, "micrometers")
    with pytest.raises(ValueError, match="set_microns_per_pixel"):
        stp.pp.spots(sdata_syn)
    assert stp.pp.spots(sdata_syn, microns_per_pixel=0.5).microns_per_pixel == 0.5
    stp.io.set_microns_per_pixel(sdata_syn, 2.0)
    geo = stp.pp.spots(sdata_syn)
    assert geo.microns_per_pixel == pytest.approx(2.0)
    assert geo.mpp_source == "micrometers"
    assert set(before) == set(sdata_syn.shapes)


def test_spots_outside_image_error(sdata_syn):
    from spatialdata.transformations import Translation, set_transformation

    set_transformation(sdata_syn.shapes["spots"], Translation([5000, 0], axes=("x", "y")), "global")
    with pytest.raises(ValueError, match="outside image"):
        stp.pp.spots(sdata_syn)


def test_table_not_annotating_spots(sdata_syn):
    t = sdata_syn.tables["table"]
    t.obs["spot_id"] = t.obs["spot_id"].to_numpy() + 10_000
    with pytest.raises(ValueError, match="does not annotate"):
        stp.pp.spots(sdata_syn)


@pytest.mark.parametrize(
    ("kind", "match"),
    [("rgba_transparent", "transparency"), ("grey", "greyscale"), ("uint16", "uint16"), ("blank", "blank")],
)
def test_bad_images(kind, match):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (80, 80, 3), dtype=np.uint8)
    if kind == "rgba_transparent":
        img = np.concatenate([base, np.full((80, 80, 1), 128, np.uint8)], axis=2)
    elif kind == "grey":
        img = base[..., 0]
    elif kind == "uint16":
        img = base.astype(np.uint16) * 200
    else:
        img = np.zeros_like(base)
    sdata = _img_sdata(img)
    with pytest.raises(ValueError, match=match):
        stp.pp.spots(sdata)
    if kind != "blank":
        stp.io.to_rgb(sdata, "he")
        geo = stp.pp.spots(sdata, image_key="he_rgb")
        assert geo.n_spots == 3


def test_opaque_alpha_is_dropped():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (80, 80, 3), dtype=np.uint8)
    img = np.concatenate([base, np.full((80, 80, 1), 255, np.uint8)], axis=2)
    sdata = _img_sdata(img)
    ds = stp.pp.patches(sdata, size_um=10, patch_px=10)
    np.testing.assert_array_equal(ds[0], base[15:25, 15:25].transpose(2, 0, 1))


def test_anisotropic_affine_fit():
    from stpredict.io._st import fit_array_affine

    rng = np.random.default_rng(1)
    arr = rng.integers(0, 30, (50, 2)).astype(float)
    A = np.array([[21.6, 0.3], [-0.2, 24.1]])
    pix = arr @ A.T + [100, 200]
    A_fit, t = fit_array_affine(arr, pix)
    np.testing.assert_allclose(A_fit, A)
    np.testing.assert_allclose(t, [100, 200])


def test_square_polygons_in_spots():
    """Square polygons (any orientation) have diameter = side; other polygons keep the equal-area diameter."""
    import geopandas as gpd
    from shapely import affinity
    from shapely.geometry import Polygon, box
    from spatialdata.models import ShapesModel

    img = np.random.default_rng(0).integers(0, 255, (100, 100, 3), dtype=np.uint8)
    counts = np.ones((2, 1), int)
    sdata = stp.io.from_arrays(img, np.array([[30.0, 30.0], [70.0, 60.0]]), counts, 0.5, 10.0)
    key = next(iter(sdata.shapes))
    ts = dict(sdata.shapes[key].attrs["transform"])
    rot = affinity.rotate(box(60, 50, 80, 70), 30)
    sq = gpd.GeoDataFrame(geometry=[box(20, 20, 40, 40), rot], index=sdata.shapes[key].index)
    sdata.shapes[key] = ShapesModel.parse(sq, transformations=ts)
    geo = stp.pp.spots(sdata)
    assert geo.kind == "square" and geo.diameter == pytest.approx(20.0)
    np.testing.assert_allclose(geo.centers, [[30, 30], [70, 60]], atol=1e-9)
    tri = Polygon([(20, 20), (40, 20), (30, 40)])
    sdata.shapes[key] = ShapesModel.parse(
        gpd.GeoDataFrame(geometry=[tri, box(60, 50, 80, 70)], index=sq.index), transformations=ts
    )
    geo = stp.pp.spots(sdata)
    assert geo.kind == "polygon"
    assert geo.diameter == pytest.approx(np.median(2 * np.sqrt(np.array([200.0, 400.0]) / np.pi)))
