"""One settings object for the package (scanpy/spatialdata style)."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = ["Settings", "settings"]


def _env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else default


_DEVICE_NAME = re.compile(r"(auto|cpu|mps|cuda(:[0-9]+)?)")


def _check_device_name(value: object) -> None:
    """Refuse a ``settings.device`` that names no device (availability is checked by the verbs)."""
    if type(value).__name__ == "device" and type(value).__module__.startswith("torch"):
        return
    if not isinstance(value, str) or _DEVICE_NAME.fullmatch(value) is None:
        msg = (
            f"stp.settings.device must be 'auto', 'cpu', 'cuda', 'cuda:<index>', 'mps' or a torch.device, "
            f"got {value!r}."
        )
        raise ValueError(msg)


@dataclass
class Settings:
    """Package-wide defaults; every option can be overridden per call.

    Attributes
    ----------
    verbosity
        Level of the ``"stpredict"`` logger (``"error"``, ``"warning"``, ``"info"``, ``"debug"``).
    device
        ``"auto"`` picks CUDA, then MPS, then CPU; or ``"cpu"``, ``"cuda"``, ``"cuda:<index>"``, ``"mps"`` (or a
        :class:`torch.device`). A malformed name is refused when set; a device this machine lacks is refused by
        the next verb, before any work.
    autocast
        Run bf16/fp16 autocast on CUDA during inference and training (never on CPU).
    batch_size
        Patches per batch for feature extraction and inference.
    num_workers
        DataLoader workers for patch reading (0 reads in the main process).
    progress
        Show tqdm progress bars on long loops.
    weights_dir
        Directory searched for local weights (``<dir>/<name>/...``); env ``STPREDICT_WEIGHTS_DIR``.
    foundation_weights
        Paths to local foundation-model weights by backbone name (e.g. ``{"uni": "/path/uni.bin"}``).
    allow_download
        Allow hub downloads of weights. Off by default: nothing is downloaded unless asked for.
    cache_dir
        Where converted images and cached features may be written; env ``STPREDICT_CACHE_DIR``.
    chunk_cache_mb
        Memory bound of the image-chunk cache used by the patch reader.
    model_cache
        Fits of a model given by name that ``stp.tl.superresolve`` keeps in memory for a later call asking
        for the identical fit (same model, options, panel, inputs, spots, counts, features, seed); 0 keeps none.
    """

    verbosity: Literal["error", "warning", "info", "debug"] = "warning"
    device: str = "auto"
    autocast: bool = True
    batch_size: int = 64
    num_workers: int = 0
    progress: bool = True
    weights_dir: Path = field(
        default_factory=lambda: _env_path("STPREDICT_WEIGHTS_DIR", Path.home() / ".cache" / "stpredict" / "weights")
    )
    foundation_weights: dict[str, str] = field(default_factory=dict)
    allow_download: bool = False
    cache_dir: Path = field(
        default_factory=lambda: _env_path("STPREDICT_CACHE_DIR", Path.home() / ".cache" / "stpredict")
    )
    chunk_cache_mb: int = 512
    model_cache: int = 2

    def __setattr__(self, name: str, value: object) -> None:
        if name == "verbosity":
            levels = {"error": logging.ERROR, "warning": logging.WARNING, "info": logging.INFO, "debug": logging.DEBUG}
            if value not in levels:
                msg = f"verbosity must be one of {sorted(levels)}, got {value!r}."
                raise ValueError(msg)
            logging.getLogger("stpredict").setLevel(levels[value])
        if name == "device":
            _check_device_name(value)
        if name == "model_cache" and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            msg = f"model_cache is a number of fits to keep (0 keeps none), got {value!r}."
            raise ValueError(msg)
        if name in {"weights_dir", "cache_dir"} and value is not None:
            value = Path(value).expanduser()  # type: ignore[arg-type]
        super().__setattr__(name, value)


settings = Settings()
