"""read_visium_hd without fullres_image_file: the H&E found in the folder is read in blocks, as a given one is."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from _hd_fixture import write_visium_hd

import stpredict as stp
from stpredict._image import image_levels

SIDE = 1152  # 2 × 2 blocks of 1024 px


@pytest.fixture(scope="module")
def hd(tmp_path_factory):
    """A Space Ranger HD folder (16 µm bins) whose H&E is also in ``outs/microscope_image/``."""
    root = tmp_path_factory.mktemp("hd") / "slide"
    return write_visium_hd(root, bin_sizes=(16,), image_size=(SIDE, SIDE), microscope_image=True, seed=0)


def test_discovered_tiff_is_read_in_blocks(hd, block_reads):
    sdata = stp.io.read_visium_hd(hd.outs, bin_size=16, dataset_id="fx")
    assert block_reads == []  # reading the folder decodes no pixel
    assert "fx_full_image" in sdata.images
    src = sdata.tables["square_016um"].uns["stpredict_source"]
    assert src["finest_image"] == "fullres" and src["fullres_image_file"] == str(hd.fullres)
    level0 = image_levels(sdata.images["fx_full_image"])[0].array
    assert level0.chunksize == (3, 1024, 1024) and level0.numblocks == (1, 2, 2)
    assert any(name.startswith("tiff-") for name in level0.dask.layers)  # not dask-image's one whole-frame task
    # a window inside one block decodes that block only, with the H&E's pixels
    window = np.asarray(level0[:, 1030:1100, 40:90])
    np.testing.assert_array_equal(window, hd.image[1030:1100, 40:90].transpose(2, 0, 1))
    assert block_reads == [(0, ((1024, SIDE), (0, 1024), (0, 3)))]  # the file's (y, x, s) order
    geo = stp.pp.spots(sdata)
    assert geo.image_key == "fx_full_image" and geo.microns_per_pixel_xy == pytest.approx((0.5, 0.5))


def test_discovery_follows_spatialdata_io_and_refuses_several(hd, tmp_path):
    outs = tmp_path / "outs"
    shutil.copytree(hd.outs, outs)
    # the name of 10x's archives beside the outs files, when there is no microscope_image/
    shutil.move(outs / "microscope_image" / "tissue_image.tif", outs / "tissue_image.tif")
    (outs / "microscope_image").rmdir()
    sdata = stp.io.read_visium_hd(outs, bin_size=16, dataset_id="fx")
    level0 = image_levels(sdata.images["fx_full_image"])[0].array
    assert any(name.startswith("tiff-") for name in level0.dask.layers)
    # an explicit file wins over the one found
    given = stp.io.read_visium_hd(
        outs, bin_size=16, dataset_id="fx", fullres_image_file=hd.outs.parent / "tissue_fullres.tif"
    )
    assert given.tables["square_016um"].uns["stpredict_source"]["fullres_image_file"].endswith("tissue_fullres.tif")
    # two candidates: no guess (spatialdata-io would take the first the file system lists)
    (outs / "microscope_image").mkdir()
    shutil.copy(outs / "tissue_image.tif", outs / "microscope_image" / "a.tif")
    shutil.copy(outs / "tissue_image.tif", outs / "microscope_image" / "b.tif")
    with pytest.raises(ValueError, match=r"Several candidate.*a\.tif.*b\.tif.*fullres_image_file="):
        stp.io.read_visium_hd(outs, bin_size=16)
    # hidden files (a macOS ._ copy) are not candidates
    (outs / "microscope_image" / "b.tif").rename(outs / "microscope_image" / "._a.tif")
    sdata = stp.io.read_visium_hd(outs, bin_size=16, dataset_id="fx")
    assert sdata.tables["square_016um"].uns["stpredict_source"]["fullres_image_file"].endswith("a.tif")
