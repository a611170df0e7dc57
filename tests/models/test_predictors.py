"""Every registered predictor, through fit → predict → save → load → the same predictions.

A new predictor is tested by registering it: this module parametrises over ``list_predictors()``.
"""

from __future__ import annotations

import numpy as np
import pytest
from smoke import smoke_config

import stpredict as stp
from stpredict.models import Predictor, Regions, list_predictors, register_predictor

#: tiny budgets so that every predictor runs in seconds here
TINY = {"max_epochs": 2}


@register_predictor("_contract_plugin")
class _NearestCentroid(Predictor):
    """A predictor written the way docs/contributing.md says, here and nowhere else: one class, one decorator.

    Registering it is all it takes for the parametrised tests below to run it through fit, predict, the
    checkpoint and superresolve (each region gets the mean targets of the training spots nearest in feature space).
    """

    consumes = "embeddings"
    default_backbone = "handcrafted"

    def __init__(self, k: int = 3) -> None:
        super().__init__(k=k)

    def fit(self, slides, *, genes, max_epochs=None, seed=None):
        self.X_ = np.concatenate([np.asarray(s.embeddings, np.float64) for s in slides])
        self.Y_ = np.concatenate([np.asarray(s.y, np.float64) for s in slides])
        self.training = {"n_spots": len(self.X_)}
        return self

    def predict(self, slide, regions):
        d = ((np.asarray(regions.embeddings, np.float64)[:, None] - self.X_[None]) ** 2).sum(-1)
        near = np.argsort(d, axis=1)[:, : self.config["k"]]
        return self.Y_[near].mean(1).astype(np.float32), None

    def get_state(self):
        return {"X": self.X_, "Y": self.Y_}

    def set_state(self, state):
        self.X_, self.Y_ = np.asarray(state["X"]), np.asarray(state["Y"])


def test_a_predictor_registered_here_is_in_the_contract_tests():
    assert "_contract_plugin" in list_predictors()


@pytest.fixture(scope="module")
def prepared():
    return stp.datasets.synthetic(image_size=768, n_genes=6, seed=3)


@pytest.mark.parametrize("name", list_predictors())
def test_predictor_contract(name, prepared, tmp_path):
    sdata = prepared
    smoke = smoke_config(name)
    pred = stp.models.create_predictor(name, **smoke)
    slide = stp.get.slide_data(sdata, pred, device="cpu", batch_size=16, num_workers=0, progress=False)
    train = np.arange(slide.n) % 3 != 0
    ctx, held = slide.subset(np.flatnonzero(train)), slide.subset(np.flatnonzero(~train))
    pred.train(
        [ctx], genes=slide.genes, preprocessing=slide.meta["preprocessing"], backbone=slide.meta["backbone"],
        seed=0, device="cpu", **TINY,
    )  # fmt: skip
    assert pred.is_fitted
    regions = Regions(held.centers_px, "circle", slide.spot_diameter_um, "spots", held.embeddings)
    mean, std = pred.predict(ctx, regions)
    assert mean.shape == (held.n, len(slide.genes))
    assert np.isfinite(mean).all()
    if pred.provides_std:
        assert std is not None
        assert std.shape == mean.shape
        assert (std >= 0).all()
    path = pred.save(tmp_path / name)
    assert path.suffix == ".safetensors"
    back = stp.models.load(path)
    assert type(back) is type(pred)
    assert back.genes == pred.genes
    assert back.preprocessing == pred.preprocessing
    assert back.backbone == pred.backbone
    back.device = "cpu"
    mean2, std2 = back.predict(ctx, regions)
    np.testing.assert_allclose(mean2, mean, rtol=1e-5, atol=1e-5)
    # same seed, same predictions
    again = stp.models.create_predictor(name, **smoke)
    again.device = "cpu"
    again.fit([ctx], genes=slide.genes, seed=0, **TINY)
    np.testing.assert_allclose(again.predict(ctx, regions)[0], mean, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", list_predictors())
def test_fitted_predictor_through_the_verbs(name, tmp_path):
    """A fitted model (object or checkpoint path) predicts spots and a pseudo-spot grid through stp.tl."""
    sdata = stp.datasets.synthetic(image_size=512, n_genes=4, seed=3)
    smoke = smoke_config(name)
    pred = stp.tl.fit(sdata, name, max_epochs=2, seed=0, progress=False, **smoke)
    stp.tl.predict(sdata, pred, progress=False)
    table = sdata.tables["table"]
    panel = table.var["predicted"].to_numpy()
    assert panel.sum() == len(pred.genes)
    assert np.isfinite(table.layers["predicted"][:, panel]).all()
    assert table.uns["stpredict"]["predicted"]["in_sample"] is True
    path = pred.save(tmp_path / name)
    stp.tl.superresolve(sdata, str(path), grid="ps4", seed=0, progress=False)
    grid = sdata.tables[f"{name}_spots_ps4"]
    assert grid.n_obs > table.n_obs
    assert np.isfinite(np.asarray(grid.X)).all()


def test_checkpoint_is_not_pickle(prepared, tmp_path):
    sdata = prepared
    pred = stp.tl.fit(sdata, "ridge", progress=False)
    path = pred.save(tmp_path / "r.safetensors")
    head = path.read_bytes()[:8]
    assert head[:2] != b"\x80\x04"  # not a pickle
    header = stp.models.read_header(path)
    assert header["predictor"] == "ridge"
    assert header["preprocessing"]["log1p"] is True
    assert header["backbone"]["backbone"] == "handcrafted"


def test_registry_errors_and_plugins():
    with pytest.raises(KeyError, match="Unknown model 'rige'.*ridge"):
        stp.models.create_predictor("rige")
    assert stp.models.create_predictor("HisToSGE").name == "histosge"  # the method's own spelling
    with pytest.raises(KeyError, match="Did you mean 'histosge'"):
        stp.models.create_predictor("HisToSG")
    with pytest.raises(ValueError, match="already registered"):

        @register_predictor("ridge")
        class Other(Predictor):
            def fit(self, slides, *, genes, max_epochs=None, seed=None):
                return self

            def predict(self, slide, regions):
                return None, None

    table = stp.models.predictors_table()
    assert {"ridge", "mean", "neighbors", "copy"} <= set(table.index)


def test_ridge_recovers_linear_signal():
    from stpredict.models import SlideData

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 10))
    W = rng.normal(size=(10, 3))
    Y = X @ W + 0.1 * rng.normal(size=(300, 3))
    mk = lambda a, b: SlideData("s", np.zeros((len(a), 2)), (1.0, 1.0), 10.0, [], pd_index(len(a)), y=b, embeddings=a)  # noqa: E731
    pred = stp.models.create_predictor("ridge", clip=False).fit([mk(X[:200], Y[:200])], genes=["a", "b", "c"])
    m, s = pred.predict(mk(X[:200], Y[:200]), Regions(np.zeros((100, 2)), embeddings=X[200:]))
    assert stp.metrics.pearson_per_gene(Y[200:], m).min() > 0.95
    # calibrated std: about 68 % of residuals within one std (Gaussian noise)
    cover = (np.abs(Y[200:] - m) <= s).mean()
    assert 0.5 < cover < 0.9


def pd_index(n):
    import pandas as pd

    return pd.Index([f"s{i}" for i in range(n)])
