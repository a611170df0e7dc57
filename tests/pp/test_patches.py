from __future__ import annotations

import numpy as np
import pytest

import stpredict as stp
from stpredict._image import image_levels
from stpredict.pp import PatchExtractor, choose_level


def test_choose_level_rule():
    levels = [(0.25, 0.25), (0.5, 0.5), (1.0, 1.0), (2.0, 2.0)]
    assert choose_level(levels, 0.5) == 1
    assert choose_level(levels, 0.52) == 1  # 0.5 <= 1.05 * 0.52, 1.0 is not
    assert choose_level(levels, 0.98) == 2  # 1.0 <= 1.05 * 0.98
    assert choose_level(levels, 0.1) == 0  # coarser than every level: native level 0, resampled
    assert choose_level([(0.5, 0.55)], 0.5) == 0


def test_patch_centred_on_spot_shows_that_spot():
    # a white image with one dark disc per spot, each spot a different grey level
    h = w = 400
    img = np.full((h, w, 3), 255, np.uint8)
    coords = np.array([[100.0, 100.0], [300.0, 120.0], [200.0, 300.0]])
    yy, xx = np.mgrid[:h, :w]
    for i, (x, y) in enumerate(coords):
        img[(xx - x) ** 2 + (yy - y) ** 2 <= 20**2] = 40 * (i + 1)
    sdata = stp.io.from_arrays(img, coords, np.ones((3, 1), int), 0.5, 20.0)
    ds = stp.pp.patches(sdata, size_um=20, patch_px=40)
    for i in range(3):
        p = ds[i]
        assert p.shape == (3, 40, 40)
        centre = p[:, 15:25, 15:25]
        assert np.all(np.abs(centre.astype(int) - 40 * (i + 1)) <= 1)


def test_level_choice_and_resampling_give_requested_mpp(sdata_syn):
    geo = stp.pp.spots(sdata_syn)
    levels = image_levels(sdata_syn.images["he"])  # 1, 2, 4 µm/px
    ext = PatchExtractor(levels, geo.centers, geo.microns_per_pixel_xy, size_um=112, patch_px=56)
    assert ext.level == 1 and ext.read_mpp == (2.0, 2.0) and not ext.plan.resampled
    i = int(np.argmin(ext.padded_fraction))
    assert ext.padded_fraction[i] == 0
    out = ext.read([i, 1])
    assert out.shape == (2, 3, 56, 56)
    # equals a direct crop of level 1
    lvl = np.asarray(levels[1].array)
    cx, cy = geo.centers[i] / 2
    x0, y0 = int(np.floor(cx - 28 + 0.5)), int(np.floor(cy - 28 + 0.5))
    np.testing.assert_array_equal(out[0], lvl[:, y0 : y0 + 56, x0 : x0 + 56])
    # target between levels: read the finer one and resample
    ext2 = PatchExtractor(levels, geo.centers, geo.microns_per_pixel_xy, size_um=112, patch_px=80)
    assert ext2.level == 0 and ext2.plan.win_x == 112 and ext2.plan.resampled
    assert ext2.read([0]).shape == (1, 3, 80, 80)
    # the same tissue read at 1 µm/px and box-averaged equals the 2 µm/px level (built by 2x2 rendering)
    ext3 = PatchExtractor(levels, geo.centers, geo.microns_per_pixel_xy, size_um=112, patch_px=112)
    fine = ext3.read([i]).astype(float)[0]
    coarse = fine.reshape(3, 56, 2, 56, 2).mean(axis=(2, 4))
    assert np.abs(coarse - out[0].astype(float)).mean() < 12


def test_padding_at_borders():
    img = np.full((100, 100, 3), 10, np.uint8)
    img[90:, 90:] = 200  # not blank
    sdata = stp.io.from_arrays(img, np.array([[2.0, 50.0], [50.0, 50.0]]), np.ones((2, 1), int), 1.0, 5.0)
    ds = stp.pp.patches(sdata, size_um=20, patch_px=20)
    p = ds[0]
    assert (p[:, :, :8] == 255).all() and (p[:, :, 8:] == 10).all()
    np.testing.assert_allclose(ds.extractor.padded_fraction, [0.4, 0.0])


def test_batched_dataset_and_dataloader(sdata_syn):
    import torch

    ds = stp.pp.patches(sdata_syn, size_um=56, patch_px=28, batch_size=16)
    seen = []
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    single = stp.pp.patches(sdata_syn, size_um=56, patch_px=28)
    for idx, batch in loader:
        assert batch.shape[1:] == (3, 28, 28)
        np.testing.assert_array_equal(batch[0].numpy(), single[int(idx[0])])
        seen.extend(idx.tolist())
    assert sorted(seen) == list(range(len(single)))


