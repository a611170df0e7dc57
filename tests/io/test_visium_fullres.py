"""read_visium with a full-resolution TIFF: read in blocks by io/_tiff, and its blank check samples a few windows."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import shared_data

import stpredict as stp
from stpredict._image import image_levels

FULL = 5120  # 5 × 5 blocks of 1024 px: more than the 16 windows of the image check can touch


def _visium_with_fullres(tmp_path, image: np.ndarray):
    """A copy of the Visium format fixture whose full-resolution image is ``image`` (pixel units rescaled)."""
    src = shared_data("visium_format_fixture")
    out = tmp_path / "outs"
    shutil.copytree(src, out)
    sf_path = out / "spatial" / "scalefactors_json.json"
    sf = json.loads(sf_path.read_text())
    k = FULL / 13331.0  # the fixture's full-resolution side
    for key in ("spot_diameter_fullres", "fiducial_diameter_fullres"):
        sf[key] *= k
    for key in ("tissue_hires_scalef", "tissue_lowres_scalef"):
        sf[key] /= k
    sf_path.write_text(json.dumps(sf))
    pos_path = out / "spatial" / "tissue_positions_list.csv"
    pos = pd.read_csv(pos_path, header=None)
    pos[[4, 5]] = np.round(pos[[4, 5]].to_numpy() * k).astype(int)
    pos.to_csv(pos_path, header=False, index=False)
    tifffile.imwrite(out / "full.tif", image, tile=(256, 256), photometric="rgb", compression="zlib")
    return out


def test_fullres_tiff_is_read_in_blocks_and_sampled(tmp_path, block_reads):
    yy, xx = np.mgrid[0:FULL, 0:FULL]
    image = np.stack([(yy // 7) % 256, (xx // 5) % 256, ((yy + xx) // 11) % 256], -1).astype(np.uint8)
    out = _visium_with_fullres(tmp_path, image)
    sdata = stp.io.read_visium(out, dataset_id="fx", fullres_image_file="full.tif")
    assert "fx_full_image" in sdata.images
    n_blocks = (FULL // 1024) ** 2
    assert 0 < len(set(block_reads)) <= 16 < n_blocks  # the blank check sampled level 0, never read it whole
    levels = image_levels(sdata.images["fx_full_image"])
    level0 = levels[0].array
    assert level0.chunksize == (3, 1024, 1024)
    assert any(name.startswith("tiff-") for name in level0.dask.layers)  # not dask-image's one whole-frame task
    assert [lv.shape_yx[0] for lv in levels] == [FULL, FULL // 2, FULL // 4, FULL // 8, FULL // 16]
    block_reads.clear()
    window = np.asarray(level0[:, 2100:2200, 3000:3050])
    np.testing.assert_array_equal(window, image[2100:2200, 3000:3050].transpose(2, 0, 1))
    assert len(block_reads) == 1
    geo = stp.pp.spots(sdata, image_key="fx_full_image")
    assert geo.n_spots == 100 and geo.diameter_um == pytest.approx(55.0)


def test_blank_fullres_is_confirmed_and_dropped(tmp_path, block_reads):
    out = _visium_with_fullres(tmp_path, np.full((FULL, FULL, 3), 255, np.uint8))
    sdata = stp.io.read_visium(out, dataset_id="fx", fullres_image_file="full.tif")
    assert "fx_full_image" not in sdata.images  # the sample was one colour, the coarsest level confirmed it
    assert "fx_full_image" in sdata.tables["table"].uns["stpredict_source"]["dropped_images"]
    assert len(set(block_reads)) == (FULL // 1024) ** 2
