"""The verbs' dense path: one map per slide and call, the cheaper path by default, clear refusals."""

from __future__ import annotations

import numpy as np
import pytest

import stpredict as stp
from stpredict.models import HandcraftedBackbone


@pytest.fixture
def count_maps(monkeypatch):
    """Count the passes over the pixels (feature maps computed)."""
    calls = []
    orig = HandcraftedBackbone.feature_map

    def spy(self, *a, **k):
        calls.append(1)
        return orig(self, *a, **k)

    monkeypatch.setattr(HandcraftedBackbone, "feature_map", spy)
    return calls


@pytest.mark.parametrize("grid", [{"grid": "ps4"}, {"bin_size": 16.0}])
def test_superresolve_reads_spots_and_grid_from_one_map(sdata_syn, count_maps, grid):
    stp.tl.superresolve(sdata_syn, "ridge", dense=True, progress=False, **grid)
    assert len(count_maps) == 1
    table = next(t for k, t in sdata_syn.tables.items() if k.startswith("ridge_spots_"))
    rec = table.uns["stpredict"]["superresolve"]
    assert rec["embeddings"]["path"] == "dense map"
    assert set(rec["step_seconds"]) >= {"tissue", "grid", "spot_features", "fit", "grid_features", "predict"}
    assert "X_handcrafted" not in sdata_syn.tables["table"].obsm  # superresolve adds elements, changes none


def test_dense_and_window_predictions_agree(sdata_syn):
    a = stp.tl.superresolve(sdata_syn, "ridge", grid="ps4", dense=True, progress=False, inplace=False)
    b = stp.tl.superresolve(sdata_syn, "ridge", grid="ps4", dense=False, progress=False, inplace=False)
    xa, xb = a.tables["ridge_spots_ps4"].layers["image_only"], b.tables["ridge_spots_ps4"].layers["image_only"]
    r = [np.corrcoef(xa[:, g], xb[:, g])[0, 1] for g in range(xa.shape[1]) if xb[:, g].std() > 1e-6]
    assert np.median(r) > 0.98
    assert (
        b.tables["ridge_spots_ps4"].uns["stpredict"]["superresolve"]["embeddings"]["path"] == "windows at grid points"
    )


def test_default_takes_the_cheaper_path(sdata_syn, count_maps):
    """Visium-like spacing: the map; two windows far apart: the windows."""
    from stpredict.tl._dense import DenseMaps

    emb = stp.tl.embed(sdata_syn, "handcrafted", progress=False, inplace=False)  # 53 packed spots
    assert emb.shape[0] == sdata_syn.tables["table"].n_obs
    assert len(count_maps) == 1
    maps = DenseMaps(HandcraftedBackbone(), 112.0)
    levels: list = []
    read_px = HandcraftedBackbone().input_spec(112.0)[1]
    spread = np.array([[100.0, 100.0], [5000.0, 5000.0]])
    packed = np.stack(np.meshgrid(np.arange(0, 2000, 100.0), np.arange(0, 2000, 100.0)), -1).reshape(-1, 2)
    assert not maps.use(levels, spread, read_px, dense=None)
    assert maps.use(levels, packed, read_px, dense=None)
    assert not maps.use(levels, packed, read_px, dense=False)
    assert maps.use(levels, spread, read_px, dense=True)


def test_dense_true_needs_a_backbone_with_a_map(sdata_syn):
    import torch

    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 5, stride=4), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    bb = stp.models.get_backbone(module, pretrained=False)
    before = set(sdata_syn.tables["table"].obsm)
    with pytest.raises(ValueError, match="has no dense feature map"):
        stp.tl.embed(sdata_syn, bb, dense=True, progress=False)
    assert set(sdata_syn.tables["table"].obsm) == before


