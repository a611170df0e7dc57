"""Pathology foundation models and timm backbones, with local-first weights.

Weight resolution for the foundation models of :data:`FOUNDATION_MODELS`, in order (timm's local-first order,
adapted):

1. an explicit ``weights=`` path (or state dict);
2. ``stp.settings.foundation_weights[name]``;
3. ``stp.settings.weights_dir / name /`` (one ``*.safetensors``, ``pytorch_model.bin``, ``*.bin``, ``*.pth`` or
   ``*.pt``), env ``STPREDICT_WEIGHTS_DIR``;
4. the local Hugging Face cache of the model's hub repository (no network access);
5. a hub download, only when ``stp.settings.allow_download`` is set.

Otherwise a :class:`FileNotFoundError` lists every place tried and the options, at once (no network retries).
Importing this module imports neither torch nor timm.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from .._logging import get_logger
from .._settings import settings
from ._backbone import IMAGENET_MEAN, IMAGENET_STD, TorchBackbone, file_sha256

if TYPE_CHECKING:
    import pandas as pd
    import torch

__all__ = [
    "FOUNDATION_MODELS",
    "FoundationModelCfg",
    "build_foundation_module",
    "create_foundation",
    "create_timm",
    "foundation_weights_available",
    "list_backbones",
    "load_weights_file",
]

logger = get_logger(__name__)

Loader = Literal["timm", "transformers", "conch"]

#: ``source`` recorded for random weights
RANDOM_SOURCE = "random init (pretrained=False): not pretrained weights"

_TIMM_FILES = ("model.safetensors", "pytorch_model.bin")
_HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
_HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)
_OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: containers unwrapped by :func:`load_weights_file`, in order
_CONTAINERS = ("state_dict", "model", "teacher", "model_state_dict", "module")
#: key prefixes stripped by :func:`load_weights_file` (DataParallel, torch.compile, DINO-style checkpoints)
_PREFIXES = ("module.", "_orig_mod.", "backbone.")


@dataclass(frozen=True)
class _Ref:
    """A ``package.module.attr`` reference resolved when the model is built (keeps torch out of import time)."""

    path: str

    def resolve(self) -> Any:
        module, _, attr = self.path.rpartition(".")
        return getattr(importlib.import_module(module), attr)

    def __repr__(self) -> str:
        return self.path


@dataclass(frozen=True)
class FoundationModelCfg:
    """How to build one pathology foundation model, where its weights come from, and its terms.

    Attributes
    ----------
    name
        Short name (``backbone="uni"``), also the key of :data:`FOUNDATION_MODELS`.
    hf_hub_id
        Hugging Face repository of the weights.
    loader
        ``"timm"`` (the architecture is built from ``architecture`` and ``kwargs``), ``"transformers"`` (needs the
        ``transformers`` package, extra ``stpredict[phikon]``) or ``"conch"`` (needs the ``conch`` package).
    architecture
        timm model name, transformers class name, or CONCH model config name.
    dim
        Feature dimension of :meth:`~stpredict.models.Backbone.embed`.
    kwargs
        Keyword arguments of ``timm.create_model`` (with ``pretrained=False``); :class:`_Ref` values name objects
        such as ``timm.layers.SwiGLUPacked`` that are imported when the model is built.
    pool
        ``None`` when the network already returns ``(b, dim)`` (e.g. the CLS token after the final norm),
        ``"cls"``, or ``"cls+mean"`` (Virchow: CLS concatenated with the mean of the patch tokens).
    num_prefix_tokens
        CLS and register tokens before the patch tokens.
    input_px
        Input side the network expects; patches are resized to it.
    mpp
        Recommended µm per pixel of the tissue that is read (0.5 µm/px, i.e. 20×).
    patch_um
        Default window in µm that is read and resized to ``input_px`` (112 µm = 224 px at 0.5 µm/px).
    mean, std
        Normalisation of ``[0, 1]`` RGB.
    license
        License of the weights (SPDX id where one exists).
    license_url
        Where the license text is, when it is not an SPDX license.
    gated
        Whether the Hugging Face repository asks users to request access (or share contact details).
    extra
        What to install beyond stpredict's dependencies (``""`` when nothing).
    citation
        Reference to cite.
    paper
        DOI or URL of the paper or release.
    weight_files
        File names looked up in the Hugging Face cache, in order.
    hf_config
        For ``loader="transformers"``: configuration used for random weights and for a bare weights file without
        ``config.json`` next to it.
    notes
        Details, and anything uncertain about the entry.
    """

    name: str
    hf_hub_id: str
    loader: Loader
    architecture: str
    dim: int
    kwargs: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    pool: str | None = None
    num_prefix_tokens: int = 1
    input_px: int = 224
    mpp: float = 0.5
    patch_um: float = 112.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    license: str = ""
    license_url: str = ""
    gated: bool = True
    extra: str = ""
    citation: str = ""
    paper: str = ""
    weight_files: tuple[str, ...] = _TIMM_FILES
    hf_config: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    notes: str = ""

    @property
    def url(self) -> str:
        """Hugging Face page of the weights."""
        return f"https://huggingface.co/{self.hf_hub_id}"


def _kw(**kwargs: Any) -> Mapping[str, Any]:
    return MappingProxyType(kwargs)


_CITE_UNI = (
    "Chen RJ, Ding T, Lu MY, et al. Towards a general-purpose foundation model for computational pathology. "
    "Nat Med 30, 850-862 (2024). doi:10.1038/s41591-024-02857-3"
)

FOUNDATION_MODELS: dict[str, FoundationModelCfg] = {
    cfg.name: cfg
    for cfg in (
        FoundationModelCfg(
            name="uni",
            hf_hub_id="MahmoodLab/UNI",
            loader="timm",
            architecture="vit_large_patch16_224",
            kwargs=_kw(img_size=224, patch_size=16, init_values=1e-5, num_classes=0, dynamic_img_size=True),
            dim=1024,
            license="CC-BY-NC-ND-4.0",
            gated=True,
            citation=_CITE_UNI,
            paper="https://doi.org/10.1038/s41591-024-02857-3",
            notes="ViT-L/16, 303.4M parameters; timm id hf-hub:MahmoodLab/uni; output = CLS token after the norm.",
        ),
        FoundationModelCfg(
            name="uni2-h",
            hf_hub_id="MahmoodLab/UNI2-h",
            loader="timm",
            architecture="vit_giant_patch14_224",
            kwargs=_kw(
                img_size=224,
                patch_size=14,
                depth=24,
                num_heads=24,
                init_values=1e-5,
                embed_dim=1536,
                mlp_ratio=2.66667 * 2,
                num_classes=0,
                no_embed_class=True,
                mlp_layer=_Ref("timm.layers.SwiGLUPacked"),
                act_layer=_Ref("torch.nn.SiLU"),
                reg_tokens=8,
                dynamic_img_size=True,
            ),
            dim=1536,
            num_prefix_tokens=9,
            license="CC-BY-NC-ND-4.0",
            gated=True,
            citation=_CITE_UNI + " (UNI2-h: model card https://huggingface.co/MahmoodLab/UNI2-h)",
            paper="https://doi.org/10.1038/s41591-024-02857-3",
            notes="1536-d, 24 blocks, SwiGLU, 8 register tokens, 681.4M parameters; output = CLS token.",
        ),
        FoundationModelCfg(
            name="virchow2",
            hf_hub_id="paige-ai/Virchow2",
            loader="timm",
            architecture="vit_huge_patch14_224",
            kwargs=_kw(
                img_size=224,
                init_values=1e-5,
                num_classes=0,
                reg_tokens=4,
                mlp_ratio=5.3375,
                global_pool="",
                dynamic_img_size=True,
                mlp_layer=_Ref("timm.layers.SwiGLUPacked"),
                act_layer=_Ref("torch.nn.SiLU"),
            ),
            dim=2560,
            pool="cls+mean",
            num_prefix_tokens=5,
            license="CC-BY-NC-ND-4.0",
            gated=True,
            citation=(
                "Zimmermann E, Vorontsov E, Viret J, et al. Virchow2: Scaling self-supervised mixed magnification "
                "models in pathology. arXiv:2408.00738 (2024)"
            ),
            paper="https://doi.org/10.48550/arXiv.2408.00738",
            notes=(
                "ViT-H/14 with 4 register tokens and SwiGLU, 631.2M parameters; output = concat(CLS, mean of the 256 "
                "patch tokens after CLS + 4 registers) = 2560-d, as on the model card. Trained on mixed "
                "magnifications (5-40x); 0.5 µm/px is the usual choice. Virchow (v1) is Apache-2.0, Virchow2 is "
                "CC-BY-NC-ND-4.0."
            ),
        ),
        FoundationModelCfg(
            name="h-optimus-0",
            hf_hub_id="bioptimus/H-optimus-0",
            loader="timm",
            architecture="vit_giant_patch14_reg4_dinov2",
            kwargs=_kw(img_size=224, init_values=1e-5, num_classes=0, dynamic_img_size=False),
            dim=1536,
            num_prefix_tokens=5,
            mean=_HOPTIMUS_MEAN,
            std=_HOPTIMUS_STD,
            license="Apache-2.0",
            gated=True,
            citation=(
                "Saillard C, Jenatton R, Llinares-López F, et al. H-optimus-0 (2024). "
                "https://github.com/bioptimus/releases/tree/main/models/h-optimus/v0"
            ),
            paper="https://github.com/bioptimus/releases/tree/main/models/h-optimus/v0",
            notes=(
                "ViT-g/14 with 4 register tokens and SwiGLU (40 blocks, 1536-d), 1.13B parameters; the same "
                "parameters as the release's timm.models.VisionTransformer(**params); output = CLS token. Gated in "
                "the sense that the hub asks to share contact details before download (uncertain whether access is "
                "granted automatically); the weights are Apache-2.0."
            ),
        ),
        FoundationModelCfg(
            name="conch",
            hf_hub_id="MahmoodLab/CONCH",
            loader="conch",
            architecture="conch_ViT-B-16",
            dim=512,
            input_px=448,
            mean=_OPENAI_CLIP_MEAN,
            std=_OPENAI_CLIP_STD,
            license="CC-BY-NC-ND-4.0",
            gated=True,
            extra="conch: pip install git+https://github.com/mahmoodlab/CONCH.git (not on PyPI)",
            citation=(
                "Lu MY, Chen B, Williamson DFK, et al. A visual-language foundation model for computational "
                "pathology. Nat Med 30, 863-874 (2024). doi:10.1038/s41591-024-02856-4"
            ),
            paper="https://doi.org/10.1038/s41591-024-02856-4",
            weight_files=("pytorch_model.bin",),
            notes=(
                "Image tower of the CoCa model (ViT-B/16 + attentional pooler); features = "
                "encode_image(x, proj_contrast=False, normalize=False), 512-d. CONCH's config uses 448 px inputs: "
                "the 112 µm window read at 0.5 µm/px is resized to 448 px, as CONCH's own transform resizes 224 px "
                "tiles. The hub id is spelled MahmoodLab/conch in CONCH's README (the hub ignores case)."
            ),
        ),
        FoundationModelCfg(
            name="phikon",
            hf_hub_id="owkin/phikon",
            loader="transformers",
            architecture="ViTModel",
            dim=768,
            pool="cls",
            license="Owkin non-commercial",
            license_url="https://github.com/owkin/HistoSSLscaling/blob/main/LICENSE.txt",
            gated=False,
            extra="stpredict[phikon] (transformers)",
            citation=(
                "Filiot A, Ghermi R, Olivier A, et al. Scaling self-supervised learning for histopathology with "
                "masked image modeling. medRxiv (2023). doi:10.1101/2023.07.21.23292757"
            ),
            paper="https://doi.org/10.1101/2023.07.21.23292757",
            weight_files=("model.safetensors", "pytorch_model.bin"),
            hf_config=_kw(model_type="vit"),
            notes="ViT-B/16 (iBOT), 85.8M parameters; features = last_hidden_state[:, 0] (768-d).",
        ),
        FoundationModelCfg(
            name="phikon-v2",
            hf_hub_id="owkin/phikon-v2",
            loader="transformers",
            architecture="AutoModel",
            dim=1024,
            pool="cls",
            license="Owkin non-commercial",
            license_url="https://huggingface.co/owkin/phikon-v2/blob/main/LICENSE.pdf",
            gated=False,
            extra="stpredict[phikon] (transformers)",
            citation=(
                "Filiot A, Jacob P, Mac Kain A, Saillard C. Phikon-v2, a large and public feature extractor for "
                "biomarker prediction. arXiv:2409.09173 (2024)"
            ),
            paper="https://doi.org/10.48550/arXiv.2409.09173",
            weight_files=("model.safetensors", "pytorch_model.bin"),
            hf_config=_kw(
                model_type="dinov2",
                hidden_size=1024,
                num_hidden_layers=24,
                num_attention_heads=16,
                patch_size=16,
                image_size=224,
            ),
            notes=(
                "ViT-L/16 (DINOv2), 303.4M parameters; features = last_hidden_state[:, 0] (1024-d). The built-in "
                "hf_config (used only without a config.json) is not checked against the release."
            ),
        ),
    )
}


# -- weights files -----------------------------------------------------------------------------------

_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def _sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, remembered per (path, size, mtime) so large checkpoints are hashed once."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = file_sha256(p)
    return _SHA_CACHE[key]


def _clean_state_dict(obj: Any, *, what: str = "checkpoint") -> dict[str, torch.Tensor]:
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
    return _clean_state_dict(obj, what=str(p))


def _fit_report(model: torch.nn.Module, state: Mapping[str, Any], *, what: str) -> None:
    """Raise a ValueError listing missing, unexpected and mis-shaped keys, if any."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state]
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


