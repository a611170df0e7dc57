"""The backbone factory (names, misspellings, the table) and the one trunk loader used by every predictor."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from safetensors.torch import save_file  # noqa: E402

from stpredict._settings import settings  # noqa: E402
from stpredict.models import STNet, get_backbone, list_backbones, pixnet  # noqa: E402
from stpredict.models._pixnet_net import build_network  # noqa: E402
from stpredict.models.backbones import FOUNDATION_MODELS, load_trunk_weights  # noqa: E402
from stpredict.models.backbones import _timm as timm_backbones  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """Empty weights dir and HF cache; downloads off."""
    monkeypatch.setattr(settings, "weights_dir", tmp_path / "weights")
    monkeypatch.setattr(settings, "foundation_weights", {})
    monkeypatch.setattr(settings, "allow_download", False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _random(module) -> dict:
    gen = torch.Generator().manual_seed(0)
    return {
        k: torch.randn(v.shape, generator=gen) if v.is_floating_point() else v for k, v in module.state_dict().items()
    }


# -- names ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("typo", "meant"), [("handcraftd", "handcrafted"), ("unii", "uni"), ("Virchow", "virchow2")])
def test_misspelt_backbone_names_suggest_close_matches_before_timm(monkeypatch, typo, meant):
    def no_timm(*args, **kwargs):
        pytest.fail("timm was asked about a misspelt built-in name")

    monkeypatch.setattr(timm_backbones, "create_timm", no_timm)
    with pytest.raises(ValueError, match=rf"Did you mean '{meant}'") as err:
        get_backbone(typo)
    assert "any timm model name" in str(err.value)


def test_timm_names_are_not_taken_for_misspellings():
    assert get_backbone("resnet18", pretrained=False).dim == 512
    assert get_backbone("HandCrafted").name == "handcrafted"


def test_list_backbones_kinds():
    df = list_backbones()
    assert list(df["kind"]) == ["handcrafted", *["foundation"] * len(FOUNDATION_MODELS), "timm"]
    assert list(df["name"])[: 1 + len(FOUNDATION_MODELS)] == ["handcrafted", *FOUNDATION_MODELS]
    for col in ("hf_hub_id", "loader", "dim", "input_px", "um_per_px", "license", "gated", "extra", "citation"):
        assert col in df.columns
    hand = df.iloc[0]
    assert hand["available"] and hand["dim"] == 54 and hand["local_weights"] == ""
    assert not df.loc[df["kind"] == "foundation", "available"].any()  # no weights offline
    timm_row = df.iloc[-1]
    assert "timm.list_models()" in timm_row["architecture"] and "allow_download" in timm_row["notes"]


# -- the one loader ---------------------------------------------------------------------------------------


def test_loader_drops_classifier_heads_and_keeps_the_model_head():
    full = timm.create_model("resnet18", pretrained=False)  # 1000-class head
    state = _random(full)
    net = timm.create_model("resnet18", pretrained=False, num_classes=3)  # STNet-style gene head
    head = net.fc.weight.detach().clone()
    load_trunk_weights(net, state, what="resnet18 from test")
    assert torch.equal(net.conv1.weight, state["conv1.weight"])
    assert torch.equal(net.fc.weight, head)  # not loaded: the predictor trains it


def test_loader_is_strict_about_everything_but_heads():
    state = _random(timm.create_model("resnet18", pretrained=False))
    state.pop("layer4.1.bn2.weight")
    state["layer9.weight"] = torch.zeros(1)
    net = timm.create_model("resnet18", pretrained=False, num_classes=0)
    with pytest.raises(ValueError, match="do not fit") as err:
        load_trunk_weights(net, state, what="resnet18 from /some/file.pth")
    msg = str(err.value)
    assert "/some/file.pth" in msg and "1 missing keys, 1 unexpected keys" in msg
    assert "layer4.1.bn2.weight" in msg and "layer9.weight" in msg


def test_loader_features_only_renames_and_ignores_the_dropped_layers():
    full = timm.create_model("convnext_atto", pretrained=False)
    state = _random(full)
    enc = timm.create_model("convnext_atto", pretrained=False, features_only=True)
    load_trunk_weights(enc, state, what="convnext_atto", features_only=True)
    assert torch.equal(enc.state_dict()["stages_0.blocks.0.conv_dw.weight"], state["stages.0.blocks.0.conv_dw.weight"])
    state.pop("stages.3.blocks.0.conv_dw.weight")
    with pytest.raises(ValueError, match=r"1 missing keys.*stages_3\.blocks\.0\.conv_dw\.weight"):
        load_trunk_weights(timm.create_model("convnext_atto", features_only=True), state, what="x", features_only=True)


# -- the predictors go through it -------------------------------------------------------------------------


def test_stnet_loads_trunk_weights(tmp_path):
    state = _random(timm.create_model("resnet18", pretrained=False))
    path = tmp_path / "resnet18.safetensors"
    save_file(state, str(path))
    net = STNet(trunk="resnet18", weights=path)._build(4, load=True)
    assert torch.equal(net.layer1[0].conv1.weight, state["layer1.0.conv1.weight"]) and net.fc.out_features == 4
    save_file({k: v for k, v in state.items() if not k.startswith("layer4.")}, str(path))
    with pytest.raises(ValueError, match=r"resnet18 from .*resnet18\.safetensors.*layer4\."):
        STNet(trunk="resnet18", weights=path)._build(4, load=True)


def test_pixnet_loads_encoder_weights(tmp_path):
    state = _random(timm.create_model("efficientnet_b0", pretrained=False))  # bn2/conv_head: not in the encoder
    path = tmp_path / "effnet.safetensors"
    save_file(state, str(path))
    model = pixnet.PixNet(encoder="efficientnet_b0", weights=path)
    net = build_network("efficientnet_b0", 3, 16, 4)
    model._load_encoder(net)
    assert torch.equal(net.encoder.state_dict()["conv_stem.weight"], state["conv_stem.weight"])
    save_file({k: v for k, v in state.items() if not k.startswith("blocks.6.")}, str(path))
    with pytest.raises(ValueError, match=r"encoder efficientnet_b0 from .*missing keys"):
        model._load_encoder(build_network("efficientnet_b0", 3, 16, 4))
