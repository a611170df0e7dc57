"""Writing results back into the zarr store a SpatialData was read from."""

from __future__ import annotations

import json

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
    # nothing of the write is left in the store; its consolidated metadata lists the new elements
    assert sorted(p.name for p in path.iterdir()) == ["images", "shapes", "tables", "zarr.json"]
    consolidated = json.loads((path / "zarr.json").read_text())["consolidated_metadata"]["metadata"]
    assert {"shapes/spots_ps4", "tables/ridge_spots_ps4", "tables/table/layers/predicted"} <= set(consolidated)
    # the object in memory still points at its store, which now holds everything
    assert sdata.path == path
    assert {"shapes/spots_ps4", "tables/ridge_spots_ps4"} <= set(sdata.elements_paths_on_disk())
    # writing again replaces in place (staged, then swapped) and the store still reads back
    assert stp.io.write_back(sdata, "ridge_spots_ps4") == ["ridge_spots_ps4"]
    assert read_zarr(path).tables["ridge_spots_ps4"].n_obs == sdata.tables["ridge_spots_ps4"].n_obs
    assert stp.io.recover(path) == []


def test_write_back_failure_while_staging_or_swapping_changes_nothing(backed, monkeypatch):
    from spatialdata import read_zarr

    from stpredict.io import _txn

    sdata, path = backed
    sdata.tables["table"].layers["predicted"] = np.zeros(sdata.tables["table"].shape, dtype=np.float32)
    sdata.tables["table"].uns["stpredict"] = {"note": "x"}
    sdata.shapes["spots_copy"] = sdata.shapes["spots"].copy()

    def snapshot():
        back = read_zarr(path, selection=("tables", "shapes"))
        return sorted(back.tables), sorted(back.shapes), sorted(back.tables["table"].layers)

    before = snapshot()
    real_write = type(sdata)._write_element
    calls = []

    def failing_write(self, *args, **kwargs):
        calls.append(kwargs["element_name"])
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(type(sdata), "_write_element", failing_write)
    with pytest.raises(OSError, match="disk full") as e:
        stp.io.write_back(sdata)
    assert "nothing in the store changed" in "".join(getattr(e.value, "__notes__", []))
    monkeypatch.undo()
    assert snapshot() == before
    assert not (path / _txn.WORK_DIR).exists()

    # a swap that fails in this process puts back the elements already swapped
    real_put = _txn._put_in_place
    swaps = []

    def failing_put(stage, live, backup):
        swaps.append(live)
        if len(swaps) == 2:
            raise PermissionError("read-only (simulated)")
        real_put(stage, live, backup)

    monkeypatch.setattr(_txn, "_put_in_place", failing_put)
    with pytest.raises(PermissionError, match="simulated"):
        stp.io.write_back(sdata)
    monkeypatch.undo()
    assert snapshot() == before
    assert not (path / _txn.WORK_DIR).exists()
    assert set(stp.io.write_back(sdata)) == {"table", "spots_copy"}
    assert snapshot() != before


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
