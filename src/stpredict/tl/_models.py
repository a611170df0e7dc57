"""Models and backbones of a verb: resolving ``model=``/``backbone=``, fresh copies per fold, the one fit call."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._logging import get_logger
from ..models._base import Predictor, create_predictor, load

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..models._base import SlideData
    from ..models.backbones import Backbone
    from ._pipeline import Compute, Inputs

__all__ = [
    "auto_backbone",
    "check_fitted_backbone",
    "fresh_copy",
    "resolve_backbone",
    "resolve_model",
    "slide_fingerprint",
    "train",
]

logger = get_logger(__name__)


def resolve_model(model: Any, model_kwargs: dict[str, Any]) -> tuple[Predictor, bool]:
    """``(predictor, fitted)`` from a registered name, a checkpoint path or a Predictor."""
    if isinstance(model, Predictor):
        if model_kwargs:
            msg = f"Options {sorted(model_kwargs)} apply to a model name, not to a ready predictor."
            raise TypeError(msg)
        return model, model.is_fitted
    if isinstance(model, str | Path):
        path = Path(model)
        saved = path.with_name(path.name + ".safetensors")  # what Predictor.save("dir/nsl") writes
        text = str(model)
        looks_like_path = isinstance(model, Path) or "/" in text or "\\" in text or text.endswith(".safetensors")
        if looks_like_path or (path.suffix and path.exists()) or saved.is_file():
            if model_kwargs:
                msg = f"Options {sorted(model_kwargs)} cannot change a saved checkpoint."
                raise TypeError(msg)
            return load(path), True
        return create_predictor(str(model), **model_kwargs), False
    msg = f"model must be a registered name, a checkpoint path or a Predictor, got {type(model).__name__}."
    raise TypeError(msg)


def fresh_copy(predictor: Predictor) -> Predictor:
    """An unfitted predictor of the same class (registered or not) and configuration."""
    cls = type(predictor)
    try:
        return cls(**predictor.config)
    except TypeError as e:
        msg = (
            f"stpredict re-creates {cls.__name__} per fold as {cls.__name__}(**config) and that failed ({e}): "
            "a predictor must pass its __init__ keyword arguments to Predictor.__init__ as its config."
        )
        raise TypeError(msg) from e


def train(
    predictor: Predictor,
    inputs: Inputs,
    run: Compute,
    *,
    slides: Sequence[SlideData] | None = None,
    genes: Sequence[str] | None = None,
    preprocessing: dict[str, Any] | None = None,
    max_epochs: int | None,
    seed: int | None,
    full: dict[str, tuple[int, SlideData]] | None = None,
) -> Predictor:
    """Fit ``predictor`` on ``slides`` (default: all of ``inputs``) through :meth:`Predictor.train`.

    With ``stain_augment``, the re-stained copies of the slides are trained on beside them
    (:meth:`Inputs.augmented`; ``full`` names the whole slides that ``slides`` are spots of).
    """
    genes = list(inputs.genes if genes is None else genes)
    record = inputs.data_record() if slides is None else None
    slides = list(inputs.slides if slides is None else slides)
    slides += inputs.augmented(slides, run, full)
    return predictor.train(
        slides,
        genes=genes,
        preprocessing=preprocessing if preprocessing is not None else inputs.preprocessing,
        backbone=inputs.backbone_params,
        record=record,
        max_epochs=max_epochs,
        seed=seed,
        device=run.device,
        progress=run.progress,
    )


def slide_fingerprint(slide: SlideData) -> str:
    """A short hash identifying a slide's spots (names and positions)."""
    h = hashlib.sha1(usedforsecurity=False)
    h.update("\n".join(map(str, slide.obs_names)).encode())
    h.update(np.round(np.asarray(slide.centers_px), 1).tobytes())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------------
# backbones
# ------------------------------------------------------------------------------------------------------
def resolve_backbone(predictor: Predictor | None, backbone: Any, weights: Any) -> Backbone | None:
    """The backbone a predictor consumes: the caller's, the one it was fitted with, or its default.

    Without a predictor, the caller's backbone (``None`` for none).
    """
    from ..models.backbones import get_backbone

    if predictor is None:
        return None if backbone is None else get_backbone(backbone, weights=weights)
    if predictor.consumes != "embeddings":
        return None
    if backbone is None and predictor.backbone.get("backbone"):
        fitted = predictor.backbone["backbone"]
        if fitted == "handcrafted":
            from ..models.backbones import HandcraftedBackbone

            return HandcraftedBackbone(
                mpp=float(predictor.backbone.get("mpp", 1.0)),
                context=float(predictor.backbone.get("context", 3.0)),
                features=tuple(predictor.backbone.get("features", ("base",))),
            )
        return get_backbone(fitted, weights=weights)
    spec = backbone if backbone is not None else predictor.default_backbone
    if spec is None:
        return None
    if spec == "auto":
        spec = auto_backbone()
    return get_backbone(spec, weights=weights)


def auto_backbone() -> str:
    """``"uni"`` when its weights are available locally, else ``"handcrafted"`` (logged once)."""
    try:
        from ..models.backbones import foundation_weights_available

        path = foundation_weights_available("uni")
    except (ImportError, AttributeError):
        path = None
    if path:
        logger.info("backbone='auto': using UNI from %s.", path)
        return "uni"
    logger.warning(
        "backbone='auto': UNI weights are not available locally, using the weight-free 'handcrafted' backbone. "
        "Set stp.settings.foundation_weights['uni'] = PATH to use UNI."
    )
    return "handcrafted"


def check_fitted_backbone(predictor: Predictor, backbone: Any, patch_size_um: float | None) -> None:
    """A fitted model predicts only from the embeddings it was fitted on (checked before building anything)."""
    fitted = predictor.backbone.get("backbone")
    if backbone is not None and fitted:
        asked = backbone if isinstance(backbone, str) else getattr(backbone, "name", type(backbone).__name__)
        short = str(asked).removeprefix("hf-hub:").split("/")[-1].lower()
        if asked != fitted and short != fitted:
            msg = (
                f"The model was fitted on {fitted!r} embeddings but backbone {asked!r} was asked for: "
                "predictions need the same backbone (omit backbone=... to use the model's)."
            )
            raise ValueError(msg)
    if (
        patch_size_um is not None
        and fitted
        and float(patch_size_um) != float(predictor.backbone.get("patch_size_um", patch_size_um))
    ):
        msg = f"The model was fitted on {predictor.backbone['patch_size_um']} µm windows, not {patch_size_um} µm."
        raise ValueError(msg)
