"""Foundation-model table, local-first weight resolution and loading (no network, no real checkpoints)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from safetensors.torch import save_file  # noqa: E402

from stpredict._settings import settings  # noqa: E402
from stpredict.models.backbones import (  # noqa: E402
    FOUNDATION_MODELS,
    RANDOM_SOURCE,
    build_foundation_module,
    create_foundation,
    create_timm,
    file_sha256,
    foundation_weights_available,
    get_backbone,
    load_weights_file,
)
from stpredict.models.backbones import foundation_table as list_backbones  # noqa: E402

TIMM_ENTRIES = [k for k, cfg in FOUNDATION_MODELS.items() if cfg.loader == "timm"]

#: parameters (millions, one decimal) and characteristic shapes of the published architectures
EXPECTED = {
    "uni": {
        "params_m": 303.4,
        "blocks": 24,
        "shapes": {
            "cls_token": (1, 1, 1024),
            "pos_embed": (1, 197, 1024),
            "patch_embed.proj.weight": (1024, 3, 16, 16),
            "blocks.0.ls1.gamma": (1024,),
            "blocks.0.mlp.fc1.weight": (4096, 1024),
        },
        "absent": ["reg_token"],
    },
    "uni2-h": {
        "params_m": 681.4,
        "blocks": 24,
        "shapes": {
            "pos_embed": (1, 256, 1536),  # no_embed_class: no position embedding for CLS/registers
            "reg_token": (1, 8, 1536),
            "patch_embed.proj.weight": (1536, 3, 14, 14),
            "blocks.0.mlp.fc1.weight": (8192, 1536),  # packed SwiGLU: 2 x 4096
            "blocks.0.mlp.fc2.weight": (1536, 4096),
        },
        "absent": [],
    },
    "virchow2": {
        "params_m": 631.2,
        "blocks": 32,
        "shapes": {
            "pos_embed": (1, 261, 1280),
            "reg_token": (1, 4, 1280),
            "patch_embed.proj.weight": (1280, 3, 14, 14),
            "blocks.0.mlp.fc1.weight": (6832, 1280),
            "blocks.0.mlp.fc2.weight": (1280, 3416),
        },
        "absent": [],
    },
    "h-optimus-0": {
        "params_m": 1134.8,
        "blocks": 40,
        "shapes": {
            "pos_embed": (1, 256, 1536),
            "reg_token": (1, 4, 1536),
            "patch_embed.proj.weight": (1536, 3, 14, 14),
            "blocks.0.mlp.fc1.weight": (8192, 1536),
            "blocks.0.mlp.fc2.weight": (1536, 4096),
        },
        "absent": [],
    },
}


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """Empty weights dir, HF cache and torch hub; downloads off."""
    monkeypatch.setattr(settings, "weights_dir", tmp_path / "weights")
    monkeypatch.setattr(settings, "foundation_weights", {})
    monkeypatch.setattr(settings, "allow_download", False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _random_state(module) -> dict:
    gen = torch.Generator().manual_seed(0)
    return {k: torch.randn(v.shape, generator=gen) for k, v in module.state_dict().items()}


def _fake_hf_cache(repo: str, filename: str, src: Path) -> Path:
    """Lay out ``src`` as huggingface_hub caches it (refs/main → snapshots/<commit>/<filename>)."""
    folder = Path(os.environ["HF_HUB_CACHE"]) / ("models--" + repo.replace("/", "--"))
    commit = "a" * 40
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    snap = folder / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, snap / filename)
    return snap / filename


def _patches(n: int = 2, px: int = 224) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 3, px, px), dtype=np.uint8)


# -- the table ----------------------------------------------------------------------------------------


def test_table_entries():
    assert set(FOUNDATION_MODELS) >= {"uni", "uni2-h", "virchow2", "h-optimus-0", "conch", "phikon", "phikon-v2"}
    for name, cfg in FOUNDATION_MODELS.items():
        assert cfg.name == name
        assert cfg.loader in {"timm", "transformers", "conch"}
        assert cfg.mpp == 0.5 and cfg.patch_um == 112.0
        assert cfg.license and cfg.citation and "/" in cfg.hf_hub_id
    assert FOUNDATION_MODELS["virchow2"].dim == 2560 and FOUNDATION_MODELS["virchow2"].pool == "cls+mean"
    assert FOUNDATION_MODELS["h-optimus-0"].mean == (0.707223, 0.578729, 0.703617)
    assert FOUNDATION_MODELS["conch"].dim == 512 and FOUNDATION_MODELS["phikon"].dim == 768


@pytest.mark.parametrize("name", TIMM_ENTRIES)
def test_architecture_on_meta(name):
    cfg, exp = FOUNDATION_MODELS[name], EXPECTED[name]
    with torch.device("meta"):
        bb = create_foundation(name, pretrained=False)
    assert bb.dim == cfg.dim and bb.source == RANDOM_SOURCE and bb.sha256 is None
    module = bb.module
    assert all(p.is_meta for p in module.parameters())
    assert module.num_prefix_tokens == cfg.num_prefix_tokens
    assert round(sum(p.numel() for p in module.parameters()) / 1e6, 1) == exp["params_m"]
    shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    assert len(module.blocks) == exp["blocks"]
    for key, shape in exp["shapes"].items():
        assert shapes[key] == shape, key
    for key in exp["absent"]:
        assert key not in shapes
    # the token dimension times the pooling gives the table's dim
    assert module.embed_dim * (2 if cfg.pool == "cls+mean" else 1) == cfg.dim


def test_h_optimus_matches_release_params():
    """H-optimus-0's release builds timm.models.VisionTransformer(**params) directly: same names and shapes."""
    import functools

    params = {
        "patch_size": 14,
        "embed_dim": 1536,
        "depth": 40,
        "num_heads": 24,
        "init_values": 1e-05,
        "mlp_ratio": 5.33334,
        "mlp_layer": functools.partial(timm.layers.mlp.GluMlp, act_layer=torch.nn.SiLU, gate_last=False),
        "act_layer": torch.nn.SiLU,
        "reg_tokens": 4,
        "no_embed_class": True,
        "img_size": 224,
        "num_classes": 0,
        "in_chans": 3,
    }
    with torch.device("meta"):
        ref = timm.models.VisionTransformer(**params)
    ours = build_foundation_module("h-optimus-0", device="meta")
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}


