"""Checkpoints: names that save and load agree on, and one clear error for every unreadable file."""

from __future__ import annotations

import json
import pickle
import re
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest

import stpredict as stp
from stpredict.models import CheckpointError, Predictor, register_predictor
from stpredict.models._base import SlideData

if TYPE_CHECKING:
    from pathlib import Path


def _slide(n: int = 40, d: int = 6, genes: int = 3, seed: int = 0) -> SlideData:
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, d)).astype(np.float32)
    return SlideData(
        name="s",
        centers_px=rng.uniform(0, 100, size=(n, 2)),
        microns_per_pixel_xy=(1.0, 1.0),
        spot_diameter_px=55.0,
        image_levels=[],
        obs_names=pd.Index([f"s{i}" for i in range(n)]),
        genes=[f"g{i}" for i in range(genes)],
        y=np.abs(emb[:, :genes] + rng.normal(scale=0.1, size=(n, genes))),
        embeddings=emb,
    )


class _Strict(Predictor):
    """A test predictor whose set_state checks shapes the way torch's load_state_dict does."""

    def __init__(self, *, width: int = 4) -> None:
        super().__init__(width=width)

    def fit(self, slides, *, genes, max_epochs=None, seed=None):
        self.genes = list(genes)
        self._w = np.zeros((self.config["width"], len(genes)), dtype=np.float32)
        return self

    def predict(self, slide, regions):
        return np.zeros((regions.n, len(self.genes))), None

    def get_state(self):
        return {"w": self._w}

    def set_state(self, state):
        w = state["w"]
        if w.shape != (self.config["width"], len(self.genes)):
            msg = f"size mismatch for w: copying a param with shape {w.shape}"
            raise RuntimeError(msg)
        self._w = w


