"""The one lazy TIFF reader (io/_tiff.py) behind read_hest, read_xenium's H&E and load_image."""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import sys
import warnings
from pathlib import Path

import dask
import numpy as np
import pytest
import tifffile

from stpredict.io._build import load_image
from stpredict.io._tiff import tiff_cyx, tiff_level, tiff_levels_meta


def _pyramid(path: Path, *, ome: bool = False) -> list[np.ndarray]:
    """A tiled 3-level RGB pyramid (SubIFDs), sizes not multiples of the tile; returns the levels as written."""
    rng = np.random.default_rng(0)
    level0 = rng.integers(0, 256, (300, 410, 3), dtype=np.uint8)
    levels = [level0, level0[::2, ::2].copy(), level0[::4, ::4].copy()]
    opts = {"tile": (64, 64), "photometric": "rgb", "compression": "zlib"}
    with tifffile.TiffWriter(path, ome=ome) as tw:
        tw.write(levels[0], subifds=len(levels) - 1, **opts)
        for lv in levels[1:]:
            tw.write(lv, subfiletype=1, **opts)
    return levels


def _open_fds(path: Path) -> int:
    """Descriptors of this process open on ``path`` (Linux; 0 elsewhere)."""
    fd_dir = Path("/proc/self/fd")
    target = path.resolve()
    n = 0
    for fd in fd_dir.iterdir() if fd_dir.is_dir() else []:
        with contextlib.suppress(OSError):  # a descriptor closed while listing
            n += fd.readlink() == target
    return n


@pytest.mark.parametrize("ome", [False, True])
def test_levels_equal_tifffile_and_chunks_as_asked(tmp_path, ome):
    path = tmp_path / ("he.ome.tif" if ome else "he.tif")
    written = _pyramid(path, ome=ome)
    assert len(tiff_levels_meta(path)) == 3
    for i, ref in enumerate(written):
        arr = tiff_level(path, i, chunks=100)
        assert arr.shape == ref.shape
        assert arr.chunks[0][0] == min(100, ref.shape[0]) and arr.chunks[2] == (3,)  # whole along samples
        np.testing.assert_array_equal(arr.compute(), tifffile.imread(path, level=i))
        np.testing.assert_array_equal(tiff_cyx(path, i, chunks=100).compute(), ref.transpose(2, 0, 1))
    # a window inside one block, and one across four
    cyx = load_image(path, chunks=128)
    assert cyx.chunks[1] == (128, 128, 44)
    np.testing.assert_array_equal(cyx[:, 10:20, 30:40].compute(), written[0][10:20, 30:40].transpose(2, 0, 1))
    np.testing.assert_array_equal(cyx[:, 120:140, 120:140].compute(), written[0][120:140, 120:140].transpose(2, 0, 1))
    with pytest.raises(IndexError, match="3 pyramid level"):
        tiff_level(path, 3)


def test_channels_by_axis_letters_not_sizes(tmp_path):
    """A 5-channel ``CYX`` TIFF: its channels are the first axis (guessing from sizes would take the last)."""
    planes = np.arange(5 * 6 * 7, dtype=np.uint16).reshape(5, 6, 7)
    path = tmp_path / "cyx.ome.tif"
    tifffile.imwrite(path, planes, photometric="minisblack", metadata={"axes": "CYX"})
    np.testing.assert_array_equal(load_image(path).compute(), planes)
    grey = tmp_path / "grey.tif"
    tifffile.imwrite(grey, planes[0])
    assert load_image(grey).shape == (1, 6, 7)
    stack = tmp_path / "tczyx.ome.tif"
    tifffile.imwrite(stack, np.zeros((2, 1, 3, 6, 7), np.uint8), metadata={"axes": "TCZYX"})
    with pytest.raises(ValueError, match="expected a 2-D"):
        tiff_cyx(stack)


def test_no_handle_lives_with_the_array(tmp_path):
    """Reading then dropping the array opens and closes the file per block: nothing left open, no ResourceWarning."""
    path = tmp_path / "he.tif"
    ref = _pyramid(path)[1]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        arr = tiff_level(path, 1, chunks=64)
        np.testing.assert_array_equal(arr.compute(), ref)
        assert _open_fds(path) == 0  # not even while the array lives
        del arr
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert _open_fds(path) == 0


_INHERITED = None


def _read_inherited(window: tuple[slice, ...]) -> np.ndarray:
    with dask.config.set(scheduler="synchronous"):
        return np.asarray(_INHERITED[window])


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_block_read_in_a_forked_worker(tmp_path):
    """A forked worker (as a DataLoader's) reads blocks of an array created, and read from, in its parent."""
    global _INHERITED
    path = tmp_path / "he.tif"
    ref = _pyramid(path)[0].transpose(2, 0, 1)
    _INHERITED = load_image(path, chunks=64)
    np.testing.assert_array_equal(_INHERITED[:, :8, :8].compute(), ref[:, :8, :8])  # the parent reads first
    windows = [(slice(None), slice(0, 64), slice(0, 64)), (slice(None), slice(200, 300), slice(50, 410))]
    try:
        with multiprocessing.get_context("fork").Pool(2) as pool:
            out = pool.map(_read_inherited, windows)
    finally:
        _INHERITED = None
    for window, got in zip(windows, out, strict=True):
        np.testing.assert_array_equal(got, ref[window])
