"""PixNet: seamless stitching, region aggregation through the dense map, the map as an image element."""

from __future__ import annotations

import numpy as np
import pytest
from smoke import smoke_config

import stpredict as stp


@pytest.fixture(scope="module")
def fitted():
    sdata = stp.datasets.synthetic(image_size=768, n_genes=6, seed=2)
    genes = list(sdata.tables["table"].var_names)
    cfg = smoke_config("pixnet")
    p = stp.tl.fit(sdata, "pixnet", genes=genes, max_epochs=1, seed=0, progress=False, **cfg)
    slide = stp.get.slide_data(sdata, genes=genes)
    return sdata, p, slide


def test_stitched_map_matches_single_tile(fitted):
    """Many overlapping tiles (sin² blending, quarter-tile context) reproduce one tile over the whole box.

    The network's receptive field is wider than the context margin, so tiles do not see exactly what the
    single pass sees; the tolerance (5 % relative L2, 0.99 correlation) bounds that context effect, and is far
    below the differences between genes or regions (a seam or a misplaced tile gives > 30 %).
    """
    _, p, slide = fitted
    c = slide.centers_px.mean(0) * np.asarray(slide.microns_per_pixel_xy)
    box = (c[0] - 180, c[1] - 180, c[0] + 180, c[1] + 180)
    one, map_um, origin = p.predict_map(slide, box, single_tile=True)
    tiled, map_um2, origin2 = p.predict_map(slide, box, tile_map_px=16)
    assert map_um == map_um2 and origin == origin2 and one.shape == tiled.shape
    assert (tiled >= 0).all()
    inner = (slice(None), slice(4, -4), slice(4, -4))  # the box's own border has less context in either case
    a, b = tiled[inner], one[inner]
    rel = np.linalg.norm(a - b) / np.linalg.norm(b)
    assert rel < 0.05, rel
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99


def test_chunked_zarr_map_equals_in_memory(fitted, tmp_path):
    _, p, slide = fitted
    c = slide.centers_px.mean(0) * np.asarray(slide.microns_per_pixel_xy)
    box = (c[0] - 120, c[1] - 120, c[0] + 120, c[1] + 120)
    mem, _, _ = p.predict_map(slide, box)
    z, _, _ = p.predict_map(slide, box, store=tmp_path / "map.zarr")
    np.testing.assert_allclose(np.asarray(z[:]), mem, rtol=1e-5, atol=1e-6)


def test_spot_prediction_is_the_disk_mean_of_the_map(fitted):
    """`predict` at the spots equals log1p of the map's mean over each spot's disk (linear space)."""
    sdata, p, slide = fitted
    from stpredict.models._base import Regions

    idx = np.arange(0, slide.n, max(1, slide.n // 8))
    regions = Regions(centers_px=slide.centers_px[idx], kind="circle", size_um=float(stp.pp.spots(sdata).diameter_um))
    pred, _ = p.predict(slide, regions)
    mpp = np.asarray(slide.microns_per_pixel_xy)
    r = regions.size_um / 2
    for k, cpx in enumerate(regions.centers_px):
        c = cpx * mpp
        m, map_um, (ox, oy) = p.predict_map(slide, (c[0] - r - 20, c[1] - r - 20, c[0] + r + 20, c[1] + r + 20))
        yy, xx = np.mgrid[: m.shape[1], : m.shape[2]]
        inside = np.hypot(ox + (xx + 0.5) * map_um - c[0], oy + (yy + 0.5) * map_um - c[1]) <= r
        np.testing.assert_allclose(pred[k], np.log1p(m[:, inside].mean(1)), rtol=0.1, atol=0.05)


def test_superresolve_writes_the_map_as_an_image(fitted):
    from spatialdata.transformations import get_transformation

    sdata, p, _ = fitted
    stp.tl.superresolve(sdata, p, bin_size=24, map_key=True, progress=False, tissue=False)
    key = "pixnet_spots_map"
    img = sdata.images[key]
    assert list(img.coords["c"].values) == list(p.genes)
    assert float(img.min()) >= 0
    rec = sdata.tables["pixnet_spots_bin24um"].uns["stpredict"]["superresolve"]["map"]
    assert rec["key"] == key
    # the image's pixel (0, 0) lands at the map origin in the H&E's pixels
    t = get_transformation(img, to_coordinate_system="global").to_affine_matrix(("x", "y"), ("x", "y"))
    mpp = stp.pp.spots(sdata).microns_per_pixel
    np.testing.assert_allclose(t[:2, 2], np.asarray(rec["origin_um"]) / mpp, rtol=1e-6)
    np.testing.assert_allclose(t[0, 0], rec["microns_per_pixel"] / mpp, rtol=1e-6)


def test_map_key_refused_for_models_without_a_map(sdata_syn):
    with pytest.raises(ValueError, match="dense map"):
        stp.tl.superresolve(sdata_syn, "ridge", grid="ps4", map_key=True, progress=False)
    assert "ridge_spots_ps4" not in sdata_syn.tables


def _truth(truth, centers_um, size_um, kind):
    lam = truth.mean_rates(centers_um, size_um, kind)
    ok = lam.sum(1) > 0
    return np.log1p(lam / np.maximum(lam.sum(1, keepdims=True), 1e-12) * 1e4), ok


@pytest.mark.slow
def test_map_tracks_truth_at_spots_and_at_smaller_bins():
    """At the training spot size the aggregated map matches spot truth, and at 2× smaller bins (25 µm squares
    vs 55 µm spots) it still tracks the high-resolution truth.

    Whether it tracks it *better* than ridge on hand-crafted features and than neighbour interpolation depends
    on the draw of the synthetic tissue (measured: ahead of both with 8 genes, behind neighbours with 6): that
    comparison is reported by ``benchmarks`` and on the issue, not asserted here.
    """
    sdata = stp.datasets.synthetic(image_size=1200, n_genes=6, seed=1)
    genes = list(sdata.tables["table"].var_names)
    truth = stp.datasets.synthetic_truth(sdata)
    geo = stp.pp.spots(sdata)
    p = stp.tl.fit(sdata, "pixnet", genes=genes, max_epochs=12, seed=0, progress=False)
    slide = stp.get.slide_data(sdata, genes=genes)
    from stpredict.models._base import Regions

    at_spots, _ = p.predict(slide, Regions(slide.centers_px, "circle", geo.diameter_um))
    t_spots, ok = _truth(truth, slide.centers_um, geo.diameter_um, "circle")
    assert np.nanmean(stp.metrics.pearson_per_gene(t_spots[ok], at_spots[ok])) > 0.6

    stp.tl.superresolve(sdata, p, bin_size=25, genes=genes, progress=False)
    t = sdata.tables["pixnet_spots_bin25um"]
    centers_um = np.asarray(t.obsm["spatial"]) * geo.microns_per_pixel
    tt, ok = _truth(truth, centers_um, 25.0, "square")
    pred = np.asarray(t[:, genes].X)
    assert np.nanmean(stp.metrics.pearson_per_gene(tt[ok], pred[ok])) > 0.5