@pytest.fixture(scope="module", autouse=True)
def _strict_registered():
    """Register the test predictor while this module runs only (other modules list the registry)."""
    from stpredict.models import _base

    register_predictor("_ckpt_strict")(_Strict)
    yield
    _base._REGISTRY.pop("_ckpt_strict", None)


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A ridge checkpoint."""
    pred = stp.models.create_predictor("ridge").fit([_slide()], genes=[f"g{i}" for i in range(3)])
    return pred.save(tmp_path_factory.mktemp("ckpt") / "ridge")


def _parts(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    from safetensors import safe_open
    from safetensors.numpy import load_file

    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata()
    return json.loads(meta["stpredict"]), load_file(str(path))


def _rewrite(good: Path, dest: Path, *, header=None, tensors=None, raw: str | None = None, meta=None) -> Path:
    """A copy of ``good`` with its header / tensors / raw metadata string changed."""
    from safetensors.numpy import save_file

    h, t = _parts(good)
    if header is not None:
        h = header(h)
    if tensors is not None:
        t = tensors(t)
    metadata = meta if meta is not None else {"stpredict": raw if raw is not None else json.dumps(h)}
    save_file(t, str(dest), metadata=metadata)
    return dest


def _drop(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}


def _set(d: dict, **kw) -> dict:
    return {**d, **kw}


def _truncated(good, dest):
    data = good.read_bytes()
    dest.write_bytes(data[: len(data) // 2])
    return dest


def _torch_file(good, dest):
    import torch

    torch.save({"w": torch.zeros(2)}, dest)
    return dest


def _strict(dest, *, w_shape, width=4):
    pred = _Strict(width=width).fit([], genes=["a", "b"])
    path = pred.save(dest)
    return _rewrite(
        path,
        path,
        header=lambda h: _drop(h, "tensors"),  # a checkpoint without manifest: set_state must catch it
        tensors=lambda t: {"w": np.zeros(w_shape, dtype=np.float32)},
    )


#: case -> (build the file from the good checkpoint, exception, message fragment, does read_header see it?)
CASES = {
    "missing file": (lambda g, d: d, FileNotFoundError, "does not exist (tried", True),
    "empty file": (lambda g, d: (d.write_bytes(b""), d)[1], CheckpointError, "it is an empty file", True),
    "truncated": (_truncated, CheckpointError, "it is a truncated file", True),
    "pickle": (
        lambda g, d: (d.write_bytes(pickle.dumps({"w": [1.0]})), d)[1],
        CheckpointError,
        "it is a Python pickle (stpredict never loads pickles",
        True,
    ),
    "torch.save": (_torch_file, CheckpointError, "a torch.save file (stpredict never loads pickles", True),
    "text": (lambda g, d: (d.write_text('{"predictor": "ridge"}'), d)[1], CheckpointError, "a JSON or text", True),
    "no stpredict metadata": (
        lambda g, d: _rewrite(g, d, meta={"other": "x"}),
        CheckpointError,
        "is a safetensors file but not an stpredict checkpoint",
        True,
    ),
    "header not JSON": (
        lambda g, d: _rewrite(g, d, raw="{predictor: ridge"),
        CheckpointError,
        "the stpredict header is not JSON",
        True,
    ),
    "header a list": (
        lambda g, d: _rewrite(g, d, raw="[1, 2]"),
        CheckpointError,
        "the stpredict header is a JSON list, expected an object",
        True,
    ),
    "no predictor": (
        lambda g, d: _rewrite(g, d, header=lambda h: _drop(h, "predictor")),
        CheckpointError,
        "the stpredict header lacks ['predictor']",
        True,
    ),
    "no genes": (
        lambda g, d: _rewrite(g, d, header=lambda h: _drop(h, "genes")),
        CheckpointError,
        "the stpredict header lacks ['genes']",
        True,
    ),
    "genes a string": (
        lambda g, d: _rewrite(g, d, header=lambda h: _set(h, genes="g0")),
        CheckpointError,
        "header field 'genes' is a str, expected a list",
        True,
    ),
    "newer format": (
        lambda g, d: _rewrite(g, d, header=lambda h: _set(h, format_version=99)),
        CheckpointError,
        "format version 99, newer than this stpredict reads (format 1;",
        True,
    ),
    "older format": (
        lambda g, d: _rewrite(g, d, header=lambda h: _set(h, format_version=0)),
        CheckpointError,
        "format version 0, older than this stpredict reads (format 1)",
        True,
    ),
    "unknown predictor": (
        lambda g, d: _rewrite(g, d, header=lambda h: _set(h, predictor="nope")),
        CheckpointError,
        "a checkpoint of predictor 'nope', which is not registered",
        False,
    ),
    "unknown config key": (
        lambda g, d: _rewrite(g, d, header=lambda h: _set(h, config={**h["config"], "bogus": 1})),
        CheckpointError,
        "options ['bogus'] in its config are not options of 'ridge'",
        False,
    ),
    "missing tensor": (
        lambda g, d: _rewrite(g, d, tensors=lambda t: _drop(t, "coef")),
        CheckpointError,
        "its tensors do not match its header: missing ['coef']",
        False,
    ),
    "wrong-shape tensor": (
        lambda g, d: _rewrite(g, d, tensors=lambda t: _set(t, coef=np.zeros((2, 2)))),
        CheckpointError,
        "tensor 'coef' has shape (2, 2), its header says",
        False,
    ),
    "set_state: wrong shape": (
        lambda g, d: _strict(d, w_shape=(3, 2)),
        CheckpointError,
        "do not fit a '_ckpt_strict' predictor with config {'width': 4}: size mismatch for w",
        False,
    ),
    "set_state: missing tensor": (
        lambda g, d: _rewrite(_strict(d, w_shape=(4, 2)), d, tensors=lambda t: {"v": t["w"]}),
        CheckpointError,
        "a '_ckpt_strict' predictor needs tensor 'w', the file holds ['v']",
        False,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_unreadable_checkpoint(case, good, tmp_path):
    build, exc, fragment, in_header = CASES[case]
    path = build(good, tmp_path / "bad.safetensors")
    with pytest.raises(exc, match=re.escape(fragment)) as e:
        stp.models.load(path)
    assert str(path) in str(e.value)
    if in_header:
        with pytest.raises(exc, match=re.escape(fragment)):
            stp.models.read_header(path)
    else:
        stp.models.read_header(path)  # the header itself is fine


def test_checkpoint_error_is_a_value_error():
    assert issubclass(CheckpointError, ValueError)
    assert stp.models.CheckpointError is CheckpointError


def test_save_and_load_agree_on_names(good, tmp_path):
    pred = stp.models.load(good)
    assert good.name == "ridge.safetensors"
    written = pred.save(tmp_path / "sub" / "nsl")
    assert written == tmp_path / "sub" / "nsl.safetensors"
    for given in (tmp_path / "sub" / "nsl", str(tmp_path / "sub" / "nsl"), written):
        back = stp.models.load(given)
        assert back.genes == pred.genes
        np.testing.assert_array_equal(back.get_state()["coef"], pred.get_state()["coef"])
        assert stp.models.read_header(given)["predictor"] == "ridge"
    # a dotted name keeps its dot: "v1.2" -> "v1.2.safetensors"
    assert pred.save(tmp_path / "v1.2") == tmp_path / "v1.2.safetensors"
    assert stp.models.load(tmp_path / "v1.2").genes == pred.genes
    header = stp.models.read_header(written)
    assert header["format_version"] == 1
    assert header["tensors"]["coef"]["shape"] == list(pred.get_state()["coef"].shape)
    with pytest.raises(FileNotFoundError, match="is a directory"):
        stp.models.load(tmp_path / "sub")
    # no temporary file is left beside the checkpoint
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["nsl.safetensors"]
