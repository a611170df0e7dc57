"""superresolve reuses an identical earlier fit of a model given by name, and only an identical one."""

from __future__ import annotations

import numpy as np
import pytest

import stpredict as stp
from stpredict.models.ridge import RidgePredictor as Ridge


@pytest.fixture
def fits(monkeypatch):
    """Counts the fits made (Ridge.fit calls)."""
    calls = []
    fit = Ridge.fit

    def counting(self, *a, **k):
        calls.append(1)
        return fit(self, *a, **k)

    monkeypatch.setattr(Ridge, "fit", counting)
    return calls


def _sr(sdata, **kw):
    return stp.tl.superresolve(sdata, "ridge", progress=False, condition="none", **kw)


def test_second_grid_reuses_the_fit(sdata_syn, fits, monkeypatch):
    _sr(sdata_syn, grid="ps4")
    _sr(sdata_syn, bin_size=20)
    assert len(fits) == 1
    first = sdata_syn.tables["ridge_spots_ps4"].uns["stpredict"]["superresolve"]
    second = sdata_syn.tables["ridge_spots_bin20um"].uns["stpredict"]["superresolve"]
    assert first["mode"] == "fitted here on all measured spots" and "reused_fit" not in first
    assert second["mode"] == "reused an identical earlier fit" and len(second["reused_fit"]) == 20
    # the reused fit predicts what a fresh one does
    monkeypatch.setattr(stp.settings, "model_cache", 0)
    _sr(sdata_syn, bin_size=20, key_added="again")
    assert len(fits) == 2
    np.testing.assert_allclose(sdata_syn.tables["again"].X, sdata_syn.tables["ridge_spots_bin20um"].X, rtol=1e-5)


def test_anything_different_fits_again(sdata_syn, fits, monkeypatch):
    def fitted_anew(key, **kw):
        n = len(fits)
        _sr(sdata_syn, bin_size=40, key_added=key, **kw)
        return len(fits) == n + 1 and "reused_fit" not in sdata_syn.tables[key].uns["stpredict"]["superresolve"]

    assert fitted_anew("base")
    assert fitted_anew("seed", seed=1)
    assert fitted_anew("panel", n_genes=5)
    assert fitted_anew("config", clip=False)
    mine = stp.models.create_predictor("ridge")  # a predictor object is fitted itself, never swapped
    stp.tl.superresolve(sdata_syn, mine, bin_size=40, progress=False, condition="none", key_added="mine")
    assert mine.is_fitted and len(fits) == 5
    t = sdata_syn.tables["table"]  # the same spots with other counts
    t.X = t.X.toarray() * 2 if hasattr(t.X, "toarray") else t.X * 2
    assert fitted_anew("counts")
    monkeypatch.setattr(stp.settings, "model_cache", 0)
    assert fitted_anew("off")
    with pytest.raises(ValueError, match="model_cache"):
        stp.settings.model_cache = -1
