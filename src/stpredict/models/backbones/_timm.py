"""Any timm model as a backbone: a registry name (with a pretrained tag), ``hf-hub:<org>/<name>`` or ``local-dir:``.

Pretrained weights come from local copies only (``settings.weights_dir``, the Hugging Face cache, torch hub's
checkpoint cache) unless :attr:`stpredict.settings.allow_download` is set. Importing this module imports neither
torch nor timm.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..._args import close_matches
from ..._settings import settings
from ._base import TorchBackbone
from ._lookup import download, find_in_dir, hf_cache_dir, hf_cached, timm_zoo_local
from ._table import FOUNDATION_MODELS, TIMM_FILES
from ._weights import RANDOM_SOURCE, clean_state_dict, file_sha256, load_trunk_weights, load_weights_file

if TYPE_CHECKING:
    import os

    import torch

__all__ = ["create_timm"]


def _timm_backbone(model: torch.nn.Module, *, name: str, source: str, sha: str | None) -> TorchBackbone:
    from timm.data import resolve_model_data_config

    data = resolve_model_data_config(model)
    return TorchBackbone(
        model,
        name=name,
        patch_px=int(data["input_size"][-1]),
        mean=tuple(data["mean"]),
        std=tuple(data["std"]),
        pool="cls",
        num_prefix_tokens=int(getattr(model, "num_prefix_tokens", 1)),
        source=source,
        sha256=sha,
    )


def _unknown_timm(spec: str) -> ValueError:
    import timm

    pool = timm.list_pretrained() if "." in spec else timm.list_models()
    close = close_matches(spec, [*pool, *FOUNDATION_MODELS], n=5, cutoff=0.6)
    hint = f" Close matches: {close}." if close else ""
    msg = (
        f"Unknown backbone {spec!r}: not a foundation model of list_backbones() nor a timm model.{hint} "
        "Use 'hf-hub:<org>/<name>' for timm models on the Hugging Face hub."
    )
    return ValueError(msg)


def _timm_not_found(spec: str, tried: list[str]) -> FileNotFoundError:
    msg = (
        f"No local pretrained weights for timm model {spec!r}. Looked in:\n"
        + "".join(f"  - {t}\n" for t in tried)
        + "Downloads are off (stp.settings.allow_download is False). Pass weights=PATH, put the weights where "
        "listed above (settings.weights_dir, env STPREDICT_WEIGHTS_DIR), set stp.settings.allow_download = True "
        "when online, or use pretrained=False for random weights."
    )
    return FileNotFoundError(msg)


def _timm_zoo(spec: str, *, load: bool, kwargs: dict[str, Any]) -> tuple[torch.nn.Module, str, str | None]:
    """A timm registry model; with ``load``, timm's pretrained weights from a local copy (or a download)."""
    import timm

    if not timm.is_model(timm.models.split_model_name_tag(spec)[0]):
        raise _unknown_timm(spec)
    if not load:
        return timm.create_model(spec, pretrained=False, **kwargs), RANDOM_SOURCE, None
    pcfg = timm.models.get_pretrained_cfg(spec)
    pcfg = pcfg.to_dict() if pcfg is not None else {}
    found, tried = timm_zoo_local(spec, pcfg)
    if found is not None:  # timm knows its own formats (checkpoint filters, custom loaders): let it load the file
        try:
            model = timm.create_model(spec, pretrained=True, pretrained_cfg_overlay={"file": str(found)}, **kwargs)
        except RuntimeError as err:
            msg = f"Weights {str(found)!r} do not fit timm model {spec!r}: {err}"
            raise ValueError(msg) from err
        return model, str(found), file_sha256(found)
    if not any(pcfg.get(k) for k in ("hf_hub_id", "url", "file")):
        msg = f"timm has no pretrained weights for {spec!r}: pass weights=PATH, or pretrained=False."
        raise ValueError(msg)
    if not settings.allow_download:
        raise _timm_not_found(spec, tried)
    model = timm.create_model(spec, pretrained=True, **kwargs)
    return model, f"timm:{pcfg.get('hf_hub_id') or pcfg.get('url')}", None


