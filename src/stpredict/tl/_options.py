"""Options every verb shares: which elements of a SpatialData to read, and how heavy work runs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Compute", "Elements"]


@dataclass(frozen=True)
class Elements:
    """Which elements of a SpatialData hold the image, the spots and the counts (``None``: the only one)."""

    image_key: str | None = None
    spots_key: str | None = None
    table_key: str | None = None
    microns_per_pixel: float | None = None


@dataclass(frozen=True)
class Compute:
    """Where and how heavy work runs: device, batch size, DataLoader workers, progress bars, dense maps.

    Checked when built, so a bad value is refused before any work.
    """

    device: Any = None
    batch_size: int | None = None
    num_workers: int | None = None
    progress: bool | None = None
    dense: bool | None = None

    def loop_kwargs(self) -> dict[str, Any]:
        """The keywords of :func:`~stpredict.tl._embedding_loop.compute_embeddings` these options set."""
        return {
            "device": self.device,
            "batch_size": self.batch_size,
            "num_workers": self.num_workers,
            "progress": self.progress,
        }

    def __post_init__(self) -> None:
        bs, nw = self.batch_size, self.num_workers
        if bs is not None and (isinstance(bs, bool) or not isinstance(bs, int | np.integer) or bs < 1):
            msg = f"batch_size must be a positive integer (patches per batch) or None for the setting, got {bs!r}."
            raise ValueError(msg)
        most = max(64, 4 * (os.cpu_count() or 1))
        if nw is not None and (isinstance(nw, bool) or not isinstance(nw, int | np.integer) or not 0 <= nw <= most):
            msg = (
                f"num_workers must be an integer from 0 (read in the main process) to {most} DataLoader worker "
                f"processes, got {nw!r}."
            )
            raise ValueError(msg)
        if self.dense is not None and not isinstance(self.dense, bool | np.bool_):
            msg = f"dense must be True, False or None (the cheaper path), got {self.dense!r}."
            raise ValueError(msg)
        if self.device is not None:
            from ..models._device import parse_device

            parse_device(self.device)  # a malformed name; whether this machine has it: check_here

    def check_here(self) -> Compute:
        """Refuse a device this machine lacks (no CUDA, no such GPU index) before any work; returns ``self``.

        Verbs that run here call it; work sent to other machines (dask workers) checks the name only.
        """
        from ..models._device import check_device

        check_device(self.device)
        return self