def _load_strict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], *, what: str) -> torch.nn.Module:
    """Load ``state`` with ``strict=True`` after a readable check; a meta-device module gets the tensors assigned."""
    import torch

    _fit_report(model, state, what=what)
    on_meta = any(t.is_meta for t in (*model.parameters(), *model.buffers()))
    model.load_state_dict(state, strict=True, assign=on_meta)
    if any(t.is_floating_point() and t.dtype != torch.float32 for t in model.state_dict().values()):
        model.float()
    return model


# -- where weights are ---------------------------------------------------------------------------------


def _hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at call time (huggingface_hub reads it at import)."""
    env = os.environ
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(var):
            return Path(env[var]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    base = Path(env["XDG_CACHE_HOME"]).expanduser() if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def _hf_cached(repo_id: str, filenames: tuple[str, ...], cache_dir: Path) -> Path | None:
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


def _find_in_dir(d: Path, *, loader: Loader = "timm") -> Path | None:
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
        found = _find_in_dir(p, loader=cfg.loader)
        if found is None:
            need = "config.json and a weights file" if cfg.loader == "transformers" else "a weights file"
            msg = f"{label} = {str(p)!r} is a directory without {need} (.safetensors, .bin, .pth or .pt)."
            raise FileNotFoundError(msg)
        return found
    return p


def _locate(cfg: FoundationModelCfg, weights: Any = None) -> tuple[Path | None, str, list[str]]:
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
    found = _find_in_dir(d, loader=cfg.loader)
    if found is not None:
        return found, "settings.weights_dir", tried
    what = "config.json + weights" if cfg.loader == "transformers" else "*.safetensors, pytorch_model.bin, *.pth, *.pt"
    tried.append(f"{d}/ ({what}): {'nothing found' if d.is_dir() else 'no such directory'}")
    cache = _hf_cache_dir()
    files = ("config.json",) if cfg.loader == "transformers" else cfg.weight_files
    hit = _hf_cached(cfg.hf_hub_id, files, cache)
    if hit is not None and cfg.loader == "transformers":
        hit = hit.parent if _find_in_dir(hit.parent, loader="transformers") else None
    if hit is not None:
        return hit, "Hugging Face cache", tried
    tried.append(f"Hugging Face cache {cache}: {cfg.hf_hub_id} {'/'.join(files)} not cached")
    return None, "", tried


def _not_found_message(cfg: FoundationModelCfg, tried: list[str]) -> str:
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


def _download(repo_id: str, filenames: tuple[str, ...], *, gated: bool) -> Path:
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
        path, _, _ = _locate(cfg)
    except (FileNotFoundError, ValueError) as err:
        logger.warning("Weights for %r are misconfigured: %s", cfg.name, err)
        return None
    return str(path) if path is not None else None


# -- building ------------------------------------------------------------------------------------------


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


def _get_cfg(name: str) -> FoundationModelCfg:
    key = str(name).lower()
    if key not in FOUNDATION_MODELS:
        close = difflib.get_close_matches(key, list(FOUNDATION_MODELS), n=3, cutoff=0.5)
        msg = f"Unknown foundation model {name!r}; known: {sorted(FOUNDATION_MODELS)}." + (
            f" Did you mean {close}?" if close else ""
        )
        raise ValueError(msg)
    return FOUNDATION_MODELS[key]


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

    cfg = _get_cfg(name)
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
    model = _load_strict(build_foundation_module(cfg.name, device="meta", **overrides), state, what=what)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):  # a buffer the state dict lacks
        model = _load_strict(build_foundation_module(cfg.name, **overrides), state, what=what)
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
    :attr:`stpredict.settings.allow_download` is set. Weights load with ``strict=True``.

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
    cfg = _get_cfg(name)
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
        state, source = _clean_state_dict(dict(weights), what="weights="), "state dict passed as weights="
    elif weights is not None or pretrained:
        path, origin, tried = _locate(cfg, weights)
        if path is None:
            if not settings.allow_download:
                raise FileNotFoundError(_not_found_message(cfg, tried))
            if cfg.loader == "transformers":
                _download(cfg.hf_hub_id, ("config.json",), gated=cfg.gated)
                path, origin = _download(cfg.hf_hub_id, cfg.weight_files, gated=cfg.gated).parent, "download"
            else:
                path, origin = _download(cfg.hf_hub_id, cfg.weight_files, gated=cfg.gated), "download"
        logger.info("%s: weights from %s (%s).", cfg.name, path, origin)
        source = str(path)
        files = [path] if path.is_file() else [path / f for f in cfg.weight_files if (path / f).is_file()]
        sha = _sha256(files[0]) if files else None
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


# -- any timm model ------------------------------------------------------------------------------------


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


def _drop_classifier(model: torch.nn.Module, state: dict[str, Any]) -> dict[str, Any]:
    """Drop classifier weights that a ``num_classes=0`` model has no place for."""
    heads = getattr(model, "pretrained_cfg", {}).get("classifier")
    heads = (heads,) if isinstance(heads, str) else tuple(heads or ())
    own = set(model.state_dict())
    return {k: v for k, v in state.items() if k in own or not any(k.startswith(f"{h}.") for h in heads)}


def _unknown_timm(spec: str) -> ValueError:
    import timm

    pool = timm.list_pretrained() if "." in spec else timm.list_models()
    close = difflib.get_close_matches(spec.lower(), [*pool, *FOUNDATION_MODELS], n=5, cutoff=0.6)
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


def _timm_zoo_local(spec: str, pcfg: Mapping[str, Any]) -> tuple[Path | None, list[str]]:
    """Local copies of timm's pretrained weights for ``spec``: weights_dir, pretrained_cfg file, HF and torch caches."""
    from urllib.parse import urlparse

    import torch

    tried: list[str] = []
    d = Path(settings.weights_dir) / spec
    if (found := _find_in_dir(d)) is not None:
        return found, tried
    tried.append(f"{d}/: {'nothing found' if d.is_dir() else 'no such directory'}")
    if pcfg.get("file") and Path(pcfg["file"]).is_file():
        return Path(pcfg["file"]), tried
    if pcfg.get("hf_hub_id"):
        cache = _hf_cache_dir()
        files = tuple(dict.fromkeys([*filter(None, [pcfg.get("hf_hub_filename")]), *_TIMM_FILES]))
        if (found := _hf_cached(pcfg["hf_hub_id"], files, cache)) is not None:
            return found, tried
        tried.append(f"Hugging Face cache {cache}: {pcfg['hf_hub_id']} {'/'.join(files)} not cached")
    if pcfg.get("url"):
        hub_file = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(pcfg["url"]).path).name
        if hub_file.is_file():
            return hub_file, tried
        tried.append(f"torch hub cache {hub_file}: not found")
    return None, tried


