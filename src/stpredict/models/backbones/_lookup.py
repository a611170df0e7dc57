"""Where weights are: local paths, ``settings.weights_dir``, the Hugging Face cache, and a download guarded by settings.

Resolution for the foundation models of :data:`~stpredict.models.backbones.FOUNDATION_MODELS`, in order (timm's
local-first order, adapted):

1. an explicit ``weights=`` path (or state dict);
2. ``stp.settings.foundation_weights[name]``;
3. ``stp.settings.weights_dir / name /`` (one ``*.safetensors``, ``pytorch_model.bin``, ``*.bin``, ``*.pth`` or
   ``*.pt``), env ``STPREDICT_WEIGHTS_DIR``;
4. the local Hugging Face cache of the model's hub repository (no network access);
5. a hub download, only when ``stp.settings.allow_download`` is set.

Otherwise a :class:`FileNotFoundError` lists every place tried and the options, at once (no network retries).
Importing this module imports neither torch nor huggingface_hub.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..._logging import get_logger
from ..._settings import settings
from ._table import FOUNDATION_MODELS, TIMM_FILES

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._table import FoundationModelCfg, Loader

__all__ = ["download", "find_in_dir", "foundation_weights_available", "hf_cache_dir", "hf_cached", "locate"]

logger = get_logger(__name__)


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at call time (huggingface_hub reads it at import)."""
    env = os.environ
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(var):
            return Path(env[var]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    base = Path(env["XDG_CACHE_HOME"]).expanduser() if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def hf_cached(repo_id: str, filenames: tuple[str, ...], cache_dir: Path) -> Path | None:
    """First of ``filenames`` in the local cache of ``repo_id`` (in any letter case of the id); no network."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - timm depends on huggingface_hub
        return None
    if not cache_dir.is_dir():
        return None
    folder = "models--" + repo_id.replace("/", "--")
    repos = [repo_id]
    repos += [
        e.name[len("models--") :].replace("--", "/")
        for e in sorted(cache_dir.iterdir())
        if e.name.lower() == folder.lower() and e.name != folder
    ]
    for repo in repos:
        for fn in filenames:
            try:
                hit = try_to_load_from_cache(repo, fn, cache_dir=cache_dir)
            except ValueError:  # HFValidationError: not a valid repo id
                return None
            if isinstance(hit, str) and Path(hit).is_file():
                return Path(hit)
    return None


def find_in_dir(d: Path, *, loader: Loader = "timm") -> Path | None:
    """The weights file in ``d`` (for transformers: ``d`` itself when it holds config.json and weights)."""
    if not d.is_dir():
        return None
    if loader == "transformers":
        has_weights = any(d.glob("*.safetensors")) or any(d.glob("*.bin"))
        return d if (d / "config.json").is_file() and has_weights else None
    groups = (
        sorted(d.glob("*.safetensors")),
        [d / "pytorch_model.bin"],
        sorted(d.glob("*.bin")),
        sorted([*d.glob("*.pth"), *d.glob("*.pt")]),
    )
    for group in groups:
        files = [f for f in group if f.is_file()]
        if len(files) == 1:
            return files[0]
        if len(files) > 1:
            msg = (
                f"Several weights files in {d}: {[f.name for f in files]}. Keep one, or pass weights=PATH "
                "(or set stp.settings.foundation_weights[name] = PATH)."
            )
            raise ValueError(msg)
    return None


def _use_path(p: Path, cfg: FoundationModelCfg, label: str) -> Path:
    if not p.exists():
        msg = f"{label} = {str(p)!r} does not exist."
        raise FileNotFoundError(msg)
    if p.is_dir():
        found = find_in_dir(p, loader=cfg.loader)
        if found is None:
            need = "config.json and a weights file" if cfg.loader == "transformers" else "a weights file"
            msg = f"{label} = {str(p)!r} is a directory without {need} (.safetensors, .bin, .pth or .pt)."
            raise FileNotFoundError(msg)
        return found
    return p


def locate(cfg: FoundationModelCfg, weights: Any = None) -> tuple[Path | None, str, list[str]]:
    """``(path, origin, tried)``: the local weights of ``cfg`` in resolution order, or ``None``."""
    tried: list[str] = []
    if weights is not None:
        return _use_path(Path(weights).expanduser(), cfg, "weights"), "weights=", tried
    configured = {str(k).lower(): v for k, v in settings.foundation_weights.items()}.get(cfg.name)
    if configured:
        label = f"stp.settings.foundation_weights[{cfg.name!r}]"
        return _use_path(Path(configured).expanduser(), cfg, label), "settings.foundation_weights", tried
    tried.append(f"stp.settings.foundation_weights[{cfg.name!r}]: not set")
    d = Path(settings.weights_dir) / cfg.name
    found = find_in_dir(d, loader=cfg.loader)
    if found is not None:
        return found, "settings.weights_dir", tried
    what = "config.json + weights" if cfg.loader == "transformers" else "*.safetensors, pytorch_model.bin, *.pth, *.pt"
    tried.append(f"{d}/ ({what}): {'nothing found' if d.is_dir() else 'no such directory'}")
    cache = hf_cache_dir()
    files = ("config.json",) if cfg.loader == "transformers" else cfg.weight_files
    hit = hf_cached(cfg.hf_hub_id, files, cache)
    if hit is not None and cfg.loader == "transformers":
        hit = hit.parent if find_in_dir(hit.parent, loader="transformers") else None
    if hit is not None:
        return hit, "Hugging Face cache", tried
    tried.append(f"Hugging Face cache {cache}: {cfg.hf_hub_id} {'/'.join(files)} not cached")
    return None, "", tried


def not_found_message(cfg: FoundationModelCfg, tried: list[str]) -> str:
    access = (
        f"request access at {cfg.url}, log in (`hf auth login` or HF_TOKEN), then "
        if cfg.gated
        else f"weights at {cfg.url}; "
    )
    return (
        f"No local weights for {cfg.name!r} ({cfg.hf_hub_id}, license {cfg.license}). Looked in:\n"
        + "".join(f"  - {t}\n" for t in tried)
        + "Downloads are off (stp.settings.allow_download is False). Provide the weights with one of:\n"
        "  - weights=PATH (a .safetensors, pytorch_model.bin or .pth file) in the call;\n"
        f"  - stp.settings.foundation_weights[{cfg.name!r}] = PATH;\n"
        f"  - a file in $STPREDICT_WEIGHTS_DIR/{cfg.name}/ (now {Path(settings.weights_dir) / cfg.name});\n"
        f"  - online: {access}set stp.settings.allow_download = True.\n"
        "For a weight-free backbone use backbone='handcrafted'."
    )


def download(repo_id: str, filenames: tuple[str, ...], *, gated: bool) -> Path:
    """Fetch the first of ``filenames`` that exists in ``repo_id`` (only called when downloads are allowed)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    for fn in filenames:
        try:
            return Path(hf_hub_download(repo_id, fn))
        except GatedRepoError as err:
            msg = (
                f"{repo_id} is gated: request access at https://huggingface.co/{repo_id} and log in "
                "(`hf auth login` or HF_TOKEN), or pass local weights with weights=PATH."
            )
            raise PermissionError(msg) from err
        except RepositoryNotFoundError as err:
            hint = " (gated repositories look missing without a token)" if gated else ""
            msg = f"Repository {repo_id} was not found on the Hugging Face hub{hint}."
            raise FileNotFoundError(msg) from err
        except (LocalEntryNotFoundError, ConnectionError) as err:  # before EntryNotFoundError, its base class
            msg = (
                f"Could not download {fn} from {repo_id}: no connection, or HF_HUB_OFFLINE is set. "
                "Pass local weights with weights=PATH."
            )
            raise FileNotFoundError(msg) from err
        except EntryNotFoundError:  # not in the repository: try the next file name
            continue
    msg = f"None of {list(filenames)} exists in {repo_id}."
    raise FileNotFoundError(msg)


def foundation_weights_available(name: str) -> str | None:
    """The local weights :func:`create_foundation` would use for ``name``, without building the model.

    Looks in :attr:`stpredict.settings.foundation_weights`, ``settings.weights_dir/<name>/`` and the Hugging Face
    cache; never touches the network and never imports torch.

    Parameters
    ----------
    name
        A key of :data:`FOUNDATION_MODELS` (e.g. ``"uni"``).

    Returns
    -------
    The path (a file; for transformers models, a directory), or ``None`` when nothing usable is found locally.
    """
    cfg = FOUNDATION_MODELS.get(str(name).lower())
    if cfg is None:
        return None
    try:
        path, _, _ = locate(cfg)
    except (FileNotFoundError, ValueError) as err:
        logger.warning("Weights for %r are misconfigured: %s", cfg.name, err)
        return None
    return str(path) if path is not None else None


def timm_zoo_local(spec: str, pcfg: Mapping[str, Any]) -> tuple[Path | None, list[str]]:
    """Local copies of timm's pretrained weights for ``spec``: weights_dir, pretrained_cfg file, HF and torch caches."""
    from urllib.parse import urlparse

    import torch

    tried: list[str] = []
    d = Path(settings.weights_dir) / spec
    if (found := find_in_dir(d)) is not None:
        return found, tried
    tried.append(f"{d}/: {'nothing found' if d.is_dir() else 'no such directory'}")
    if pcfg.get("file") and Path(pcfg["file"]).is_file():
        return Path(pcfg["file"]), tried
    if pcfg.get("hf_hub_id"):
        cache = hf_cache_dir()
        files = tuple(dict.fromkeys([*filter(None, [pcfg.get("hf_hub_filename")]), *TIMM_FILES]))
        if (found := hf_cached(pcfg["hf_hub_id"], files, cache)) is not None:
            return found, tried
        tried.append(f"Hugging Face cache {cache}: {pcfg['hf_hub_id']} {'/'.join(files)} not cached")
    if pcfg.get("url"):
        hub_file = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(pcfg["url"]).path).name
        if hub_file.is_file():
            return hub_file, tried
        tried.append(f"torch hub cache {hub_file}: not found")
    return None, tried
