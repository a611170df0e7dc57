"""A catalogue of hostile or mistaken ARGUMENTS to the verbs, grids, devices, checkpoints and write-back.

Each case calls one entry point on a small synthetic slide and expects either

- ``refused``: an exception of a given type whose message holds a given fragment (it names the argument, the
  valid range or the close matches, and the fix), raised before any expensive work (the embedding, dense-map,
  training and write-back entry points are replaced by spies that fail the test if reached) and leaving the
  user's SpatialData equal, element by element, to a deep copy taken before the call; or
- ``accepted``: a valid edge case that works, checked by its own assertion.

``before`` records what the case did before the checks of issue 16 (``silent``: ran and did something wrong or
nothing useful; ``internal``: an internal error (TypeError/KeyError/... from numpy, anndata or deep code);
``unclear``: an error not naming the argument, range or fix, or misleading; ``late``: a clear refusal, but only
after the expensive work; ``clear``: already a clear refusal before any work; ``refused``: refused though valid). Bad DATA (NaN counts, broken geometry) is in another file; unreadable
checkpoint files are in ``tests/models/test_checkpoint.py`` (``test_unreadable_checkpoint``: missing, empty,
truncated, pickle, ...) and the read-only store in ``tests/io/test_write_safety.py``
(``test_read_only_store_is_refused_and_unchanged``): here only how the verbs pass them on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from _sdata_compare import assert_same_array, assert_same_sdata

import stpredict as stp
from stpredict.models import CheckpointError

if TYPE_CHECKING:
    from collections.abc import Callable

P = {"progress": False}
GENES = [f"gene_{i}" for i in range(12)]


@dataclass(frozen=True)
class Case:
    call: Callable[[Any, dict], Any]
    kind: str  # "refused" | "accepted"
    before: str  # silent | internal | unclear | clear | refused
    exc: type[BaseException] | None = None
    fragment: str = ""
    setup: Callable[[Any, dict], None] | None = None
    check: Callable[[Any, Any], None] | None = None
    needs: str = ""  # "ckpt" | "store" | "no-cuda"


def refused(call, exc, fragment, before, **kw) -> Case:
    return Case(call, "refused", before, exc, fragment, **kw)


def accepted(call, check, before, **kw) -> Case:
    return Case(call, "accepted", before, check=check, **kw)


def _he_only(s, ctx) -> None:
    del s.tables["table"]


def _user_table(name):
    def setup(s, ctx):
        import anndata as ad

        s.tables[name] = ad.AnnData(np.ones((2, 2), dtype=np.float32))

    return setup


def _bins(s, _):
    assert "ridge_spots_bin16um" in s.tables and "spots_bin16um" in s.shapes


CASES: dict[str, Case] = {
    # ---- gene panel -------------------------------------------------------------------------------------------
    "n_genes negative": refused(
        lambda s, c: stp.tl.predict(s, "ridge", n_genes=-5, **P),
        ValueError,
        "n_genes must be a positive integer",
        "silent",
    ),
    "n_genes zero": refused(
        lambda s, c: stp.tl.fit(s, "ridge", n_genes=0, **P), ValueError, "got 0; the default is 50", "silent"
    ),
    "genes=0": refused(
        lambda s, c: stp.tl.superresolve(s, "ridge", genes=0, **P),
        ValueError,
        "genes=0 asks for a panel of 0",
        "silent",
    ),
    "genes=True": refused(
        lambda s, c: stp.tl.predict(s, "ridge", genes=True, **P), TypeError, "genes must be a list", "silent"
    ),
    "genes unknown": refused(
        lambda s, c: stp.tl.predict(s, "ridge", genes=["gene_1", "gene_3x"], **P),
        KeyError,
        "'gene_3x': did you mean 'gene_3'",
        "unclear",
    ),  # fmt: skip
    "genes duplicated": refused(
        lambda s, c: stp.tl.predict(s, "ridge", genes=["gene_0", "gene_1", "gene_0"], **P),
        ValueError,
        "more than once (['gene_0'])",
        "silent",
    ),  # fmt: skip
    "genes empty": refused(
        lambda s, c: stp.tl.predict(s, "ridge", genes=[], **P), ValueError, "genes=[] asks for an empty panel", "clear"
    ),
    "genes a string": refused(
        lambda s, c: stp.tl.predict(s, "ridge", genes="gene_0", **P),
        TypeError,
        "pass a list, genes=['gene_0']",
        "unclear",
    ),
    # ---- grids and bins ---------------------------------------------------------------------------------------
    "bin_size negative": refused(
        lambda s, c: stp.tl.superresolve(s, "ridge", bin_size=-8, **P),
        ValueError,
        "bin_size must be a positive, finite number of µm, got -8",
        "unclear",
    ),  # fmt: skip
    "bin_size nan": refused(
        lambda s, c: stp.tl.superresolve(s, "ridge", bin_size=float("nan"), **P),
        ValueError,
        "bin_size must be a positive, finite number of µm, got nan",
        "unclear",
    ),  # fmt: skip
    "bin_size zero": refused(
        lambda s, c: stp.tl.superresolve(s, "ridge", bin_size=0, **P), ValueError, "got 0. Bins are squares", "clear"
    ),
    "bin_size a string": refused(
        lambda s, c: stp.tl.superresolve(s, "ridge", bin_size="8", **P),
        TypeError,
        "bin_size must be a positive number of µm, got '8' of type str",
        "silent",
    ),  # fmt: skip
    "bin_size larger than the tissue": refused(
        lambda s, c: stp.tl.superresolve(s, "ridge", bin_size=5000, **P),
        ValueError,
        "Bins of 5000 µm leave no bin whose centre lies within",
        "internal",
    ),  # fmt: skip
    "pp.grid bin_size negative": refused(
        lambda s, c: stp.pp.grid(s, bin_size=-8), ValueError, "bin_size must be a positive", "unclear"
    ),
    "grid ps5": refused(
        lambda s, c: stp.tl.superresolve(s, "ridge", grid="ps5", **P),
        ValueError,
        "Unknown grid 'ps5'. Did you mean grid='ps4'",
        "unclear",
    ),  # fmt: skip
    "grid cell": refused(
        lambda s, c: stp.tl.superresolve(s, "ridge", grid="cell", **P),
        ValueError,
        "Did you mean grid='cells'?",
        "unclear",
    ),
    "grid bin-8um": refused(
        lambda s, c: stp.pp.grid(s, "bin-8um"), ValueError, "'bin<N>um' with N a positive number of µm", "unclear"
    ),
    "grid PS4 (any case)": accepted(
        lambda s, c: stp.tl.superresolve(s, "ridge", grid="PS4", **P),
        lambda s, r: (r is None) and "spots_ps4" in s.shapes and "ridge_spots_ps4" in s.tables,
        "refused",
    ),  # fmt: skip
    "grid bin16 (alias of bin16um)": accepted(
        lambda s, c: stp.tl.superresolve(s, "ridge", grid="bin16", tissue=False, **P), _bins, "clear"
    ),
    # ---- windows ----------------------------------------------------------------------------------------------
    "patch_size_um negative": refused(
        lambda s, c: stp.tl.predict(s, "ridge", patch_size_um=-1, **P),
        ValueError,
        "patch_size_um must be a positive, finite number of µm, got -1",
        "unclear",
    ),  # fmt: skip
    "embed patch_size_um zero": refused(
        lambda s, c: stp.tl.embed(s, patch_size_um=0, **P), ValueError, "patch_size_um must be a positive", "unclear"
    ),
    # ---- layers and element keys ------------------------------------------------------------------------------
    "layer absent": refused(
        lambda s, c: stp.tl.predict(s, "ridge", layer="raw", **P),
        KeyError,
        "Table 'table' has no layer 'raw'; its layers: 'counts'.",
        "internal",
    ),  # fmt: skip
    "layer misspelt": refused(
        lambda s, c: stp.tl.fit(s, "ridge", layer="count", **P), KeyError, "Did you mean layer='counts'?", "internal"
    ),
    "evaluate layer absent": refused(
        lambda s, c: stp.tl.evaluate(s, layer="raw"), KeyError, "has no layer 'raw'", "internal"
    ),
    "table_key misspelt": refused(
        lambda s, c: stp.tl.predict(s, "ridge", table_key="tabel", **P),
        KeyError,
        "Did you mean table_key='table'?",
        "clear",
    ),
    "image_key in the wrong case": refused(
        lambda s, c: stp.tl.predict(s, "ridge", image_key="HE", **P),
        KeyError,
        "Did you mean image_key='he'?",
        "unclear",
    ),
    "spots_key misspelt": refused(
        lambda s, c: stp.tl.superresolve(s, "ridge", spots_key="spot", **P),
        KeyError,
        "Did you mean spots_key='spots'?",
        "clear",
    ),  # fmt: skip
    # ---- folds, epochs, seeds ---------------------------------------------------------------------------------
    "oof_folds 0": refused(
        lambda s, c: stp.tl.predict(s, "ridge", oof_folds=0, **P),
        ValueError,
        "oof_folds must be at least 2 (got 0)",
        "clear",
    ),
    "oof_folds 1": refused(
        lambda s, c: stp.tl.predict(s, "ridge", oof_folds=1, **P),
        ValueError,
        "oof_folds must be at least 2 (got 1)",
        "clear",
    ),
    "oof_folds huge": refused(
        lambda s, c: stp.tl.predict(s, "ridge", oof_folds=10**6, **P),
        ValueError,
        "oof_folds=1000000 is too many for 31 measured spots: use an integer from 2 to 15",
        "unclear",
    ),  # fmt: skip
    "oof_folds 2.5": refused(
        lambda s, c: stp.tl.predict(s, "ridge", oof_folds=2.5, **P),
        ValueError,
        "oof_folds must be an integer",
        "internal",
    ),
    "oof_folds 2, numpy seed, cpu, no workers": accepted(
        lambda s, c: stp.tl.predict(s, "ridge", oof_folds=2, seed=np.int64(3), device="cpu", num_workers=0, **P),
        lambda s, r: s.tables["table"].uns["stpredict"]["predicted"]["oof_folds"] == 2,
        "clear",
    ),  # fmt: skip
    "max_epochs 0": refused(
        lambda s, c: stp.tl.fit(s, "stnet", max_epochs=0, **P),
        ValueError,
        "max_epochs must be a positive integer",
        "silent",
    ),
    "max_epochs negative": refused(
        lambda s, c: stp.tl.predict(s, "ridge", max_epochs=-1, **P),
        ValueError,
        "got -1. A model trained for no",
        "silent",
    ),
    "seed a string": refused(
        lambda s, c: stp.tl.predict(s, "ridge", seed="1", **P),
        TypeError,
        "got '1' of type str: pass seed=1.",
        "internal",
    ),
    "seed negative": refused(
        lambda s, c: stp.tl.superresolve(s, "ridge", seed=-1, **P),
        ValueError,
        "seed must be a non-negative integer",
        "internal",
    ),
    # ---- cross_validate: the same checks at its door ------------------------------------------------------------
    "cross_validate seed a string": refused(
        lambda s, c: stp.tl.cross_validate(s, "ridge", protocol="hide_spots", seed="1", **P),
        TypeError,
        "got '1' of type str: pass seed=1.",
        "internal",
    ),  # fmt: skip
    "cross_validate seed negative": refused(
        lambda s, c: stp.tl.cross_validate(s, "ridge", protocol="hide_spots", seed=-1, **P),
        ValueError,
        "seed must be a non-negative integer",
        "internal",
    ),  # fmt: skip
    "cross_validate max_epochs 0": refused(
        lambda s, c: stp.tl.cross_validate(s, "stnet", protocol="hide_spots", max_epochs=0, **P),
        ValueError,
        "max_epochs must be a positive integer",
        "silent",
    ),  # fmt: skip
    "cross_validate n_genes 0": refused(
        lambda s, c: stp.tl.cross_validate(s, "ridge", protocol="hide_spots", n_genes=0, **P),
        ValueError,
        "n_genes must be a positive integer",
        "clear",
    ),  # fmt: skip
    "cross_validate genes a string": refused(
        lambda s, c: stp.tl.cross_validate(s, "ridge", protocol="hide_spots", genes="gene_0", **P),
        TypeError,
        "pass a list, genes=['gene_0']",
        "unclear",
    ),  # fmt: skip
    "cross_validate genes duplicated": refused(
        lambda s, c: stp.tl.cross_validate(s, "ridge", protocol="hide_spots", genes=["gene_0", "gene_0"], **P),
        ValueError,
        "more than once (['gene_0'])",
        "silent",
    ),  # fmt: skip
    "cross_validate patch_size_um negative": refused(
        lambda s, c: stp.tl.cross_validate(s, "ridge", protocol="hide_spots", patch_size_um=-1, **P),
        ValueError,
        "patch_size_um must be a positive, finite number of µm, got -1",
        "internal",
    ),  # fmt: skip
    "cross_validate device cuda without CUDA": refused(
        lambda s, c: stp.tl.cross_validate(s, "ridge", protocol="hide_spots", device="cuda", **P),
        RuntimeError,
        "CUDA is not available here",
        "silent",
        needs="no-cuda",
    ),  # fmt: skip
    "cross_validate client a string": refused(
        lambda s, c: stp.tl.cross_validate(s, "ridge", protocol="hide_spots", client="tcp://127.0.0.1:8786", **P),
        TypeError,
        "cross_validate: client must be a dask.distributed.Client (e.g. Client(LocalCluster())) or None",
        "unclear",
    ),  # fmt: skip
    "cross_validate raise_on_error='no'": refused(
        lambda s, c: stp.tl.cross_validate(s, "ridge", protocol="hide_spots", raise_on_error="no", **P),
        TypeError,
        "raise_on_error must be True or False, got 'no' of type str: pass raise_on_error=False.",
        "unclear",
    ),  # fmt: skip
    "fit client a string": refused(
        lambda s, c: stp.tl.fit(s, "ridge", client="tcp://127.0.0.1:8786", **P),
        TypeError,
        "fit: client must be a dask.distributed.Client",
        "silent",
    ),  # fmt: skip
    "embed_cohort client a string": refused(
        lambda s, c: stp.tl.embed_cohort([s], client="tcp://127.0.0.1:8786", **P),
        TypeError,
        "embed_cohort: client must be a dask.distributed.Client",
        "silent",
    ),  # fmt: skip
    # ---- flags ------------------------------------------------------------------------------------------------
    "embed inplace='no'": refused(
        lambda s, c: stp.tl.embed(s, inplace="no", **P),
        TypeError,
        "got 'no' of type str: pass inplace=False.",
        "silent",
    ),
    "predict inplace='no'": refused(
        lambda s, c: stp.tl.predict(s, "ridge", inplace="no", **P),
        TypeError,
        "inplace must be True or False, got 'no'",
        "silent",
    ),  # fmt: skip
    "superresolve inplace=0": refused(
        lambda s, c: stp.tl.superresolve(s, "ridge", inplace=0, **P),
        TypeError,
        "got 0 of type int: pass inplace=False.",
        "silent",
    ),  # fmt: skip
    "to_rgb inplace='no'": refused(
        lambda s, c: stp.io.to_rgb(s, "he", inplace="no"), TypeError, "inplace must be True or False", "silent"
    ),
    "pool_to_spots inplace='no'": refused(
        lambda s, c: stp.pp.pool_to_spots(s, inplace="no"), TypeError, "inplace must be True or False", "unclear"
    ),
    "pool_to_spots layer absent": refused(
        lambda s, c: stp.pp.pool_to_spots(s, layer="raw"),
        KeyError,
        "Table 'table' has no layer 'raw'; its layers: 'counts'. Pass the layer of raw counts",
        "clear",
    ),  # fmt: skip
    "predict inplace numpy False": accepted(
        lambda s, c: stp.tl.predict(s, "ridge", inplace=np.False_, **P),
        lambda s, r: (
            r is not None and r.n_obs == s.tables["table"].n_obs and "predicted" not in s.tables["table"].layers
        ),
        "clear",
    ),  # fmt: skip
    # ---- devices and loaders ----------------------------------------------------------------------------------
    "device cuda without CUDA": refused(
        lambda s, c: stp.tl.predict(s, "ridge", device="cuda", **P),
        RuntimeError,
        "CUDA is not available here",
        "silent",
        needs="no-cuda",
    ),  # fmt: skip
    "device gpu9": refused(
        lambda s, c: stp.tl.superresolve(s, "ridge", device="gpu9", **P),
        ValueError,
        "device='gpu9' is not a device name: use 'cpu', 'cuda', 'cuda:<index>', 'mps', 'auto'",
        "silent",
    ),  # fmt: skip
    "device cuda:99": refused(
        lambda s, c: stp.tl.embed(s, device="cuda:99", **P), RuntimeError, "device='cuda:99'", "silent"
    ),
    "num_workers 10**9": refused(
        lambda s, c: stp.tl.predict(s, "ridge", num_workers=10**9, **P),
        ValueError,
        "num_workers must be an integer from 0",
        "clear",
    ),  # fmt: skip
    "batch_size -1": refused(
        lambda s, c: stp.tl.embed(s, batch_size=-1, **P), ValueError, "batch_size must be a positive integer", "clear"
    ),
    # ---- H&E-only slides --------------------------------------------------------------------------------------
    "superresolve H&E-only with a model name": refused(
        lambda s, c: stp.tl.superresolve(s, "ridge", **P),
        ValueError,
        "an H&E-only slide needs a fitted model",
        "unclear",
        setup=_he_only,
    ),  # fmt: skip
    "predict H&E-only with a model name": refused(
        lambda s, c: stp.tl.predict(s, "ridge", **P),
        ValueError,
        "stp.tl.fit(measured, 'ridge')",
        "unclear",
        setup=_he_only,
    ),  # fmt: skip
    "predict H&E-only with a fitted model": accepted(
        lambda s, c: stp.tl.predict(s, c["ckpt"], **P),
        lambda s, r: s.tables["predictions"].n_obs == len(s.shapes["spots"]),
        "clear",
        setup=_he_only,
        needs="ckpt",
    ),  # fmt: skip
    "predict H&E-only beside a user table 'predictions'": refused(
        lambda s, c: stp.tl.predict(s, c["ckpt"], **P),
        ValueError,
        "a table 'predictions' that predict did not write",
        "silent",
        setup=lambda s, c: (_he_only(s, c), _user_table("predictions")(s, c)),
        needs="ckpt",
    ),  # fmt: skip
    # ---- names of the outputs ---------------------------------------------------------------------------------
    "predict key_added = the counts layer": refused(
        lambda s, c: stp.tl.predict(s, "ridge", key_added="counts", **P),
        ValueError,
        "key_added='counts' would overwrite layers['counts'] of table 'table'",
        "silent",
    ),  # fmt: skip
    "predict key_added = obsm spatial": refused(
        lambda s, c: stp.tl.predict(s, "ridge", key_added="spatial", **P),
        ValueError,
        "would overwrite obsm['spatial']",
        "silent",
    ),
    "predict key_added = layer fitted on": refused(
        lambda s, c: stp.tl.predict(s, "ridge", layer="counts", key_added="counts", **P),
        ValueError,
        "is the layer of counts the model is fitted on",
        "silent",
    ),  # fmt: skip
    "predict key_added empty": refused(
        lambda s, c: stp.tl.predict(s, "ridge", key_added="", **P),
        ValueError,
        "key_added must be a non-empty string",
        "silent",
    ),
    "predict key_added X (a layer named X)": accepted(
        lambda s, c: stp.tl.predict(s, "ridge", key_added="X", **P),
        lambda s, r: "X" in s.tables["table"].layers,
        "clear",
    ),  # fmt: skip
    "superresolve key_added = the counts table": refused(
        lambda s, c: stp.tl.superresolve(s, "ridge", key_added="table", **P),
        ValueError,
        "key_added='table' is the table of the measured spots",
        "silent",
    ),  # fmt: skip
    "superresolve key_added = a user table": refused(
        lambda s, c: stp.tl.superresolve(s, "ridge", key_added="notes", **P),
        ValueError,
        "names an existing table that stp.tl.superresolve did not write",
        "silent",
        setup=_user_table("notes"),
    ),  # fmt: skip
    "superresolve key_added = the spots": refused(
        lambda s, c: stp.tl.superresolve(s, "ridge", key_added="spots", **P),
        ValueError,
        "Element name 'spots' is already used by shapes",
        "late",
    ),  # fmt: skip
    "superresolve map_key = the H&E": refused(
        lambda s, c: stp.tl.superresolve(s, "pixnet", map_key="he", **P), ValueError, "map_key 'he'", "clear"
    ),
    "embed key_added = obsm spatial": refused(
        lambda s, c: stp.tl.embed(s, key_added="spatial", **P), ValueError, "would overwrite obsm['spatial']", "silent"
    ),
    # ---- checkpoints given to a verb ----------------------------------------------------------------------------
    "model = a missing path": refused(
        lambda s, c: stp.tl.predict(s, str(c["tmp"] / "models" / "ridge_v2"), **P),
        FileNotFoundError,
        "does not exist",
        "unclear",
    ),  # fmt: skip
    "model = a directory": refused(
        lambda s, c: stp.tl.superresolve(s, str(c["tmp"]), **P), FileNotFoundError, "is a directory", "unclear"
    ),
    "model = a truncated checkpoint": refused(
        lambda s, c: stp.tl.predict(s, c["truncated"], **P),
        CheckpointError,
        "it is a truncated file",
        "unclear",
        needs="ckpt",
    ),  # fmt: skip
    # ---- write-back -------------------------------------------------------------------------------------------
    "write_back not backed": refused(
        lambda s, c: stp.io.write_back(s), ValueError, "not backed by a zarr store", "clear"
    ),
    "write_back misspelt element": refused(
        lambda s, c: stp.io.write_back(c["backed"], "tabel"),
        KeyError,
        "Did you mean 'table' for 'tabel'?",
        "unclear",
        needs="store",
    ),  # fmt: skip
}


@pytest.fixture(scope="module")
def base_sdata():
    sdata = stp.datasets.synthetic(image_size=768, n_genes=12, seed=0)
    t = sdata.tables["table"]
    t.layers["counts"] = t.X.copy()
    return sdata


@pytest.fixture(scope="module")
def ckpt_files(base_sdata, tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    from spatialdata import deepcopy

    good = stp.tl.fit(deepcopy(base_sdata), "ridge", **P).save(d / "ridge")
    data = good.read_bytes()
    (d / "truncated.safetensors").write_bytes(data[:-64])  # the tensors cut short
    return {"ckpt": str(good), "truncated": str(d / "truncated.safetensors")}


@pytest.fixture
def no_work(monkeypatch):
    """Spies on the expensive entry points: reaching one fails the test."""
    from stpredict.io import _write
    from stpredict.models._base import Predictor
    from stpredict.tl import _dense, _embeddings

    def spy(name):
        def fail(*a, **k):
            raise AssertionError(f"expensive work reached ({name}) before the argument was refused")

        return fail

    monkeypatch.setattr(Predictor, "train", spy("Predictor.train"))
    monkeypatch.setattr(_embeddings.EmbeddingCache, "spots", spy("EmbeddingCache.spots"))
    monkeypatch.setattr(_embeddings, "compute_embeddings", spy("compute_embeddings"))
    monkeypatch.setattr(_dense.DenseMaps, "features", spy("DenseMaps.features"))
    monkeypatch.setattr(_write, "Transaction", spy("write_back's Transaction"))


def _ctx(case: Case, request, tmp_path) -> dict:
    ctx: dict[str, Any] = {"tmp": tmp_path}
    if case.needs == "ckpt":
        ctx.update(request.getfixturevalue("ckpt_files"))
    if case.needs == "no-cuda":
        import torch

        if torch.cuda.is_available():
            pytest.skip("CUDA is available here")
    return ctx


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.kind == "refused"])
def test_refused(name, base_sdata, request, tmp_path):
    from spatialdata import deepcopy

    case = CASES[name]
    ctx = _ctx(case, request, tmp_path)
    sdata = deepcopy(base_sdata)
    if case.setup is not None:
        case.setup(sdata, ctx)
    if case.needs == "store":
        import spatialdata as sd

        sdata.write(tmp_path / "slide.zarr")
        sdata = ctx["backed"] = sd.read_zarr(tmp_path / "slide.zarr")
    before = deepcopy(sdata)
    request.getfixturevalue("no_work")
    with pytest.raises(case.exc, match=re.escape(case.fragment)):
        case.call(sdata, ctx)
    assert_same_sdata(sdata, before)


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.kind == "accepted"])
def test_accepted(name, base_sdata, request, tmp_path):
    from spatialdata import deepcopy

    case = CASES[name]
    ctx = _ctx(case, request, tmp_path)
    sdata = deepcopy(base_sdata)
    if case.setup is not None:
        case.setup(sdata, ctx)
    x_before = None if "table" not in sdata.tables else sdata.tables["table"].X.copy()
    result = case.call(sdata, ctx)
    assert case.check(sdata, result) is not False
    if x_before is not None:  # the counts are never touched
        assert_same_array(sdata.tables["table"].X, x_before, "X")
        assert_same_array(sdata.tables["table"].layers["counts"], x_before, "layers['counts']")


def test_catalogue_size():
    kinds = [c.kind for c in CASES.values()]
    assert len(CASES) >= 35
    assert kinds.count("accepted") >= 4
    assert {c.before for c in CASES.values()} <= {"silent", "internal", "unclear", "late", "clear", "refused"}


def test_batch_size_never_stores_zero_embeddings(base_sdata):
    """A refused batch size leaves no embeddings behind (an all-zero obsm would be reused as features)."""
    from spatialdata import deepcopy

    sdata = deepcopy(base_sdata)
    for bs in (-1, 0, 2.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            stp.tl.predict(sdata, "ridge", batch_size=bs, **P)
    assert not any(k.startswith("X_") for k in sdata.tables["table"].obsm)
    assert "stpredict" not in sdata.tables["table"].uns


@pytest.fixture
def restore_device():
    before = stp.settings.device
    yield
    object.__setattr__(stp.settings, "device", before)


@pytest.mark.parametrize("value", ["gpu", "CUDA", "cuda:x", 0, None])
def test_settings_device_refuses_a_malformed_name(value, restore_device):
    with pytest.raises(ValueError, match="stp.settings.device must be 'auto', 'cpu', 'cuda'"):
        stp.settings.device = value
    assert stp.settings.device == "auto"


def test_settings_device_missing_here_is_refused_at_the_door(base_sdata, restore_device, no_work):
    """``settings.device`` is the default of every ``device=``: a device this machine lacks is refused up front."""
    import torch
    from spatialdata import deepcopy

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    stp.settings.device = "cuda"
    sdata = deepcopy(base_sdata)
    with pytest.raises(RuntimeError, match=r"stp.settings.device is 'cuda' \(no device= was passed\).*not available"):
        stp.tl.predict(sdata, "ridge", **P)
    assert_same_sdata(sdata, base_sdata)
    from stpredict.models._device import check_device

    check_device("cpu")  # an explicit device= wins over the setting