@pytest.mark.parametrize("bad", ["yes", 1, 0.5])
def test_dense_option_is_checked_at_the_door(sdata_syn, bad):
    with pytest.raises(ValueError, match="dense must be True, False or None"):
        stp.tl.superresolve(sdata_syn, "ridge", dense=bad)
    assert not any(k.startswith("ridge_") for k in sdata_syn.tables)


@pytest.fixture(scope="module")
def cnn():
    """timm's test_resnet with random weights: a convolutional backbone with a dense map."""
    import torch

    torch.manual_seed(0)
    return stp.models.get_backbone("test_resnet", pretrained=False)


def test_cnn_backbone_accepts_dense_true_and_records_the_path(sdata_syn, cnn):
    from stpredict.models.backbones import TorchBackbone

    calls = []
    orig = TorchBackbone.feature_map

    def spy(self, *a, **k):
        calls.append(k["cell_um"])
        return orig(self, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TorchBackbone, "feature_map", spy)
        out = stp.tl.superresolve(
            sdata_syn, "ridge", backbone=cnn, grid="ps4", dense=True, progress=False, inplace=False
        )
    assert calls == [pytest.approx(32 * 112 / 160)]  # one map, cells of one stride at the windows' µm/px
    rec = out.tables["ridge_spots_ps4"].uns["stpredict"]["superresolve"]["embeddings"]
    assert rec["path"] == "dense map"
    assert (rec["stride_px"], rec["margin_px"], rec["receptive_field_px"]) == (32, 128, 195)
    ref = stp.tl.superresolve(sdata_syn, "ridge", backbone=cnn, grid="ps4", dense=False, progress=False, inplace=False)
    assert ref.tables["ridge_spots_ps4"].uns["stpredict"]["superresolve"]["embeddings"]["path"] == (
        "windows at grid points"
    )


def test_dense_true_names_the_reason_for_a_vit(sdata_syn):
    vit = stp.models.get_backbone("test_vit", pretrained=False)
    with pytest.raises(ValueError, match=r"has no dense feature map \(VisionTransformer is not one of .* ViTs"):
        stp.tl.embed(sdata_syn, vit, dense=True, progress=False)


def test_cnn_map_is_on_request_and_counts_tiles_with_their_margins(cnn, monkeypatch):
    """A CNN's map serves ``dense=True`` only; its cost is its tiles' pixels, margins included."""
    from stpredict.tl._dense import DenseMaps

    maps = DenseMaps(cnn, 112.0)
    assert maps.cell_um == pytest.approx(22.4)
    read_px = cnn.input_spec(112.0)[1]
    grid = np.stack(np.meshgrid(np.arange(0, 2000, 50.0), np.arange(0, 2000, 50.0)), -1).reshape(-1, 2)
    sparse = grid[::16]  # 100 windows over the same 2 mm: fewer pixels than the map's 9 tiles
    lo, hi = maps._bounds(grid)
    assert cnn.map_cost_px(lo, hi, 112.0) > len(sparse) * read_px**2
    assert not maps.use([], grid, read_px, dense=None)  # map features approximate the windows': on request
    assert maps.use([], grid, read_px, dense=True)
    monkeypatch.setattr(type(cnn), "dense_by_default", True)  # a backbone that allows it: the cheaper path
    assert maps.use([], grid, read_px, dense=None)
    assert not maps.use([], sparse, read_px, dense=None)


def test_fit_on_several_slides_holds_one_map_at_a_time(monkeypatch):
    """A cohort fit reads each slide's spots from its map, then drops it: memory follows one slide, not all."""
    from stpredict.tl._dense import DenseMaps

    held = []
    orig = DenseMaps.features

    def spy(self, *a, **k):
        out = orig(self, *a, **k)
        held.append(len(self._maps))
        return out

    monkeypatch.setattr(DenseMaps, "features", spy)
    slides = [stp.datasets.synthetic(image_size=600, n_genes=5, seed=s) for s in range(3)]
    stp.tl.fit(slides, "ridge", dense=True, stain="none", progress=False)
    assert held == [1, 1, 1]  # three maps computed, never two held at once
