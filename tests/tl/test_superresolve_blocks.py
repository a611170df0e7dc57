"""superresolve predicts and conditions large grids block by block: the same tables as in one piece."""

from __future__ import annotations

import numpy as np
import pytest

import stpredict as stp
import stpredict.pp._condition_plan as plan_module
import stpredict.tl._rowwise as rowwise


@pytest.fixture(scope="module")
def slide():
    return stp.datasets.synthetic(image_size=768, n_genes=5, seed=0)


@pytest.mark.parametrize(("grid", "condition"), [("bin8um", "measured"), ("ps4", "denoised")])
def test_blocks_give_the_one_piece_tables(monkeypatch, slide, grid, condition):
    kw = {"grid": grid, "condition": condition, "progress": False}
    stp.tl.superresolve(slide, "ridge", key_added="whole", **kw)
    monkeypatch.setattr(plan_module, "CHUNK_ELEMENTS", 50)  # blocks of 10 regions
    monkeypatch.setattr(rowwise, "PREDICT_ELEMENTS", 1)  # blocks of 1,024 regions
    stp.tl.superresolve(slide, "ridge", key_added="blocks", **kw)
    whole, blocks = slide.tables["whole"], slide.tables["blocks"]
    if grid == "bin8um":
        assert whole.n_obs > 2 * 1024
    for layer in (None, "predicted_std", "image_only"):
        a = whole.X if layer is None else whole.layers[layer]
        b = blocks.X if layer is None else blocks.layers[layer]
        assert a.dtype == b.dtype == np.float32
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)
    rec = blocks.uns["stpredict"]["superresolve"]["condition"]
    assert rec["max_rel_error"] <= 1e-4
    assert rec["weights"] == pytest.approx(whole.uns["stpredict"]["superresolve"]["condition"]["weights"])


def test_only_rowwise_predictors_are_split():
    assert {"ridge", "ridge_neighbors"} == set(rowwise.ROWWISE)
    assert "pixnet" not in rowwise.ROWWISE and "diffusion" not in rowwise.ROWWISE
