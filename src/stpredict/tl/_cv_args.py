"""The arguments of :func:`~stpredict.tl.cross_validate`: protocol names and aliases, and the checks run before any work."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from ._condition import CONDITIONS
from ._models import resolve_model

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..models._base import Predictor

__all__ = ["ALIASES", "CROSS_SLIDE", "PROTOCOLS", "Protocol", "check_arguments"]

Protocol = Literal["leave_one_section_out", "leave_one_patient_out", "hide_spots", "pool"]
PROTOCOLS = ("leave_one_section_out", "leave_one_patient_out", "hide_spots", "pool")
#: the protocols that predict a held-out slide from the others
CROSS_SLIDE = ("leave_one_section_out", "leave_one_patient_out")
ALIASES = {"loso": "leave_one_section_out", "lopo": "leave_one_patient_out", "hide": "hide_spots"}


def check_arguments(
    protocol: str,
    condition: str,
    model: Any,
    model_kwargs: dict[str, Any],
    *,
    n_slides: int,
    groups: Sequence[str] | None,
) -> tuple[str, Predictor]:
    """Resolve the protocol's alias and the model; raise a ``ValueError`` on what cannot run.

    Parameters
    ----------
    protocol
        A protocol name or alias.
    condition
        The ``condition`` argument (``"pool"`` only, besides ``"none"``).
    model
        A registered name or an unfitted predictor.
    model_kwargs
        Predictor options.
    n_slides
        Number of slides.
    groups
        Patient of each slide.

    Returns
    -------
    ``(protocol, prototype predictor)``.
    """
    protocol = ALIASES.get(protocol, protocol)
    if protocol not in PROTOCOLS:
        msg = f"Unknown protocol {protocol!r}: use leave_one_section_out, leave_one_patient_out, hide_spots or pool."
        raise ValueError(msg)
    if condition not in CONDITIONS or (condition != "none" and protocol != "pool"):
        msg = (
            f"condition={condition!r}: use 'none', or 'measured' or 'denoised' with protocol='pool' (they condition "
            "on the pools)."
        )
        raise ValueError(msg)
    proto_pred, fitted = resolve_model(model, model_kwargs)
    if fitted:
        msg = "cross_validate fits a fresh model per fold: pass a model name or an unfitted predictor."
        raise ValueError(msg)
    if protocol in CROSS_SLIDE and n_slides < 2:
        msg = f"{protocol} needs at least two slides."
        raise ValueError(msg)
    if protocol in CROSS_SLIDE and proto_pred.uses_slide_targets:
        msg = f"{proto_pred.name} interpolates measured spots of the predicted slide: it has no cross-slide prediction."
        raise ValueError(msg)
    if protocol == "leave_one_patient_out" and (groups is None or len(groups) != n_slides):
        msg = "leave_one_patient_out needs groups=... with one patient id per slide."
        raise ValueError(msg)
    return protocol, proto_pred
