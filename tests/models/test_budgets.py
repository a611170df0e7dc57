"""Training budgets of the iterative predictors: chosen by device, overridable, recorded where users look."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import stpredict as stp
from stpredict.models import _torch, nsl, pixnet, stnet
from stpredict.models import histosge as hsge

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("module", [hsge, nsl, stnet, pixnet], ids=["histosge", "nsl", "stnet", "pixnet"])
def test_auto_takes_the_device_budget_and_explicit_settings_win(module):
    keys = list(module.BUDGETS["cpu"])
    cfg = {"budget": "auto", **dict.fromkeys(keys)}
    assert _torch.resolve_budget(cfg, module.BUDGETS, CPU) == {"budget": "cpu", **module.BUDGETS["cpu"]}
    assert _torch.resolve_budget(cfg, module.BUDGETS, CUDA) == {"budget": "gpu", **module.BUDGETS["gpu"]}
    # a named budget is taken on any device; an explicit setting replaces the budget's value
    cfg = {"budget": "gpu", **dict.fromkeys(keys), "max_epochs": 3}
    assert _torch.resolve_budget(cfg, module.BUDGETS, CPU) == {
        "budget": "gpu",
        **module.BUDGETS["gpu"],
        "max_epochs": 3,
    }


@pytest.mark.parametrize("name", ["histosge", "nsl", "stnet", "pixnet"])
def test_an_unknown_budget_is_refused_with_the_choices(name):
    with pytest.raises(ValueError, match=r"budget must be one of \('auto', 'cpu', 'gpu'\).*'fast'"):
        stp.models.create_predictor(name, budget="fast")


@pytest.mark.parametrize("module", [hsge, nsl], ids=["histosge", "nsl"])
def test_the_cpu_budget_is_smaller_than_the_gpu_one(module):
    cpu, gpu = module.BUDGETS["cpu"], module.BUDGETS["gpu"]
    assert all(cpu[k] < gpu[k] for k in cpu)


def test_predict_records_the_budget_every_fold_trained_under():
    """Out of fold on CPU: every fit stops within the CPU budget, which predict records with each fold's time."""
    sdata = stp.datasets.synthetic(image_size=900, n_genes=4, seed=3)
    members = []
    orig = hsge.fit_module

    def spy(*args, **kwargs):
        log = orig(*args, **kwargs)
        members.append((kwargs["max_epochs"], kwargs["patience"], log))
        return log

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hsge, "fit_module", spy)
        stp.tl.predict(
            sdata, "histosge", backbone="handcrafted", oof_folds=2, n_models=1, dim=16, head_hidden=16, progress=False
        )
    rec = sdata.tables["table"].uns["stpredict"]["predicted"]
    assert dict(rec["budget"]) == {"budget": "cpu", "max_epochs": 150, "patience": 10}
    assert len(rec["fold_fit_seconds"]) == 2 and np.all(np.asarray(rec["fold_fit_seconds"]) > 0)
    assert len(members) == 2
    for max_epochs, patience, log in members:
        assert (max_epochs, patience) == (150, 10)
        assert log.epochs <= 150
        if log.stopped_early:
            assert log.epochs - log.best_epoch == 10