def test_never_reads_the_whole_slide():
    """A patch read touches only the chunks under the window."""
    import dask.array as da

    calls = []

    def block(block_info=None):
        calls.append(block_info[None]["chunk-location"])
        return np.full((3, 256, 256), 128, np.uint8)

    big = da.map_blocks(block, dtype=np.uint8, chunks=((3,), (256,) * 40, (256,) * 40))
    from stpredict._image import ImageLevel

    ext = PatchExtractor(
        [ImageLevel(big, 1.0, 1.0, "scale0")], np.array([[5000.0, 5000.0]]), (0.5, 0.5), size_um=50, patch_px=100
    )
    ext.read([0])
    assert len(calls) <= 4


@pytest.mark.parametrize("size_um", [0, -1])
def test_bad_sizes(size_um, sdata_syn):
    with pytest.raises(ValueError, match="positive"):
        stp.pp.patches(sdata_syn, size_um=size_um)


def test_tiles_share_one_chunk_cache():
    """A dense map's tiles overlap in their context margins: each image chunk is decoded once per pass."""
    import dask.array as da

    from stpredict._image import ImageLevel
    from stpredict.pp._tiles import tile_reader

    calls = []
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (3, 1024, 1024), dtype=np.uint8)

    def block(block_info=None):
        calls.append(tuple(block_info[None]["chunk-location"]))
        (_, y0_y1, x0_x1) = block_info[None]["array-location"]
        return pixels[:, slice(*y0_y1), slice(*x0_x1)]

    img = da.map_blocks(block, dtype=np.uint8, chunks=((3,), (256,) * 4, (256,) * 4))
    levels = [ImageLevel(img, 1.0, 1.0, "scale0")]
    read_tile = tile_reader(levels, (0.5, 0.5))
    centres = [(x, y) for y in (64.0, 128.0, 192.0, 256.0) for x in (64.0, 128.0, 192.0, 256.0)]
    tiles = [read_tile(np.array(c), 96.0, 192) for c in centres]
    assert len(calls) == len(set(calls)) == 9  # the 3 × 3 chunks under the tiles, each once: 16 tiles overlap
    base = PatchExtractor(levels, np.array(centres[:1]) / 0.5, (0.5, 0.5), size_um=96.0, patch_px=192)
    a, b = base.with_centers(np.array(centres[1:2]) / 0.5), base.with_centers(np.array(centres[2:3]) / 0.5)
    assert a._cache is b._cache is base._cache and a._dsk is b._dsk is base._dsk  # one cache, one task graph
    for c, tile in zip(centres, tiles, strict=True):  # the same pixels as a reader made for that tile alone
        alone = PatchExtractor(levels, np.array([c]) / 0.5, (0.5, 0.5), size_um=96.0, patch_px=192).read([0])
        np.testing.assert_array_equal(tile, alone)


def test_subpixel_reads_share_the_output_lattice():
    """Resampled ``subpixel`` windows lie on one slide-wide lattice: a window equals the same pixels of a tile."""
    sdata = stp.datasets.synthetic(image_size=400, n_genes=2, seed=1, microns_per_pixel=0.7)
    levels = image_levels(sdata.images["he"])
    mpp = (0.7, 0.7)

    def read(center_um, size_um, subpixel=True):
        ext = PatchExtractor(
            levels, np.array([center_um]) / 0.7, mpp, size_um=size_um, patch_px=round(size_um), subpixel=subpixel
        )
        assert ext.plan.resampled
        return ext.read([0])[0].astype(int)

    tile = read([140.0, 140.0], 200.0)  # origin (40, 40) µm
    for c in ([120.3, 131.8], [101.5, 160.49], [150.0, 149.7]):
        win = read(c, 50.0)
        ox, oy = (np.round(np.asarray(c) - 25.0) - 40).astype(int)  # the window's origin on the 1 µm lattice
        diff = np.abs(win - tile[:, oy : oy + 50, ox : ox + 50])
        assert diff.max() <= 2 and diff.mean() < 0.05  # PIL's fixed-point weights round a few pixels apart
    # snapped to the 0.7 µm pixels instead, a window is off the lattice and stretched (50 µm → 71 px → 49.7 µm)
    win = read([120.3, 131.8], 50.0, subpixel=False)
    assert np.abs(win - tile[:, 92 - 40 : 92 - 40 + 50, 80 - 40 : 80 - 40 + 50]).mean() > 2
