"""Dense maps of convolutional backbones: which qualify, exactness where theory says, seamless tiles, agreement."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch

import stpredict as stp
from stpredict.models.backbones._convmap import ConvMapSpec, conv_cell_map

if TYPE_CHECKING:
    from stpredict.models.backbones import TorchBackbone

MPP = 0.5  # µm per pixel of the test images


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """A 1,600² RGB image with structure at several scales (white outside it)."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(0)
    noise = rng.random((3, 1600, 1600)).astype(np.float32)
    img = ndi.gaussian_filter(noise, (0, 3, 3)) * 0.6 + ndi.gaussian_filter(noise, (0, 20, 20)) * 0.4
    img = (img - img.min()) / (img.max() - img.min())
    return (img * 255).astype(np.uint8)


def _reader(img: np.ndarray):
    def read_tile(center_um, size_um, out_px):
        out = np.full((1, 3, out_px, out_px), 255, np.uint8)
        x0, y0 = np.round(np.asarray(center_um) / MPP - out_px / 2).astype(int)
        h, w = img.shape[1:]
        ys, xs = slice(max(y0, 0), min(y0 + out_px, h)), slice(max(x0, 0), min(x0 + out_px, w))
        if ys.stop > ys.start and xs.stop > xs.start:
            out[0, :, ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0] = img[:, ys, xs]
        return out

    return read_tile


def _windows(bb: TorchBackbone, read_tile, centers_um: np.ndarray, window_um: float) -> np.ndarray:
    """The per-window path: each window read at ``window_um / patch_px`` µm/px and embedded."""
    px = round(window_um / MPP)
    return bb.embed(np.concatenate([read_tile(c, window_um, px) for c in centers_um]), device="cpu")


@pytest.fixture(scope="module")
def tiny() -> TorchBackbone:
    """timm's test_resnet (0.4 M parameters, 160 px, stride 32, padded convolutions), random weights."""
    torch.manual_seed(0)
    return stp.models.get_backbone("test_resnet", pretrained=False)


def test_which_backbones_have_dense_maps(tiny):
    spec = tiny.dense_spec
    assert spec == ConvMapSpec(stride=32, channels=96, rf_px=195, margin_px=128)
    assert spec.seamless and tiny.has_dense and tiny.dense_reason is None
    assert tiny.dense_cell_um(112.0) == pytest.approx(32 * 112 / 160)
    se = stp.models.get_backbone("test_efficientnet", pretrained=False)
    assert not se.has_dense
    assert "squeeze-excitation" in se.dense_reason and "se" in se.dense_reason  # names the layer
    vit = stp.models.get_backbone("test_vit", pretrained=False)
    assert not vit.has_dense and "VisionTransformer is not one of" in vit.dense_reason
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 5, stride=4), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    assert not stp.models.get_backbone(module).has_dense
    with pytest.raises(ValueError, match="no dense feature map: VisionTransformer"):
        vit.dense_cell_um(112.0)


def test_map_equals_windows_for_a_trunk_without_padding(image):
    """Patchify trunk (8 px kernel = stride, no padding): window features ARE the mean of the map's cells.

    At cell-aligned window positions the map's window means equal the window path's features to float
    rounding, whichever tile each cell came from.
    """
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(3, 16, 8, stride=8)
    module = torch.nn.Sequential(conv, torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    bb = stp.models.get_backbone(module)
    bb.patch_px = 64  # windows of 32 µm at 0.5 µm/px: 8 × 8 cells of 4 µm
    spec = ConvMapSpec(stride=8, channels=16, rf_px=8, margin_px=0)
    read_tile = _reader(image)

    def features(rgb):
        with torch.inference_mode():
            return torch.relu(conv(bb.preprocess(rgb, torch.device("cpu"), resize=False))).numpy()

    cmap = conv_cell_map(features, read_tile, np.zeros(2), np.full(2, 400.0), spec=spec, cell_um=4.0, tile_px=128)
    assert cmap.shape == (100, 100)
    rng = np.random.default_rng(2)
    corners = 4.0 * rng.integers(0, 92, (40, 2))  # window corners on the cell grid (tiles of 15 cells)
    centers = corners + 16.0
    want = _windows(bb, read_tile, centers, 32.0)
    got = cmap.window_means(centers, [32.0])[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_tile_seams_do_not_show(tiny, image):
    """The margin covers test_resnet's receptive field: tiled maps equal one tile's, so do windows on seams."""
    read_tile = _reader(image)
    cell = tiny.dense_cell_um(80.0)  # windows of 80 µm: 160 px at 0.5 µm/px, cells of 16 µm
    lo, hi = np.zeros(2), np.full(2, 24 * cell)
    one = tiny.feature_map(read_tile, lo, hi, cell_um=cell, tile_px=4000)  # a single 24-cell tile
    tiled = tiny.feature_map(read_tile, lo, hi, cell_um=cell, tile_px=512)  # 12-cell cores: a seam at 12
    assert one.shape == tiled.shape == (24, 24)
    np.testing.assert_allclose(tiled.means, one.means, rtol=1e-4, atol=1e-4 * np.abs(one.means).max())
    straddling = np.array([[12 * cell, 12 * cell], [12 * cell + 7.3, 10 * cell - 3.1], [14 * cell, 11.5 * cell]])
    np.testing.assert_allclose(
        tiny.map_features(tiled, straddling, 80.0), tiny.map_features(one, straddling, 80.0), rtol=1e-4, atol=1e-5
    )


def test_map_is_close_to_windows_with_padding(tiny, image):
    """With padded convolutions the window path sees zeros past the window's edge, the map real context.

    Stated tolerance (random weights, this image): per-feature correlation across windows median ≥ 0.9 at
    cell-aligned positions, and ≥ 0.85 at arbitrary positions (bilinear between aligned windows).
    """
    read_tile = _reader(image)
    cell = tiny.dense_cell_um(80.0)
    cmap = tiny.feature_map(read_tile, np.zeros(2), np.full(2, 30 * cell), cell_um=cell)
    rng = np.random.default_rng(3)
    aligned = cell * rng.integers(3, 27, (40, 2)).astype(float)  # 5-cell windows: centres at half cells
    aligned += cell / 2
    anywhere = rng.uniform(3 * cell, 27 * cell, (40, 2))
    for centers, floor in ((aligned, 0.9), (anywhere, 0.85)):
        win = _windows(tiny, read_tile, centers, 80.0)
        den = tiny.map_features(cmap, centers, 80.0)
        ok = (win.std(0) > 1e-6) & (den.std(0) > 1e-6)
        r = [np.corrcoef(win[:, j], den[:, j])[0, 1] for j in np.flatnonzero(ok)]
        assert ok.sum() > win.shape[1] // 2
        assert np.median(r) >= floor


def test_map_features_refuse_another_window_size(tiny, image):
    cell = tiny.dense_cell_um(80.0)
    cmap = tiny.feature_map(_reader(image), np.zeros(2), np.full(2, 10 * cell), cell_um=cell)
    with pytest.raises(ValueError, match=r"cell_um=backbone.dense_cell_um\(112\)"):
        tiny.map_features(cmap, np.full((1, 2), 80.0), 112.0)
