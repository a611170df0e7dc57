"""Building the foundation models of the table: timm architectures, CONCH's image tower, transformers models.

Importing this module imports neither torch nor timm.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..._logging import get_logger
from ..._settings import settings
from ._base import TorchBackbone
from ._lookup import download, locate, not_found_message
from ._table import _Ref, get_foundation_cfg
from ._weights import RANDOM_SOURCE, clean_state_dict, file_sha256, load_trunk_weights, load_weights_file

if TYPE_CHECKING:
    import os

    import torch

    from ._table import FoundationModelCfg

__all__ = ["build_foundation_module", "create_foundation"]

logger = get_logger(__name__)


def _require(module: str, cfg: FoundationModelCfg) -> Any:
    """Import ``module`` (``"transformers"``, ``"conch.open_clip_custom"``) or raise an ImportError saying how to."""
    if cfg.loader == "conch":
        how = "pip install git+https://github.com/mahmoodlab/CONCH.git (CONCH is not on PyPI)"
    else:
        how = "pip install 'stpredict[phikon]' (or pip install transformers)"
    msg = f"Backbone {cfg.name!r} needs the {module.split('.')[0]!r} package: {how}."
    if importlib.util.find_spec(module.split(".")[0]) is None:
        raise ImportError(msg, name=module)
    try:
        return importlib.import_module(module)
    except ImportError as err:  # e.g. an unrelated package of the same name
        raise ImportError(msg, name=module) from err


def build_foundation_module(name: str, *, device: Any = None, **overrides: Any) -> torch.nn.Module:
    """The architecture of a timm-loaded foundation model with random weights.

    Parameters
    ----------
    name
        A timm entry of :data:`FOUNDATION_MODELS` (``"uni"``, ``"uni2-h"``, ``"virchow2"``, ``"h-optimus-0"``).
    device
        Where to build; ``"meta"`` checks the architecture without allocating memory.
    **overrides
        Extra ``timm.create_model`` arguments (e.g. ``depth=1``).

    Returns
    -------
    The ``torch.nn.Module``.
    """
    import timm
    import torch

    cfg = get_foundation_cfg(name)
    if cfg.loader != "timm":
        msg = f"{cfg.name!r} is not a timm model (loader {cfg.loader!r})."
        raise ValueError(msg)
    kwargs = {k: (v.resolve() if isinstance(v, _Ref) else v) for k, v in cfg.kwargs.items()}
    kwargs.update(overrides)
    if device is None:
        return timm.create_model(cfg.architecture, pretrained=False, **kwargs)
    with torch.device(device):
        return timm.create_model(cfg.architecture, pretrained=False, **kwargs)


def _build_timm(cfg: FoundationModelCfg, state: Mapping[str, torch.Tensor] | None, overrides: Mapping[str, Any]):
    if state is None:
        return build_foundation_module(cfg.name, **overrides)
    what = f"{cfg.name} ({cfg.architecture})"
    # build on the meta device and assign the loaded tensors: no random init of weights that are replaced anyway
    model = load_trunk_weights(build_foundation_module(cfg.name, device="meta", **overrides), state, what=what)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):  # a buffer the state dict lacks
        model = load_trunk_weights(build_foundation_module(cfg.name, **overrides), state, what=what)
    return model


def _conch_image_encoder(coca: Any) -> torch.nn.Module:
    import torch

    class ConchImageEncoder(torch.nn.Module):
        """CONCH image embedding: ``encode_image(x, proj_contrast=False, normalize=False)``."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model.encode_image(x, proj_contrast=False, normalize=False)

    return ConchImageEncoder(coca)


def _build_conch(cfg: FoundationModelCfg, state: Mapping[str, torch.Tensor] | None) -> torch.nn.Module:
    import json

    _require("conch.open_clip_custom", cfg)
    from conch.open_clip_custom import coca_model, factory

    model_cfg = json.loads((Path(factory.CFG_DIR) / f"{cfg.architecture}.json").read_text())
    model_cfg.pop("custom_text", None)
    coca = coca_model.CoCa(**model_cfg)
    if state is not None:
        state = dict(state)
        if "visual.trunk.pos_embed" in state:
            coca_model.resize_pos_embed(state, coca)
        # CONCH's own loader is not strict; be strict about the image tower, which is all that is used.
        missing, unexpected = coca.load_state_dict(state, strict=False)
        if bad := [k for k in missing if k.startswith("visual.")]:
            msg = f"conch: the weights lack image-tower keys {bad[:6]} ({len(bad)} in all): not a CONCH checkpoint?"
            raise ValueError(msg)
        if missing or unexpected:
            logger.debug("conch: %d missing / %d unexpected non-image keys", len(missing), len(unexpected))
    return _conch_image_encoder(coca)


