"""Cross-fitting: every measured spot is predicted by a model that never saw it, and the gate knows its source."""

from __future__ import annotations

import numpy as np
import pytest

import stpredict as stp
from stpredict.tl._targets import targets


@pytest.fixture(scope="module")
def slide():
    return stp.datasets.synthetic(image_size=512, n_genes=4, seed=1)


def test_each_fold_is_predicted_by_the_other_folds_only(slide):
    stp.tl.predict(slide, "mean", oof_folds=3, progress=False)
    table = slide.tables["table"]
    rec = table.uns["stpredict"]["predicted"]
    assert rec["mode"] == "out-of-fold"
    folds = np.asarray(rec["oof_fold"])
    assert set(np.unique(folds)) == {0, 1, 2}
    geo = stp.pp.spots(slide)
    genes = list(table.var_names)
    y, _, _ = targets(table, geo.rows, genes, None)
    pred = np.asarray(table.layers["predicted"])[geo.rows]
    for f in range(3):
        held = folds == f
        # the mean baseline fitted on the other folds: its prediction is their mean, not the slide's
        np.testing.assert_allclose(pred[held], np.broadcast_to(y[~held].mean(0), pred[held].shape), rtol=1e-5)
        assert not np.allclose(pred[held][0], y.mean(0), rtol=1e-6)


def test_superresolve_gate_uses_stored_out_of_fold_predictions(slide):
    stp.tl.superresolve(slide, "ridge", grid="ps4", key_added="in_sample", progress=False)
    rec = slide.tables["in_sample"].uns["stpredict"]["superresolve"]["condition"]
    assert rec["gate_from"] == "grid pooled over the spots"
    stp.tl.predict(slide, "ridge", oof_folds=3, progress=False)
    stp.tl.superresolve(slide, "ridge", grid="ps4", key_added="oof", progress=False)
    rec_oof = slide.tables["oof"].uns["stpredict"]["superresolve"]["condition"]
    assert rec_oof["gate_from"].startswith("out-of-fold")
    assert rec_oof["max_rel_error"] <= 1e-4  # the gate changes the pattern, never the agreement
    # an out-of-fold prediction of another model is not used for this one
    stp.tl.superresolve(slide, "mean", grid="ps4", key_added="other", progress=False)
    assert slide.tables["other"].uns["stpredict"]["superresolve"]["condition"]["gate_from"] == (
        "grid pooled over the spots"
    )