# -- loading --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TIMM_ENTRIES)
def test_load_roundtrip_depth1(name, tmp_path):
    cfg = FOUNDATION_MODELS[name]
    small = {"depth": 1}
    state = _random_state(build_foundation_module(name, device="meta", **small))
    st = tmp_path / "weights.safetensors"
    save_file(state, str(st))
    paths = [st]
    if name == "uni":  # the container/prefix path once: a weights-only .pth with module. prefixes
        pth = tmp_path / "checkpoint.pth"
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, pth)
        paths.append(pth)
    for path in paths:
        bb = create_foundation(name, weights=path, _overrides=small)
        loaded = bb.module.state_dict()
        assert loaded.keys() == state.keys()
        assert all(torch.equal(loaded[k], state[k]) for k in state)
        assert all(p.dtype == torch.float32 and not p.is_meta for p in bb.module.parameters())
        assert bb.source == str(path) and bb.sha256 == file_sha256(path)
        assert bb.params()["weights_sha256"] == bb.sha256
        out = bb.embed(_patches(), device="cpu")
        assert out.shape == (2, cfg.dim) and out.dtype == np.float32 and np.isfinite(out).all()


def test_load_state_dict_argument():
    small = {"depth": 1}
    state = _random_state(build_foundation_module("uni", device="meta", **small))
    bb = create_foundation("uni", weights={"model": state}, _overrides=small)
    assert torch.equal(bb.module.state_dict()["pos_embed"], state["pos_embed"])
    assert "state dict" in bb.source and bb.sha256 is None


def test_mismatching_weights_list_keys(tmp_path):
    state = _random_state(build_foundation_module("uni", device="meta", depth=1))
    state.pop("blocks.0.ls1.gamma")
    state["blocks.0.extra.weight"] = torch.zeros(3)
    state["pos_embed"] = torch.zeros(1, 10, 1024)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(ValueError, match="do not fit") as err:
        create_foundation("uni", weights=path, _overrides={"depth": 1})
    msg = str(err.value)
    assert "blocks.0.ls1.gamma" in msg and "blocks.0.extra.weight" in msg and "pos_embed" in msg
    # weights of a 1-block model do not load into a 2-block one
    good = tmp_path / "good.safetensors"
    save_file(_random_state(build_foundation_module("uni", device="meta", depth=1)), str(good))
    with pytest.raises(ValueError, match=r"blocks\.1\."):
        create_foundation("uni", weights=good, _overrides={"depth": 2})