def _timm_hub(repo: str, spec: str, *, load: bool, kwargs: dict[str, Any]) -> tuple[torch.nn.Module, str, str | None]:
    """A timm model on the Hugging Face hub, from the local cache (or ``weights_dir/<org>--<name>/``)."""
    import timm

    local_dir = Path(settings.weights_dir) / repo.replace("/", "--")
    cache = hf_cache_dir()
    config = hf_cached(repo, ("config.json",), cache)
    if config is None and (local_dir / "config.json").is_file():
        config = local_dir / "config.json"
    if config is None:
        if not settings.allow_download:
            tried = [f"Hugging Face cache {cache}: {repo} config.json not cached", f"{local_dir}/: no config.json"]
            raise _timm_not_found(spec, tried)
        return timm.create_model(spec, pretrained=load, **kwargs), (spec if load else RANDOM_SOURCE), None
    model = timm.create_model(f"local-dir:{config.parent}", pretrained=False, **kwargs)
    if not load:
        return model, RANDOM_SOURCE, None
    found = find_in_dir(config.parent) if config.parent == local_dir else hf_cached(repo, TIMM_FILES, cache)
    if found is None and settings.allow_download:
        found = download(repo, TIMM_FILES, gated=False)
    if found is None:
        raise _timm_not_found(spec, [f"{config.parent}: config.json but no weights file"])
    load_trunk_weights(model, load_weights_file(found), what=f"{spec} from {found}")
    return model, str(found), file_sha256(found)


def create_timm(
    name_or_hub_id: str,
    *,
    weights: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    pretrained: bool = True,
    **kwargs: Any,
) -> TorchBackbone:
    """Any timm model (``"resnet50"``, ``"vit_small_patch16_224.augreg_in21k"``) or ``"hf-hub:org/name"`` as a backbone.

    The model is built with ``num_classes=0`` (features out). Input size and mean/std come from its
    ``pretrained_cfg`` (``timm.data.resolve_model_data_config``).

    Parameters
    ----------
    name_or_hub_id
        A timm model name, optionally with a pretrained tag; ``"hf-hub:<org>/<name>"``; or ``"local-dir:<path>"``
        (a folder with timm's ``config.json`` and weights).
    weights
        A local weights file or state dict, loaded with :func:`~stpredict.models.backbones.load_trunk_weights`
        (classifier weights are dropped, the rest must fit exactly).
    pretrained
        Without ``weights``: timm's pretrained weights, from local copies only (``settings.weights_dir/<name>/``,
        for hub ids ``settings.weights_dir/<org>--<name>/``, the Hugging Face cache, torch hub's checkpoint cache)
        unless :attr:`stpredict.settings.allow_download` is set. ``False`` builds random weights.
    **kwargs
        More ``timm.create_model`` arguments.

    Returns
    -------
    A :class:`~stpredict.models.TorchBackbone`; ``source`` is the weights path and ``sha256`` its hash.

    Raises
    ------
    ValueError
        Unknown model name (with close matches), or weights that do not fit.
    FileNotFoundError
        Pretrained weights requested, none found locally and downloads off.
    """
    import timm

    spec = str(name_or_hub_id)
    kwargs.setdefault("num_classes", 0)
    load = pretrained and weights is None
    prefix, _, rest = spec.partition(":")
    if prefix.lower() in ("hf-hub", "hf_hub") and rest:
        name = rest.rsplit("/", 1)[-1].lower()
        model, source, sha = _timm_hub(rest, spec, load=load, kwargs=kwargs)
    elif prefix.lower() == "local-dir" and rest:
        name = Path(rest).name.lower()
        model = timm.create_model(spec, pretrained=load, **kwargs)
        source, sha = (rest if load else RANDOM_SOURCE), None
    else:
        name = spec
        model, source, sha = _timm_zoo(spec, load=load, kwargs=kwargs)
    if isinstance(weights, Mapping):
        source, sha = "state dict passed as weights=", None
        load_trunk_weights(model, clean_state_dict(dict(weights)), what=f"{spec} from {source}")
    elif weights is not None:
        source, sha = str(Path(weights).expanduser()), file_sha256(Path(weights).expanduser())
        load_trunk_weights(model, load_weights_file(weights), what=f"{spec} from {source}")
    return _timm_backbone(model, name=name, source=source, sha=sha)
