"""The embedding loop: backbone features of windows read lazily and batched, on CPU or CUDA."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import numpy as np

from .._logging import get_logger
from .._settings import settings

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from ..models.backbones import Backbone

__all__ = ["compute_embeddings", "prefetched"]

logger = get_logger(__name__)


def _loader_workers(nw: int) -> int:
    """``nw`` DataLoader workers, or 0 in a daemonic process (a Dask worker), which cannot start children.

    The cohort verbs and ``client=`` run the embedding loop inside Dask's worker processes, where
    ``DataLoader(num_workers > 0)`` fails with "daemonic processes are not allowed to have children"; there the
    patches are read in the worker itself (and, on CUDA, ahead in a thread), and Dask's workers are the
    parallelism.
    """
    import multiprocessing

    if nw > 0 and multiprocessing.current_process().daemon:
        logger.info("num_workers=%d: DataLoader workers cannot start in a daemonic process (a Dask worker); "
                    "reading patches in this process.", nw)  # fmt: skip
        return 0
    return nw


def compute_embeddings(
    slide_levels: list,
    centers_px: np.ndarray,
    mpp_xy: tuple[float, float],
    backbone: Backbone,
    *,
    patch_size_um: float,
    device: Any = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    progress: bool | None = None,
    desc: str = "embed",
    prefetch: bool | None = None,
    sync_every: int = 8,
) -> np.ndarray:
    """Backbone features of windows around ``centers_px``, read lazily and batched.

    On CUDA, batches are read ahead in a thread (without DataLoader workers), cross to the device as uint8
    from pinned memory, and their features are copied back every ``sync_every`` batches; ``prefetch``
    forces the reading thread on or off (default: on CUDA only).
    """
    from tqdm.auto import tqdm

    from ..pp._patch_dataset import PatchDataset
    from ..pp._patches import PatchExtractor

    n = len(centers_px)
    out = np.zeros((n, backbone.dim), dtype=np.float32)
    if n == 0:
        return out
    read_um, patch_px = backbone.input_spec(patch_size_um)
    subpixel = bool(getattr(backbone, "subpixel_windows", False))
    ext = PatchExtractor(slide_levels, centers_px, mpp_xy, size_um=read_um, patch_px=patch_px, subpixel=subpixel)
    bs = batch_size or settings.batch_size
    nw = _loader_workers(settings.num_workers if num_workers is None else int(num_workers))
    show = settings.progress if progress is None else progress
    dev = None
    if hasattr(backbone, "to"):
        from ..models._device import resolve_device

        dev = resolve_device(device)
        backbone.to(dev)
    cuda = dev is not None and dev.type == "cuda"
    # torch backbones leave features on the device (CPU included: one code path everywhere)
    on_device = hasattr(backbone, "embed_tensor")
    bar = tqdm(total=n, disable=not show, desc=desc, unit="spot")
    if nw > 0:
        import torch

        from ..models._device import loader_kwargs, resolve_device

        kw = loader_kwargs(dev or resolve_device("cpu"), nw)
        loader = torch.utils.data.DataLoader(PatchDataset(ext, batch_size=bs), batch_size=None, **kw)
        # keep the (pinned) tensors: they go to the device asynchronously
        batches = ((np.asarray(i), b if on_device else b.numpy()) for i, b in loader)
    else:
        batches = ext.batches(bs)
        if cuda if prefetch is None else prefetch:
            # without workers, read the next batches in a thread while the device computes this one
            batches = prefetched(batches, depth=2)
    pending: list[tuple[np.ndarray, Any]] = []

    def flush() -> None:
        import torch

        if pending:
            rows = np.concatenate([i for i, _ in pending])
            out[rows] = torch.cat([t for _, t in pending]).float().cpu().numpy()
            pending.clear()

    with _cudnn_benchmark(on=cuda):
        try:
            for idx, batch in batches:
                if on_device:
                    # queue a few batches on the device and copy their features back together: one host
                    # synchronisation per ``sync_every`` batches instead of one per batch
                    pending.append((idx, backbone.embed_tensor(batch, device=dev)))
                    if len(pending) >= sync_every:
                        flush()
                else:
                    out[idx] = backbone.embed(batch, device=dev)
                bar.update(len(idx))
            flush()
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()
            bar.close()
    return out


@contextlib.contextmanager
def _cudnn_benchmark(*, on: bool) -> Iterator[None]:
    """Turn on cuDNN autotuning for the fixed batch shapes of an embedding loop, restored afterwards."""
    if not on:
        yield
        return
    import torch

    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def prefetched(iterable: Iterable[Any], *, depth: int = 2) -> Iterator[Any]:
    """Iterate ``iterable`` in a background thread, up to ``depth`` items ahead of the consumer.

    Patch reading (numpy, dask, zarr decompression) releases the GIL, so it overlaps the device's work on the
    previous batch. Exceptions in the reader are raised in the consumer; closing the generator stops the
    reader.
    """
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    done = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in iterable:
                if not put(("item", item)):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            put(("error", e))
            return
        put(("done", done))

    thread = threading.Thread(target=work, name="stpredict-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, item = q.get()
            if kind == "done":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
