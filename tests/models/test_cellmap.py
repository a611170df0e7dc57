"""The dense feature map: exact window means, seamless tiles, agreement with the per-window features."""

from __future__ import annotations

import numpy as np
import pytest

import stpredict as stp
from stpredict.models import HandcraftedBackbone
from stpredict.models.backbones._cellmap import CellMap, _point_sums, build_cell_map, map_bounds


def _exact_window_mean(cells: np.ndarray, lo: np.ndarray, cell: float, c: np.ndarray, side: float) -> float:
    """Mean of a piecewise-constant cell map over the square [c - side/2, c + side/2), by overlap areas."""
    ny, nx = cells.shape
    edges_x = lo[0] + cell * np.arange(nx + 1)
    edges_y = lo[1] + cell * np.arange(ny + 1)
    ox = np.clip(np.minimum(edges_x[1:], c[0] + side / 2) - np.maximum(edges_x[:-1], c[0] - side / 2), 0, None)
    oy = np.clip(np.minimum(edges_y[1:], c[1] + side / 2) - np.maximum(edges_y[:-1], c[1] - side / 2), 0, None)
    return float((oy[:, None] * ox[None, :] * cells).sum() / side**2)


def test_window_means_are_exact_for_cell_constant_maps():
    """Window means, at cell-aligned and fractional positions alike, equal the overlap-weighted cell means."""
    rng = np.random.default_rng(0)
    cells = rng.random((2, 30, 40)).astype(np.float32)
    cmap = CellMap(cells, np.array([100.0, 50.0]), 4.0)
    centers = np.column_stack([rng.uniform(100 + 30, 100 + 160 - 30, 50), rng.uniform(50 + 30, 50 + 120 - 30, 50)])
    centers[:5] = [100.0, 50.0] + 4 * rng.integers(8, 22, (5, 2))  # some exactly on cell edges
    for side, got in zip((8.0, 28.0, 56.0), cmap.window_means(centers, (8.0, 28.0, 56.0)), strict=True):
        want = np.array([[_exact_window_mean(cells[k], cmap.lo_um, 4.0, c, side) for k in range(2)] for c in centers])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_cell_map_is_seamless_across_tiles_and_threads():
    """Tiles of any size, computed serially or in threads, give the same map as one pass over the image."""
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (3, 300, 260), dtype=np.uint8)

    def read_tile(center_um, size_um, out_px):  # 1 µm/px, white outside
        out = np.full((1, 3, out_px, out_px), 255, np.uint8)
        x0, y0 = (np.asarray(center_um) - size_um / 2).round().astype(int)
        ys, xs = slice(max(y0, 0), min(y0 + out_px, 300)), slice(max(x0, 0), min(x0 + out_px, 260))
        out[0, :, ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0] = img[:, ys, xs]
        return out

    def smooth(rgb):  # a filter with a 3 px reach: needs the margin
        from scipy import ndimage as ndi

        return ndi.uniform_filter(rgb[0].astype(np.float32), size=(1, 7, 7))

    lo, hi = np.array([0.0, 0.0]), np.array([260.0, 300.0])
    ref = build_cell_map(smooth, read_tile, lo, hi, n_channels=3, mpp=1.0, cell_um=4.0, tile_um=4096, n_threads=1)
    for tile_um, threads in ((40.0, 1), (64.0, 2), (100.0, 3)):
        got = build_cell_map(
            smooth, read_tile, lo, hi, n_channels=3, mpp=1.0, cell_um=4.0, tile_um=tile_um, n_threads=threads
        )
        np.testing.assert_allclose(got.means, ref.means, rtol=1e-5, atol=1e-4)
    # and the map is the block mean of the filtered image
    direct = smooth(img[None])[:, :300, :260].reshape(3, 75, 4, 65, 4).mean(axis=(2, 4))
    inner = (slice(None), slice(2, -2), slice(2, -2))  # the image border differs (white padding vs reflection)
    np.testing.assert_allclose(ref.means[inner], direct[inner], rtol=1e-5, atol=1e-3)


def test_cell_size_must_be_whole_pixels():
    with pytest.raises(ValueError, match="whole number of pixels"):
        build_cell_map(lambda x: x, lambda *a: None, np.zeros(2), np.ones(2) * 10, n_channels=1, mpp=1.5, cell_um=4.0)


