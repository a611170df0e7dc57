"""Device, dtype, autocast and DataLoader settings per device."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from .._logging import get_logger
from .._settings import settings

if TYPE_CHECKING:
    import torch

__all__ = ["autocast", "loader_kwargs", "resolve_device"]

logger = get_logger(__name__)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` → :attr:`settings.device`; ``"auto"`` → CUDA, then MPS, then CPU."""
    import torch

    dev = settings.device if device is None else device
    if isinstance(dev, torch.device):
        return dev
    if dev == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    out = torch.device(dev)
    if out.type == "cuda" and not torch.cuda.is_available():
        msg = f"device={dev!r} was asked for but CUDA is not available here; use device='cpu' or 'auto'."
        raise RuntimeError(msg)
    return out


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
