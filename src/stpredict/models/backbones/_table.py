"""The pathology foundation models stpredict knows: how to build each, where its weights live, and its terms.

Importing this module imports neither torch nor timm.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from ..._args import close_matches
from .._image_tensors import IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["FOUNDATION_MODELS", "FoundationModelCfg", "get_foundation_cfg"]

Loader = Literal["timm", "transformers", "conch"]

#: weight files of a timm model in its Hugging Face repository, in order
TIMM_FILES = ("model.safetensors", "pytorch_model.bin")
_HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
_HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)
_OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


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
    weight_files: tuple[str, ...] = TIMM_FILES
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


def get_foundation_cfg(name: str) -> FoundationModelCfg:
    """The entry of :data:`FOUNDATION_MODELS` for ``name`` (case-insensitive); a ValueError with close matches."""
    key = str(name).lower()
    if key not in FOUNDATION_MODELS:
        close = close_matches(key, FOUNDATION_MODELS, n=3, cutoff=0.5)
        msg = f"Unknown foundation model {name!r}; known: {sorted(FOUNDATION_MODELS)}." + (
            f" Did you mean {close}?" if close else ""
        )
        raise ValueError(msg)
    return FOUNDATION_MODELS[key]
