"""Weight files: reading a state dict from disk, its SHA-256, and the one loader every trunk goes through.

:func:`load_trunk_weights` is the only place where stpredict puts a state dict into a network (foundation
models built with timm, timm backbones, STNet's trunk, PixNet's encoder), so the strictness rules are written once,
here. (CONCH and the transformers models keep their own packages' loaders: see ``_builders``.)
Importing this module imports neither torch nor safetensors.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..._logging import get_logger

if TYPE_CHECKING:
    import os
    from collections.abc import Iterator, Sequence

    import torch

__all__ = ["RANDOM_SOURCE", "clean_state_dict", "file_sha256", "load_trunk_weights", "load_weights_file"]

logger = get_logger(__name__)

#: ``source`` recorded for random weights
RANDOM_SOURCE = "random init (pretrained=False): not pretrained weights"
#: containers unwrapped by :func:`load_weights_file`, in order
_CONTAINERS = ("state_dict", "model", "teacher", "model_state_dict", "module")
#: key prefixes stripped by :func:`load_weights_file` (DataParallel, torch.compile, DINO-style checkpoints)
_PREFIXES = ("module.", "_orig_mod.", "backbone.")

_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike[str], *, chunk: int = 2**22) -> str:
    """SHA-256 hex digest of a file, remembered per (path, size, mtime) so large checkpoints are hashed once."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with p.open("rb") as f:
            while block := f.read(chunk):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def clean_state_dict(obj: Any, *, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Unwrap ``state_dict``/``model``/``teacher`` containers and strip ``module.``/``backbone.`` prefixes."""
    import torch

    def is_state(d: Mapping) -> bool:
        return len(d) > 0 and all(isinstance(v, torch.Tensor) for v in d.values())

    while isinstance(obj, Mapping) and not is_state(obj):
        inner = next((obj[k] for k in _CONTAINERS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        msg = f"{what} holds a {type(obj).__name__}, not a state dict (a mapping of parameter names to tensors)."
        raise TypeError(msg)
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if dropped := [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]:
        logger.debug("%s: ignoring non-tensor entries %s", what, dropped[:5])
    if not state:
        msg = f"{what} holds no tensors (keys: {list(obj)[:8]})."
        raise ValueError(msg)
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            hits = [k for k in state if k.startswith(prefix)]
            if not hits:
                continue
            if prefix == "backbone.":  # DINO-style: keep the backbone, drop heads
                if len(hits) < len(state):
                    logger.debug("%s: keeping the %d 'backbone.' keys of %d", what, len(hits), len(state))
                state = {k[len(prefix) :]: state[k] for k in hits}
            else:
                state = {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state.items()}
            changed = True
    return state


def load_weights_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from a local weights file.

    ``.safetensors`` files are read with safetensors, anything else with
    ``torch.load(map_location="cpu", weights_only=True)`` (no pickled code is executed). ``state_dict``, ``model``,
    ``teacher``, ``model_state_dict`` and ``module`` containers are unwrapped and ``module.``, ``_orig_mod.`` and
    ``backbone.`` key prefixes are stripped (with ``backbone.``, only those keys are kept: DINO heads are dropped).

    Parameters
    ----------
    path
        A ``.safetensors``, ``.bin``, ``.pth`` or ``.pt`` file.

    Returns
    -------
    Parameter names → tensors on the CPU.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        msg = f"Weights file {str(p)!r} does not exist."
        raise FileNotFoundError(msg)
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj: Any = load_file(str(p), device="cpu")
    else:
        import pickle

        import torch

        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            msg = (
                f"{str(p)!r} cannot be read with torch.load(weights_only=True): it holds pickled Python objects "
                "besides tensors. Load it yourself in a trusted session and save its state dict "
                "(safetensors.torch.save_file or torch.save(model.state_dict(), ...))."
            )
            raise ValueError(msg) from err
    return clean_state_dict(obj, what=str(p))


# -- the one loader ------------------------------------------------------------------------------------


def _head_prefixes(model: torch.nn.Module, heads: Sequence[str] | None) -> tuple[str, ...]:
    """``heads``, or the ``classifier`` of the model's timm ``pretrained_cfg`` (``"fc"``, ``"head.fc"``...)."""
    if heads is None:
        cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
        heads = cfg.get("classifier") if isinstance(cfg, Mapping) else None
    heads = (heads,) if isinstance(heads, str) else tuple(heads or ())
    return tuple(h for h in heads if h)


def _full_network_names(key: str) -> Iterator[str]:
    """Names a key of a timm ``features_only`` wrapper has in the full network it was built from."""
    if key.startswith("model."):  # FeatureGetterNet (ViTs) keeps the network as .model
        yield key[len("model.") :]
    if m := re.match(r"^([^._]+(?:_[^._]+)*?)_(\d+)\.(.+)$", key):  # flattened nn.Sequential: stages_0 ← stages.0
        yield f"{m[1]}.{m[2]}.{m[3]}"


def _to_wrapper_names(own: Mapping[str, Any], state: Mapping[str, Any]) -> dict[str, Any]:
    """Rename the keys of a full network's ``state`` to those of a ``features_only`` wrapper with keys ``own``."""
    alias = {full: key for key in own if key not in state for full in _full_network_names(key)}
    return {(alias[k] if k not in own and k in alias else k): v for k, v in state.items()}


def load_trunk_weights(
    model: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    what: str,
    heads: Sequence[str] | None = None,
    features_only: bool = False,
) -> torch.nn.Module:
    """Load ``state`` into ``model`` under the one set of rules stpredict applies to every trunk.

    The rules:

    1. **Classifier heads are never loaded.** Weight keys under a head prefix (``heads``; by default the
       ``classifier`` of the model's timm ``pretrained_cfg``, e.g. ``fc`` or ``head.fc``) are dropped: a 1000-class
       ImageNet head has no place in a ``num_classes=0`` trunk nor in STNet's gene head. Head keys of the model
       keep their initial values (the predictor trains them).
    2. **Everything else is strict.** Every other key of the model must be in the weights with the same shape,
       and every other key of the weights must be in the model. Otherwise a :class:`ValueError` names ``what``
       (the file), counts the missing, unexpected and mis-shaped keys, and shows examples of each.
    3. **features_only** (PixNet's encoder only): ``model`` is a timm ``features_only`` wrapper of the network
       the weights were saved from, so it is a truncated copy of it by construction. Keys of the full network
       are renamed to the wrapper's (``stages.0.`` → ``stages_0.``, a ``model.`` prefix for ViTs), and weights
       of the layers the wrapper leaves out (the final norm, ``conv_head``, the head) are ignored, counted in a
       debug log. Missing keys still raise (rule 2): no part of the encoder silently keeps random weights.

    A module on the meta device gets the tensors assigned; floating-point parameters end up float32.

    Parameters
    ----------
    model
        The network (timm model, features-only encoder, or any ``torch.nn.Module``).
    state
        Parameter names → tensors, e.g. from :func:`load_weights_file`.
    what
        What is loaded, for messages: the model and the file (``"uni from /path/uni.safetensors"``).
    heads
        Key prefixes of classifier heads; ``None`` reads them from the model's ``pretrained_cfg``.
    features_only
        Rule 3: ``model`` is a timm ``features_only`` wrapper of the network the weights come from.

    Returns
    -------
    ``model``, with the weights loaded.
    """
    import torch

    prefixes = _head_prefixes(model, heads)

    def is_head(k: str) -> bool:
        return any(k == h or k.startswith(f"{h}.") for h in prefixes)

    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state = {k: v for k, v in state.items() if not is_head(k)}
    if features_only:
        state = _to_wrapper_names(expected, state)
        if extra := [k for k in state if k not in expected]:
            logger.debug(
                "%s: ignoring %d weights of layers the encoder leaves out, e.g. %s", what, len(extra), extra[:3]
            )
            state = {k: v for k, v in state.items() if k in expected}
    missing = [k for k in expected if k not in state and not is_head(k)]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: {tuple(state[k].shape)} in the weights, {expected[k]} in the model"
        for k in expected
        if k in state and tuple(getattr(state[k], "shape", ())) != expected[k]
    ]
    if missing or unexpected or shapes:
        msg = (
            f"{what}: the weights do not fit the architecture "
            f"({len(missing)} missing keys, {len(unexpected)} unexpected keys, {len(shapes)} with other shapes). "
            f"Missing: {missing[:6]}; unexpected: {unexpected[:6]}; shapes: {shapes[:4]}. "
            "Check that the file belongs to this model (and variant)."
        )
        raise ValueError(msg)
    on_meta = any(t.is_meta for t in (*model.parameters(), *model.buffers()))
    model.load_state_dict(state, strict=not any(is_head(k) for k in expected), assign=on_meta)
    if any(t.is_floating_point() and t.dtype != torch.float32 for t in model.state_dict().values()):
        model.float()
    return model
