"""The one input pipeline: options checked at the door, the read side in stp.get, embeddings written only on success."""

from __future__ import annotations

import numpy as np
import pytest

import stpredict as stp
from stpredict.models import Predictor


@pytest.fixture
def sdata():
    return stp.datasets.synthetic(image_size=512, n_genes=5, seed=0)


class _FailingFit(Predictor):
    """Consumes embeddings, then fails: the verb must leave the tables as they were."""

    def fit(self, slides, *, genes, max_epochs=None, seed=None):
        assert slides[0].embeddings is not None
        raise RuntimeError("fit failed on purpose")

    def predict(self, slide, regions):
        raise AssertionError("not reached")


@pytest.mark.parametrize(
    ("option", "value", "fragment"),
    [
        ("batch_size", -1, "batch_size must be a positive integer"),
        ("batch_size", 0, "batch_size must be a positive integer"),
        ("batch_size", 2.5, "batch_size must be a positive integer"),
        ("num_workers", -1, "num_workers must be an integer from 0"),
        ("num_workers", 10**9, "num_workers must be an integer from 0"),
    ],
)
@pytest.mark.parametrize("verb", ["embed", "predict", "superresolve"])
def test_compute_options_are_checked_before_any_work(sdata, verb, option, value, fragment):
    before = set(sdata.tables["table"].obsm)
    call = {
        "embed": lambda **kw: stp.tl.embed(sdata, "handcrafted", **kw),
        "predict": lambda **kw: stp.tl.predict(sdata, "ridge", **kw),
        "superresolve": lambda **kw: stp.tl.superresolve(sdata, "ridge", **kw),
    }[verb]
    with pytest.raises(ValueError, match=fragment):
        call(progress=False, **{option: value})
    assert set(sdata.tables["table"].obsm) == before
    assert "stpredict" not in sdata.tables["table"].uns


@pytest.mark.parametrize("verb", ["fit", "predict"])
def test_failed_fit_writes_no_embeddings(sdata, verb):
    with pytest.raises(RuntimeError, match="on purpose"):
        getattr(stp.tl, verb)(sdata, _FailingFit(), progress=False)
    assert "X_handcrafted" not in sdata.tables["table"].obsm
    assert "stpredict" not in sdata.tables["table"].uns


@pytest.mark.parametrize("verb", ["fit", "predict"])
def test_users_own_obsm_entry_is_never_overwritten_by_the_cache(sdata, verb, caplog):
    """``obsm["X_handcrafted"]`` without stpredict's record is the user's: the verb works, the array stays."""
    table = sdata.tables["table"]
    mine = np.arange(table.n_obs * 3, dtype=np.float64).reshape(-1, 3)
    table.obsm["X_handcrafted"] = mine.copy()
    getattr(stp.tl, verb)(sdata, "ridge", progress=False)
    np.testing.assert_array_equal(table.obsm["X_handcrafted"], mine)
    assert "X_handcrafted" not in table.uns.get("stpredict", {}).get("embeddings", {})
    assert "stpredict did not record as embeddings" in caplog.text


def test_slide_data_is_what_fit_sees(sdata):
    table = sdata.tables["table"]
    slide = stp.get.slide_data(sdata, "ridge", progress=False)
    assert slide.genes == list(table.var_names)  # every detected gene of a 5-gene table
    assert slide.y.shape == (slide.n, 5)
    np.testing.assert_allclose(np.expm1(slide.y), slide.y_linear, rtol=1e-5, atol=1e-5)
    assert slide.embeddings.shape == (slide.n, 54)
    assert slide.meta["backbone"]["backbone"] == "handcrafted"
    assert slide.meta["preprocessing"]["log1p"] is True
    assert "X_handcrafted" not in table.obsm  # read side: nothing written
    bare = stp.get.slide_data(sdata, genes=["gene_0"])
    assert bare.embeddings is None
    assert bare.genes == ["gene_0"]
    fitted = stp.tl.fit(sdata, "ridge", genes=["gene_1", "gene_2"], progress=False, cache_embeddings=False)
    seen = stp.get.slide_data(sdata, fitted, progress=False)
    assert seen.genes == ["gene_1", "gene_2"]
    np.testing.assert_allclose(seen.embeddings, slide.embeddings, rtol=1e-5)


def test_record_reads_what_the_verbs_wrote(sdata):
    table = sdata.tables["table"]
    with pytest.raises(KeyError, match=r"no stpredict record 'predicted'.*stp\.tl\.predict"):
        stp.get.record(table)
    stp.tl.predict(sdata, "mean", progress=False)
    rec = stp.get.record(table)
    assert rec["model"] == "mean"
    assert rec["mode"] == "out-of-fold"
    with pytest.raises(KeyError, match=r"stp\.tl\.superresolve"):
        stp.get.record(table, "superresolve")


def test_a_checkpoint_saved_without_suffix_is_found_by_the_verbs(sdata, tmp_path):
    pred = stp.tl.fit(sdata, "mean", progress=False)
    pred.save(tmp_path / "m")
    stp.tl.predict(sdata, str(tmp_path / "m"), progress=False)
    assert stp.get.record(sdata.tables["table"])["mode"] == "fitted model"