def _timm_zoo(spec: str, *, load: bool, kwargs: dict[str, Any]) -> tuple[torch.nn.Module, str, str | None]:
    """A timm registry model; with ``load``, timm's pretrained weights from a local copy (or a download)."""
    import timm

    if not timm.is_model(timm.models.split_model_name_tag(spec)[0]):
        raise _unknown_timm(spec)
    if not load:
        return timm.create_model(spec, pretrained=False, **kwargs), RANDOM_SOURCE, None
    pcfg = timm.models.get_pretrained_cfg(spec)
    pcfg = pcfg.to_dict() if pcfg is not None else {}
    found, tried = _timm_zoo_local(spec, pcfg)
    if found is not None:  # timm knows its own formats (checkpoint filters, custom loaders): let it load the file
        try:
            model = timm.create_model(spec, pretrained=True, pretrained_cfg_overlay={"file": str(found)}, **kwargs)
        except RuntimeError as err:
            msg = f"Weights {str(found)!r} do not fit timm model {spec!r}: {err}"
            raise ValueError(msg) from err
        return model, str(found), _sha256(found)
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
    cache = _hf_cache_dir()
    config = _hf_cached(repo, ("config.json",), cache)
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
    found = _find_in_dir(config.parent) if config.parent == local_dir else _hf_cached(repo, _TIMM_FILES, cache)
    if found is None and settings.allow_download:
        found = _download(repo, _TIMM_FILES, gated=False)
    if found is None:
        raise _timm_not_found(spec, [f"{config.parent}: config.json but no weights file"])
    _load_strict(model, _drop_classifier(model, load_weights_file(found)), what=f"{spec} from {found}")
    return model, str(found), _sha256(found)


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
        A local weights file or state dict; classifier weights are dropped and the rest loads with ``strict=True``.
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
        _load_strict(model, _drop_classifier(model, _clean_state_dict(dict(weights))), what=f"{spec} from {source}")
    elif weights is not None:
        source, sha = str(Path(weights).expanduser()), _sha256(Path(weights).expanduser())
        _load_strict(model, _drop_classifier(model, load_weights_file(weights)), what=f"{spec} from {source}")
    return _timm_backbone(model, name=name, source=source, sha=sha)


# -- table ---------------------------------------------------------------------------------------------


def list_backbones() -> pd.DataFrame:
    """The pathology foundation models stpredict knows, one row each.

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