@pytest.mark.parametrize("mpp", [1.0, 0.7])
def test_dense_features_agree_with_windows(mpp):
    """Per-feature correlation of the map's and the windows' features at the spots of a synthetic slide.

    At 1 µm/px windows are snapped to the image's pixels; at 0.7 µm/px windows and tiles are both resampled onto
    the 1 µm output lattice. Every feature agrees to r ≥ 0.99 (the least, about 0.996, are a gradient and the
    blob response's deviation in the centre view); nucleus counts, kept as points by the map, are exact in the
    window and centre views (to one nucleus where resampling rounds differently), and the context view's differ
    only by the peaks the windows' filters find at their patch's border.
    """
    from stpredict.pp._tiles import tile_reader
    from stpredict.tl._embedding_loop import compute_embeddings

    sdata = stp.datasets.synthetic(image_size=1024, n_genes=3, seed=0, microns_per_pixel=mpp)
    slide, geo = stp.get.slide_data(sdata), stp.pp.spots(sdata)
    bb = HandcraftedBackbone()
    windows = compute_embeddings(slide.image_levels, geo.centers, geo.microns_per_pixel_xy, bb, patch_size_um=112)
    um = geo.centers * np.asarray(geo.microns_per_pixel_xy)
    dense = bb.dense(tile_reader(slide.image_levels, geo.microns_per_pixel_xy), um, window_um=112)
    keep = windows.std(0) > 1e-6
    assert keep.sum() == bb.dim  # the blob response's context mean too (a DoG's was 0 over a reflected patch)
    r = np.array([np.corrcoef(windows[:, j], dense[:, j])[0, 1] for j in np.flatnonzero(keep)])
    assert np.median(r) > 0.999
    assert r.min() >= 0.99
    for view, side in (("window", 112.0), ("centre", 56.0)):
        j = bb.feature_names.index(f"mean_nuclei_count_{view}")
        nuclei = np.abs(windows[:, j] - dense[:, j]) * side**2 / 100  # whole nuclei
        assert np.all(np.abs(nuclei - nuclei.round()) < 1e-3)
        assert nuclei.round().sum() <= (0 if mpp == 1.0 else 3)


def test_point_channels_sum_exactly_over_any_window():
    """A sparse channel kept as points: window means are exact counts, at any sub-cell position."""
    rng = np.random.default_rng(2)
    img = rng.integers(0, 255, (3, 120, 100), dtype=np.uint8)

    def read_tile(center_um, size_um, out_px):  # 1 µm/px, white outside
        out = np.full((1, 3, out_px, out_px), 255, np.uint8)
        x0, y0 = (np.asarray(center_um) - size_um / 2).round().astype(int)
        ys, xs = slice(max(y0, 0), min(y0 + out_px, 120)), slice(max(x0, 0), min(x0 + out_px, 100))
        out[0, :, ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0] = img[:, ys, xs]
        return out

    def spikes(rgb):  # one sparse channel: 2.0 where red > 250
        return np.stack([rgb[0, 1].astype(np.float32), 2.0 * (rgb[0, 0] > 250)])

    lo, hi = np.array([0.0, 0.0]), np.array([100.0, 120.0])
    cmap = build_cell_map(spikes, read_tile, lo, hi, n_channels=2, mpp=1.0, cell_um=4.0, tile_um=40, point_channels=[1])
    ys, xs = np.nonzero(img[0] > 250)
    np.testing.assert_array_equal(np.sort(cmap.points[1][0][:, 0]), np.sort(xs))
    centers = rng.uniform(30, 70, (40, 2))
    centers[:4] = [[40.5, 50.5], [41.0, 52.0], [43.25, 60.75], [50.5, 51.0]]  # edges on pixel centres and corners
    for side, got in zip((8.0, 21.0, 40.0), cmap.window_means(centers, (8.0, 21.0, 40.0)), strict=True):
        half = side / 2
        want = [
            2.0
            * np.sum(
                (xs + 0.5 > c[0] - half)
                & (xs + 0.5 <= c[0] + half)
                & (ys + 0.5 > c[1] - half)
                & (ys + 0.5 <= c[1] + half)
            )
            for c in centers
        ]
        np.testing.assert_allclose(got[:, 1], np.asarray(want) / side**2, rtol=1e-6)
        # the same boxes counted through integral images of small blocks (the path of many small windows)
        ij, weight = cmap.points[1]
        blocks = _point_sums(ij, weight, centers, [side], pixel_um=1.0, lo_um=cmap.lo_um, block_px=8)
        np.testing.assert_allclose(blocks[:, 0], want, rtol=1e-9)


def test_map_bounds_hold_every_window():
    lo, hi = map_bounds(np.array([[10.0, 20.0], [90.0, 55.0]]), 30.0, 4.0)
    assert np.all(lo <= [10 - 30, 20 - 30]) and np.all(hi >= [90 + 30, 55 + 30])
    assert np.allclose(lo % 4, 0) and np.allclose(hi % 4, 0)


def test_a_pickled_backbone_keeps_its_nucleus_points():
    """A backbone sent to a Dask worker is a copy: its dense map still counts nucleus centres exactly."""
    import pickle

    bb = HandcraftedBackbone()
    assert pickle.loads(pickle.dumps(bb))._point_channels() == bb._point_channels() != []
