"""The backbone factory: :func:`get_backbone` resolves a spec, :func:`list_backbones` shows what can be resolved.

Importing this module imports neither torch nor timm.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from ..._args import close_matches
from ._base import Backbone, TorchBackbone
from ._lookup import foundation_weights_available
from ._table import FOUNDATION_MODELS

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["foundation_table", "get_backbone", "list_backbones"]

#: how close (difflib ratio) a name must be to a built-in backbone to be taken for a misspelling of it; no timm
#: model name comes this close to one (checked against ``timm.list_models()``)
_TYPO_CUTOFF = 0.75


def _builtin_names() -> list[str]:
    return ["handcrafted", *FOUNDATION_MODELS]


def _check_spelling(spec: str) -> None:
    """Refuse a near miss of a built-in name (``"handcraftd"``, ``"unii"``) before timm is asked about it."""
    if ":" in spec or "." in spec:  # hf-hub:/local-dir: ids and timm name.tag specs
        return
    close = close_matches(spec, _builtin_names(), n=3, cutoff=_TYPO_CUTOFF)
    if close:
        msg = (
            f"Unknown backbone {spec!r}. Did you mean {', '.join(map(repr, close))}? Built-in backbones: "
            f"{', '.join(_builtin_names())}; any timm model name also works (see stp.models.list_backbones())."
        )
        raise ValueError(msg)


def get_backbone(spec: Any, *, weights: Any = None, pretrained: bool = True) -> Backbone:
    """Resolve a backbone from a name, a hub id, a module, or a :class:`Backbone`.

    Parameters
    ----------
    spec
        - ``"handcrafted"``: weight-free stain, colour, texture and nuclei statistics (scikit-image);
        - a pathology foundation model of :func:`stpredict.models.list_backbones` (``"uni"``, ``"uni2-h"``,
          ``"conch"``, ``"virchow2"``, ``"h-optimus-0"``, ``"phikon"``, ``"phikon-v2"``);
        - ``"hf-hub:<org>/<name>"``: any timm hub model;
        - any timm model name (``"resnet50"``, ``"vit_small_patch16_224"``...);
        - a ``torch.nn.Module`` returning features, or a ready :class:`Backbone`.

        Names are case-insensitive; a near miss of a built-in name (``"handcraftd"``) raises a ValueError
        naming the close matches, before timm is asked.
    weights
        Local weights (safetensors or weights-only torch file) for a named model; for foundation models also
        :attr:`stpredict.settings.foundation_weights` and the Hugging Face cache are searched.
    pretrained
        Load weights for timm names (from ``weights`` or timm's local cache); ``False`` gives random weights,
        which is only meaningful for tests and for predictors that train the trunk.

    Returns
    -------
    A :class:`Backbone`.
    """
    if isinstance(spec, Backbone):
        return spec
    if isinstance(spec, str):
        key = spec.lower()
        if key == "handcrafted":
            from ._handcrafted import HandcraftedBackbone

            return HandcraftedBackbone()
        if key in FOUNDATION_MODELS:
            from ._builders import create_foundation

            return create_foundation(key, weights=weights, pretrained=pretrained)
        _check_spelling(spec)
        from ._timm import create_timm

        return create_timm(spec, weights=weights, pretrained=pretrained)
    try:
        import torch
    except ImportError:  # pragma: no cover
        torch = None
    if torch is not None and isinstance(spec, torch.nn.Module):
        return TorchBackbone(spec, name=type(spec).__name__.lower(), source="module")
    msg = f"Cannot make a backbone from {type(spec).__name__}: pass a name, a torch.nn.Module or a Backbone."
    raise TypeError(msg)


def foundation_table() -> pd.DataFrame:
    """The pathology foundation models stpredict knows, one row each, with their local availability.

    Returns
    -------
    Columns ``name``, ``hf_hub_id``, ``loader``, ``architecture``, ``dim``, ``input_px``, ``um_per_px``,
    ``patch_um``, ``license``, ``gated``, ``extra`` (what to install beyond stpredict), ``installed`` (whether that
    package is importable), ``citation``, ``available`` (weights found locally) and ``local_weights`` (their path).
    """
    import pandas as pd

    rows = []
    for cfg in FOUNDATION_MODELS.values():
        path = foundation_weights_available(cfg.name)
        package = {"conch": "conch", "transformers": "transformers"}.get(cfg.loader, "timm")
        rows.append(
            {
                "name": cfg.name,
                "hf_hub_id": cfg.hf_hub_id,
                "loader": cfg.loader,
                "architecture": cfg.architecture,
                "dim": cfg.dim,
                "input_px": cfg.input_px,
                "um_per_px": cfg.mpp,
                "patch_um": cfg.patch_um,
                "license": cfg.license,
                "gated": cfg.gated,
                "extra": cfg.extra,
                "installed": importlib.util.find_spec(package) is not None,
                "citation": cfg.citation,
                "available": path is not None,
                "local_weights": path or "",
            }
        )
    return pd.DataFrame(rows)


def list_backbones() -> pd.DataFrame:
    """The backbones :func:`get_backbone` resolves by name, one row each.

    ``handcrafted`` comes first (weight-free, always available), then the pathology foundation models with
    whether their weights are found locally, then one row standing for every timm model.

    Returns
    -------
    Columns ``name``, ``kind`` (``"handcrafted"``, ``"foundation"`` or ``"timm"``), ``hf_hub_id``, ``loader``,
    ``architecture``, ``dim``, ``input_px``, ``um_per_px``, ``patch_um``, ``license``, ``gated``, ``extra`` (what
    to install beyond stpredict), ``installed`` (whether that package is importable), ``citation``,
    ``available`` (usable now: weights found locally, or none needed; empty for the timm row, where it depends on
    the name), ``local_weights`` (their path) and ``notes``.
    """
    import pandas as pd

    from ._handcrafted import HandcraftedBackbone

    hand = HandcraftedBackbone()
    common = {"hf_hub_id": "", "license": "", "gated": False, "extra": "", "citation": "", "local_weights": ""}
    first = {
        **common,
        "name": "handcrafted",
        "kind": "handcrafted",
        "loader": "stpredict",
        "architecture": "stain, colour, texture and nuclei statistics",
        "dim": hand.dim,
        "input_px": hand.patch_px,
        "um_per_px": hand.mpp,
        "patch_um": hand.default_patch_um,
        "installed": True,
        "available": True,
        "notes": "weight-free; no download, works offline",
    }
    last = {
        **common,
        "name": "<any timm model>",
        "kind": "timm",
        "loader": "timm",
        "architecture": "any name of timm.list_models(), 'hf-hub:<org>/<name>' or 'local-dir:<path>'",
        "dim": None,
        "input_px": None,
        "um_per_px": None,
        "patch_um": None,
        "installed": importlib.util.find_spec("timm") is not None,
        "available": None,
        "notes": (
            "pretrained weights from weights=PATH or local copies (settings.weights_dir, the Hugging Face cache, "
            "torch hub's cache), downloaded only when stp.settings.allow_download is set; pretrained=False for "
            "random weights"
        ),
    }
    found = foundation_table()
    notes = [cfg.notes for cfg in FOUNDATION_MODELS.values()]
    rows = [first, *(dict(r, kind="foundation", notes=n) for r, n in zip(found.to_dict("records"), notes, strict=True))]
    columns = ["name", "kind", *[c for c in found.columns if c != "name"], "notes"]
    return pd.DataFrame([*rows, last], columns=columns)
