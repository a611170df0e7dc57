"""Device, dtype, autocast and DataLoader settings per device."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from .._logging import get_logger
from .._settings import settings

if TYPE_CHECKING:
    import torch

__all__ = ["autocast", "check_device", "loader_kwargs", "parse_device", "resolve_device"]

logger = get_logger(__name__)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` → :attr:`settings.device`; ``"auto"`` → CUDA, then MPS, then CPU."""
    import torch

    dev = settings.device if device is None else device
    if isinstance(dev, torch.device):
        out = dev
    elif dev == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    else:
        out = parse_device(dev)
    _check_available(out, dev)
    return out


_VALID = "'cpu', 'cuda', 'cuda:<index>', 'mps', 'auto', or None for stp.settings.device"


def parse_device(device: Any) -> torch.device:
    """The :class:`torch.device` a ``device=`` argument names; a clear error for a malformed one."""
    import torch

    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cpu")  # a valid name; resolved per machine by resolve_device
    if not isinstance(device, str | int) or isinstance(device, bool):
        msg = f"device must be one of {_VALID}, got {device!r} of type {type(device).__name__}."
        raise ValueError(msg)
    try:
        return torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        from .._args import close_matches

        kind = str(device).split(":", 1)[0].lower()
        close = ["cuda"] if kind.startswith("gpu") else []
        close = close or close_matches(kind, ["cpu", "cuda", "mps", "auto"], n=2, cutoff=0.5)
        hint = (" Did you mean " + " or ".join(f"device={c!r}" for c in close) + "?") if close else ""
        msg = f"device={device!r} is not a device name: use {_VALID}.{hint}"
        raise ValueError(msg) from None


def _check_available(out: torch.device, asked: Any) -> None:
    import torch

    if out.type == "cuda":
        if not torch.cuda.is_available():
            msg = f"device={asked!r} was asked for but CUDA is not available here; use device='cpu' or 'auto'."
            raise RuntimeError(msg)
        n = torch.cuda.device_count()
        if out.index is not None and out.index >= n:
            msg = (
                f"device={asked!r}: this machine has {n} CUDA device(s), numbered 0 to {n - 1}; use one of them, "
                "or device='cuda'."
            )
            raise RuntimeError(msg)
    if out.type == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        msg = f"device={asked!r} was asked for but Apple's MPS is not available here; use device='cpu' or 'auto'."
        raise RuntimeError(msg)


def check_device(device: Any, *, here: bool = True) -> None:
    """Refuse a malformed ``device=`` and, with ``here``, one this machine lacks (no CUDA, no such GPU index)."""
    default = device is None
    if default:
        device = settings.device  # the default the verb will use: checked at the door like an argument
    dev = parse_device(device)
    if here and device != "auto":
        try:
            _check_available(dev, device)
        except RuntimeError as e:
            if not default:
                raise
            msg = f"stp.settings.device is {device!r} (no device= was passed): {e}"
            raise RuntimeError(msg) from None


def autocast(device: torch.device, *, enabled: bool | None = None) -> contextlib.AbstractContextManager[Any]:
    """bf16 (or fp16 where bf16 is unsupported) autocast on CUDA; a no-op elsewhere."""
    import torch

    on = settings.autocast if enabled is None else enabled
    if not on or device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def loader_kwargs(device: torch.device, num_workers: int | None = None) -> dict[str, Any]:
    """DataLoader keyword arguments: pinned memory only on CUDA, workers from settings."""
    nw = settings.num_workers if num_workers is None else int(num_workers)
    kw: dict[str, Any] = {"num_workers": nw, "pin_memory": device.type == "cuda"}
    if nw > 0:
        kw["persistent_workers"] = False
        kw["prefetch_factor"] = 2
    return kw