def test_load_weights_file_containers(tmp_path):
    t = {"w": torch.ones(2), "b": torch.zeros(1)}
    path = tmp_path / "dino.pth"
    torch.save({"teacher": {"backbone.w": t["w"], "backbone.b": t["b"], "head.mlp": torch.ones(1)}}, path)
    out = load_weights_file(path)
    assert set(out) == {"w", "b"} and torch.equal(out["w"], t["w"])
    path = tmp_path / "compiled.pt"
    torch.save({"model": {"_orig_mod.module.w": t["w"]}}, path)
    assert set(load_weights_file(path)) == {"w"}


def test_load_weights_file_rejects_pickles(tmp_path):
    import argparse

    path = tmp_path / "full.pth"
    torch.save({"state_dict": {"w": torch.ones(1)}, "args": argparse.Namespace(lr=1)}, path)
    with pytest.raises(ValueError, match="weights_only"):
        load_weights_file(path)
    with pytest.raises(FileNotFoundError):
        load_weights_file(tmp_path / "missing.safetensors")


# -- resolution -----------------------------------------------------------------------------------------


def test_offline_missing_weights_fail_fast():
    t0 = time.perf_counter()
    with pytest.raises(FileNotFoundError) as err:
        create_foundation("uni")
    assert time.perf_counter() - t0 < 5
    msg = str(err.value)
    for needle in ("weights=", "foundation_weights['uni']", "STPREDICT_WEIGHTS_DIR", "allow_download", "Hugging Face"):
        assert needle in msg, needle
    assert str(settings.weights_dir / "uni") in msg
    with pytest.raises(FileNotFoundError, match="weights="):
        get_backbone("UNI")  # names are case-insensitive and routed to create_foundation


def test_weights_available_and_used_from_weights_dir(tmp_path):
    assert foundation_weights_available("uni") is None
    state = _random_state(build_foundation_module("uni", device="meta", depth=1))
    d = settings.weights_dir / "uni"
    d.mkdir(parents=True)
    save_file(state, str(d / "uni.safetensors"))
    assert foundation_weights_available("uni") == str(d / "uni.safetensors")
    bb = create_foundation("uni", _overrides={"depth": 1})
    assert bb.source == str(d / "uni.safetensors")
    # two candidates of the same kind are ambiguous: not guessed
    save_file(state, str(d / "other.safetensors"))
    assert foundation_weights_available("uni") is None
    with pytest.raises(ValueError, match="Several weights files"):
        create_foundation("uni", _overrides={"depth": 1})


def test_weights_available_from_settings(tmp_path):
    path = tmp_path / "somewhere" / "pytorch_model.bin"
    path.parent.mkdir()
    torch.save({"w": torch.ones(1)}, path)
    settings.foundation_weights["UNI"] = str(path)  # keys are case-insensitive
    assert foundation_weights_available("uni") == str(path)
    settings.foundation_weights["UNI"] = str(tmp_path / "nope.bin")
    assert foundation_weights_available("uni") is None  # misconfigured: warned, not used
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_foundation("uni")


def test_weights_from_hf_cache_any_case(tmp_path):
    """timm users cache UNI as MahmoodLab/uni, hf_hub_download users as MahmoodLab/UNI: both are found."""
    state = _random_state(build_foundation_module("uni", device="meta", depth=1))
    src = tmp_path / "src.bin"
    torch.save(state, src)
    cached = _fake_hf_cache("MahmoodLab/uni", "pytorch_model.bin", src)
    assert foundation_weights_available("uni") == str(cached)
    bb = create_foundation("uni", _overrides={"depth": 1})
    assert bb.source == str(cached) and torch.equal(bb.module.state_dict()["cls_token"], state["cls_token"])


def test_list_backbones(tmp_path):
    df = list_backbones()
    assert list(df["name"]) == list(FOUNDATION_MODELS)
    for col in ("hf_hub_id", "loader", "dim", "input_px", "um_per_px", "license", "gated", "extra", "citation"):
        assert col in df.columns
    assert not df["available"].any()
    d = settings.weights_dir / "virchow2"
    d.mkdir(parents=True)
    torch.save({"w": torch.ones(1)}, d / "pytorch_model.bin")
    df = list_backbones().set_index("name")
    assert df.loc["virchow2", "available"] and df.loc["virchow2", "local_weights"] == str(d / "pytorch_model.bin")
    assert df.loc["virchow2", "dim"] == 2560


def test_unknown_foundation_name():
    with pytest.raises(ValueError, match="uni2-h"):
        create_foundation("uni2")