def _build_transformers(cfg: FoundationModelCfg, path: Path | None, state: Mapping[str, Any] | None):
    transformers = _require("transformers", cfg)
    cls = getattr(transformers, cfg.architecture)
    extra = {"add_pooling_layer": False} if cfg.architecture == "ViTModel" else {}
    if path is None and state is None:
        config = transformers.AutoConfig.for_model(**cfg.hf_config)
        return transformers.AutoModel.from_config(config) if cls is transformers.AutoModel else cls(config, **extra)
    src: Path | None = None
    if path is not None and path.is_dir():
        src = path
    elif path is not None:
        src = path.parent if (path.parent / "config.json").is_file() else None
        state = load_weights_file(path) if state is None else state
    config = None if src is not None else transformers.AutoConfig.for_model(**cfg.hf_config)
    model, info = cls.from_pretrained(
        src,
        config=config,
        state_dict=dict(state) if state is not None else None,
        local_files_only=True,
        output_loading_info=True,
        **extra,
    )
    if missing := [*info.get("missing_keys", []), *info.get("mismatched_keys", [])]:
        msg = f"{cfg.name}: the weights do not fit the model; missing or mis-shaped keys: {list(missing)[:6]}"
        raise ValueError(msg)
    return model


def create_foundation(
    name: str,
    *,
    weights: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    pretrained: bool = True,
    _overrides: Mapping[str, Any] | None = None,
) -> TorchBackbone:
    """Build a pathology foundation model of :data:`FOUNDATION_MODELS` with local weights.

    Weights are taken from, in order: ``weights``; :attr:`stpredict.settings.foundation_weights` ``[name]``;
    ``settings.weights_dir/<name>/`` (one ``.safetensors``, ``pytorch_model.bin``, ``.bin``, ``.pth`` or ``.pt``
    file; env ``STPREDICT_WEIGHTS_DIR``); the local Hugging Face cache; and a download only when
    :attr:`stpredict.settings.allow_download` is set. timm-built models load through
    :func:`~stpredict.models.backbones.load_trunk_weights` (strict but for classifier heads); CONCH is strict about
    its image tower; transformers models load with ``from_pretrained`` and fail on missing or mis-shaped keys.

    Parameters
    ----------
    name
        ``"uni"``, ``"uni2-h"``, ``"virchow2"``, ``"h-optimus-0"``, ``"conch"``, ``"phikon"`` or ``"phikon-v2"``.
    weights
        A weights file (or a directory holding one; for transformers models a directory with ``config.json``), or
        a state dict. Always loaded when given.
    pretrained
        ``False`` builds random weights (for tests) unless ``weights`` is given; the backbone's ``source`` says so.
    _overrides
        Extra ``timm.create_model`` arguments (e.g. ``{"depth": 1}`` in tests); timm models only.

    Returns
    -------
    A :class:`~stpredict.models.TorchBackbone`; ``source`` is the weights path and ``sha256`` its hash.

    Raises
    ------
    FileNotFoundError
        No local weights and downloads off, listing every place looked in and the options.
    ImportError
        ``conch`` or ``transformers`` is missing for the models that need them.
    ValueError
        Unknown name, or weights that do not fit (missing/unexpected keys are listed).
    """
    cfg = get_foundation_cfg(name)
    if cfg.loader != "timm":
        _require("conch.open_clip_custom" if cfg.loader == "conch" else "transformers", cfg)
    overrides = dict(_overrides or {})
    if overrides and cfg.loader != "timm":
        msg = f"_overrides apply to timm models only, not {cfg.name!r} ({cfg.loader})."
        raise ValueError(msg)

    path: Path | None = None
    state: Mapping[str, Any] | None = None
    source, sha = RANDOM_SOURCE, None
    if isinstance(weights, Mapping):
        state, source = clean_state_dict(dict(weights), what="weights="), "state dict passed as weights="
    elif weights is not None or pretrained:
        path, origin, tried = locate(cfg, weights)
        if path is None:
            if not settings.allow_download:
                raise FileNotFoundError(not_found_message(cfg, tried))
            if cfg.loader == "transformers":
                download(cfg.hf_hub_id, ("config.json",), gated=cfg.gated)
                path, origin = download(cfg.hf_hub_id, cfg.weight_files, gated=cfg.gated).parent, "download"
            else:
                path, origin = download(cfg.hf_hub_id, cfg.weight_files, gated=cfg.gated), "download"
        logger.info("%s: weights from %s (%s).", cfg.name, path, origin)
        source = str(path)
        files = [path] if path.is_file() else [path / f for f in cfg.weight_files if (path / f).is_file()]
        sha = file_sha256(files[0]) if files else None
        if cfg.loader != "transformers":
            state = load_weights_file(path)

    if cfg.loader == "timm":
        module = _build_timm(cfg, state, overrides)
    elif cfg.loader == "conch":
        module = _build_conch(cfg, state)
    else:
        module = _build_transformers(cfg, path, state)
    dim = None if {"embed_dim", "num_classes", "global_pool"} & set(overrides) else cfg.dim
    backbone = TorchBackbone(
        module,
        name=cfg.name,
        patch_px=cfg.input_px,
        mean=cfg.mean,
        std=cfg.std,
        dim=dim,
        pool=cfg.pool,
        num_prefix_tokens=cfg.num_prefix_tokens,
        source=source,
        sha256=sha,
    )
    backbone.default_patch_um = cfg.patch_um
    return backbone
