"""Writing results back into the zarr store a SpatialData was read from."""

from __future__ import annotations

import numpy as np
import pytest

import stpredict as stp


@pytest.fixture
def backed(tmp_path):
    from spatialdata import read_zarr

    path = tmp_path / "s.zarr"
    stp.datasets.synthetic(image_size=512, n_genes=5, seed=0).write(path)
    return read_zarr(path), path


def test_write_back_new_and_updated_elements(backed):
    from spatialdata import read_zarr

    sdata, path = backed
    stp.tl.predict(sdata, "ridge", progress=False)
    stp.tl.superresolve(sdata, "ridge", grid="ps4", progress=False)
    written = stp.io.write_back(sdata)
    # the updated spots table (already on disk) and the new shapes + table; nothing else
    assert set(written) == {"table", "spots_ps4", "ridge_spots_ps4"}
    back = read_zarr(path)
    assert set(back.shapes) == {"spots", "spots_ps4"}
    assert set(back.tables) == {"table", "ridge_spots_ps4"}
    np.testing.assert_array_equal(back.tables["table"].layers["predicted"], sdata.tables["table"].layers["predicted"])
    np.testing.assert_array_equal(back.tables["ridge_spots_ps4"].X, sdata.tables["ridge_spots_ps4"].X)
    assert back.tables["table"].uns["stpredict"]["predicted"]["model"] == "ridge"
    # the image read lazily from the store is untouched and still reads
    np.testing.assert_array_equal(
        np.asarray(back.images["he"]["scale0"].image[:, :8, :8]),
        np.asarray(sdata.images["he"]["scale0"].image[:, :8, :8]),
    )
    # writing again replaces in place (delete-then-write) and the store still reads back
    assert stp.io.write_back(sdata, "ridge_spots_ps4") == ["ridge_spots_ps4"]
    assert read_zarr(path).tables["ridge_spots_ps4"].n_obs == sdata.tables["ridge_spots_ps4"].n_obs


def test_write_back_refuses_before_writing(backed, tmp_path):
    from spatialdata import read_zarr

    sdata, path = backed
    with pytest.raises(ValueError, match="read lazily"):
        stp.io.write_back(sdata, ["table", "he"])
    with pytest.raises(KeyError, match="nope"):
        stp.io.write_back(sdata, "nope")
    assert set(read_zarr(path).tables) == {"table"}
    with pytest.raises(ValueError, match="not backed"):
        stp.io.write_back(stp.datasets.synthetic(image_size=256, n_genes=2, seed=0))