# -- optional packages ----------------------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("conch") is not None, reason="conch is installed")
def test_conch_needs_its_package():
    with pytest.raises(ImportError, match=r"github\.com/mahmoodlab/CONCH"):
        create_foundation("conch")


@pytest.mark.skipif(importlib.util.find_spec("transformers") is not None, reason="transformers is installed")
@pytest.mark.parametrize("name", ["phikon", "phikon-v2"])
def test_phikon_needs_transformers(name):
    with pytest.raises(ImportError, match=r"stpredict\[phikon\]"):
        create_foundation(name)


# -- any timm model -------------------------------------------------------------------------------------


def test_create_timm_random():
    bb = create_timm("resnet18", pretrained=False)
    assert bb.dim == 512 and bb.patch_px == 224 and bb.source == RANDOM_SOURCE
    assert bb.embed(_patches(), device="cpu").shape == (2, 512)
    assert get_backbone("resnet18", pretrained=False).dim == 512


def test_create_timm_weights_file(tmp_path):
    full = timm.create_model("resnet18", pretrained=False)  # with its 1000-class head
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": full.state_dict()}, path)
    bb = create_timm("resnet18", weights=path)
    loaded = bb.module.state_dict()
    assert all(torch.equal(v, full.state_dict()[k]) for k, v in loaded.items())
    assert bb.source == str(path) and bb.sha256 == file_sha256(path)
    broken = {k: v for k, v in full.state_dict().items() if not k.startswith("layer4.")}
    with pytest.raises(ValueError, match=r"layer4\."):
        create_timm("resnet18", weights=broken)


def test_create_timm_offline_fails_fast():
    t0 = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="weights=PATH"):
        create_timm("resnet18")
    with pytest.raises(FileNotFoundError, match="config.json"):
        create_timm("hf-hub:timm/resnet18.a1_in1k")
    assert time.perf_counter() - t0 < 5


def test_create_timm_from_local_caches(tmp_path):
    pcfg = timm.models.get_pretrained_cfg("resnet18")
    ref = timm.create_model("resnet18", pretrained=False)
    src = tmp_path / "model.safetensors"
    save_file(ref.state_dict(), str(src))
    cached = _fake_hf_cache(pcfg.hf_hub_id, "model.safetensors", src)
    bb = create_timm("resnet18")
    assert bb.source == str(cached)
    assert torch.equal(bb.module.state_dict()["conv1.weight"], ref.state_dict()["conv1.weight"])


def test_create_timm_hub_id_from_local_cache(tmp_path):
    import json

    repo = "someorg/tiny-resnet"
    cfg = {
        "architecture": "resnet18",
        "num_classes": 7,
        "pretrained_cfg": {"input_size": [3, 160, 160], "mean": [0.5] * 3, "std": [0.25] * 3, "classifier": "fc"},
    }
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    ref = timm.create_model("resnet18", pretrained=False, num_classes=7)
    save_file(ref.state_dict(), str(tmp_path / "model.safetensors"))
    _fake_hf_cache(repo, "config.json", tmp_path / "config.json")
    cached = _fake_hf_cache(repo, "model.safetensors", tmp_path / "model.safetensors")
    bb = create_timm(f"hf-hub:{repo}")
    assert bb.name == "tiny-resnet" and bb.patch_px == 160 and bb.mean == (0.5, 0.5, 0.5)
    assert bb.source == str(cached) and bb.dim == 512
    assert torch.equal(bb.module.state_dict()["conv1.weight"], ref.state_dict()["conv1.weight"])


def test_download_allowed_but_offline_fails_fast(monkeypatch):
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        pytest.skip("huggingface_hub was imported without HF_HUB_OFFLINE=1: this test would go online")
    monkeypatch.setattr(settings, "allow_download", True)
    t0 = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="no connection"):
        create_foundation("uni")
    assert time.perf_counter() - t0 < 5


def test_create_timm_unknown_name():
    with pytest.raises(ValueError, match="resnet18"):
        create_timm("resnet_18")
    with pytest.raises(ValueError, match="Close matches"):
        get_backbone("vit_smal_patch16_224")


# -- import cost ----------------------------------------------------------------------------------------


def test_import_does_not_import_torch(tmp_path):
    code = (
        "import sys\n"
        "from stpredict.models import backbones as f\n"
        "assert f.foundation_weights_available('uni') is None\n"
        "f.list_backbones()\n"
        "assert 'torch' not in sys.modules and 'timm' not in sys.modules, 'torch imported'\n"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"),
        "STPREDICT_WEIGHTS_DIR": str(tmp_path / "w"),
    }
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
