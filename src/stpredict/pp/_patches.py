"""Lazy, batched extraction of micron-sized windows from an image pyramid (the datasets over it: ``_patch_dataset``)."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dask
import dask.threaded
import numpy as np
from dask.optimization import cull

from .._settings import settings

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .._image import ImageLevel

__all__ = ["PatchExtractor", "choose_level"]

#: ARCHITECTURE.md: read from the coarsest level whose µm/px is at most this factor above the target.
LEVEL_TOLERANCE = 1.05
#: Threads resampling the patches of a batch (PIL releases the GIL); only in the process that built the reader.
RESAMPLE_THREADS = min(4, os.cpu_count() or 1)


def choose_level(level_mpp: list[tuple[float, float]], target_mpp: float) -> int:
    """Index of the coarsest level whose µm/px is ≤ 1.05 × ``target_mpp`` on both axes.

    If every level is coarser than the target, the finest (level 0) is used, at native resolution.

    Parameters
    ----------
    level_mpp
        ``(µm/px along x, µm/px along y)`` of each pyramid level, ordered from level 0 (finest) to the
        coarsest.
    target_mpp
        Resolution wanted, in µm/px: a window's side in µm divided by its output side in pixels.

    Returns
    -------
    Index into ``level_mpp`` of the level to read. Resampling it to ``target_mpp`` upsamples by at most 5 %,
    unless even level 0 is coarser than the target.

    Examples
    --------
    >>> from stpredict.pp import choose_level
    >>> choose_level([(0.25, 0.25), (0.5, 0.5), (1.0, 1.0)], 0.5)
    1
    """
    ok = [i for i, (mx, my) in enumerate(level_mpp) if max(mx, my) <= LEVEL_TOLERANCE * target_mpp]
    return max(ok) if ok else 0


class _ChunkCache:
    """LRU cache of decoded image chunks, bounded in bytes; thread-safe."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._data: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[int, int]) -> np.ndarray | None:
        with self._lock:
            arr = self._data.get(key)
            if arr is not None:
                self._data.move_to_end(key)
            return arr

    def put(self, key: tuple[int, int], arr: np.ndarray) -> None:
        with self._lock:
            if key in self._data:
                return
            self._data[key] = arr
            self._bytes += arr.nbytes
            while self._bytes > self.max_bytes and len(self._data) > 1:
                _, old = self._data.popitem(last=False)
                self._bytes -= old.nbytes

    def drop_rows_above(self, ky: int) -> None:
        """Forget the chunks of rows ``< ky`` (no longer needed by a spatially ordered pass)."""
        with self._lock:
            for k in [k for k in self._data if k[0] < ky]:
                self._bytes -= self._data.pop(k).nbytes


@dataclass(frozen=True)
class _Plan:
    level: int
    mpp_x: float
    mpp_y: float
    win_x: int
    win_y: int
    resampled: bool


class PatchExtractor:
    """Cut windows of ``size_um`` around centres and resample them to ``patch_px`` pixels.

    The window is read from the coarsest pyramid level whose µm/px is ≤ 1.05 × the target (``size_um /
    patch_px``), chunk by chunk through a bounded LRU cache, padded with white where it leaves the image,
    and resampled with antialiasing (PIL bilinear with a support scaled to the reduction). Nothing is read
    beyond the chunks the windows touch.

    Parameters
    ----------
    levels
        The image's pyramid levels (:func:`stpredict._image.image_levels`).
    centers
        ``(n, 2)`` window centres, x then y, in level-0 pixels.
    microns_per_pixel_xy
        Level-0 pixel size along x and y.
    size_um
        Window side in µm.
    patch_px
        Output side in pixels.
    pad_value
        Grey level of padding outside the image.
    cache_mb
        Memory bound of the chunk cache; ``None`` uses :attr:`stpredict.settings.chunk_cache_mb`.
    subpixel
        When the window is resampled, resample exactly a ``size_um`` square (PIL's resize of a fractional source
        box) whose pixels lie on the slide-wide lattice of output pixels: its origin is the multiple of
        ``size_um / patch_px`` µm nearest ``centre - size_um / 2``, so every window and tile read at one output
        resolution samples the same points (at most half an output pixel off centre). By default the window is
        snapped to whole pixels of the level read instead (up to half a level pixel off centre, its side rounded
        to whole level pixels, its pixels on a lattice of its own). Windows read without resampling are snapped
        to the level's pixels either way.
    """

    def __init__(
        self,
        levels: list[ImageLevel],
        centers: np.ndarray,
        microns_per_pixel_xy: tuple[float, float],
        *,
        size_um: float = 112.0,
        patch_px: int = 224,
        pad_value: int = 255,
        cache_mb: int | None = None,
        subpixel: bool = False,
    ) -> None:
        if size_um <= 0 or patch_px <= 0:
            msg = f"size_um and patch_px must be positive, got {size_um!r} and {patch_px!r}."
            raise ValueError(msg)
        self.levels = levels
        self.centers = np.asarray(centers, dtype=float).reshape(-1, 2)
        self.mpp0 = (float(microns_per_pixel_xy[0]), float(microns_per_pixel_xy[1]))
        self.size_um = float(size_um)
        self.patch_px = int(patch_px)
        self.pad_value = int(pad_value)
        self.target_mpp = self.size_um / self.patch_px
        self.subpixel = bool(subpixel)
        level_mpp = [(self.mpp0[0] * lv.factor_x, self.mpp0[1] * lv.factor_y) for lv in levels]
        i = choose_level(level_mpp, self.target_mpp)
        mx, my = level_mpp[i]
        wx = max(1, round(self.size_um / mx))
        wy = max(1, round(self.size_um / my))
        self.plan = _Plan(i, mx, my, wx, wy, resampled=(wx, wy) != (self.patch_px, self.patch_px))
        lvl = levels[i]
        self._array = lvl.array
        self._nc = min(3, int(lvl.array.shape[0]))
        self._chunks_y = np.cumsum((0, *lvl.array.chunks[1]))
        self._chunks_x = np.cumsum((0, *lvl.array.chunks[2]))
        self._cache_mb = settings.chunk_cache_mb if cache_mb is None else cache_mb
        self._cache = _ChunkCache(int(self._cache_mb) * 2**20)
        self._pid = os.getpid()
        self._dsk: dict | None = None  # the level's low-level task graph, built on the first read
        self._pool: ThreadPoolExecutor | None = None
        self._x0, self._y0 = self._origins(self.centers)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = None  # each worker process builds its own cache
        state["_dsk"] = None
        state["_pool"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._cache = _ChunkCache(int(self._cache_mb) * 2**20)

    def __len__(self) -> int:
        return len(self.centers)

    def with_centers(self, centers: np.ndarray) -> PatchExtractor:
        """The same reader over other window centres, sharing this one's chunk cache and task graph.

        A pass that reads many small sets of windows from one image (the tiles of a dense map) keeps the chunks
        it decoded for its neighbours instead of decoding them again for every set.
        """
        if self._dsk is None and self._array.numblocks[0] == 1:
            try:  # the level's task graph, built once here and shared by every copy (not once per tile)
                self._dsk = dict(self._array.__dask_graph__())
            except Exception:  # noqa: BLE001 - an exotic graph: each copy falls back on dask.compute
                self._dsk = {}
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)  # not copy.copy: pickling's __getstate__ would drop the cache
        other.centers = np.asarray(centers, dtype=float).reshape(-1, 2)
        other._x0, other._y0 = self._origins(other.centers)
        return other

    def _origins(self, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Window origins in the read level's pixels."""
        lvl = self.levels[self.plan.level]
        cx = centers[:, 0] / lvl.factor_x
        cy = centers[:, 1] / lvl.factor_y
        x0 = np.floor(cx - self.plan.win_x / 2 + 0.5).astype(np.int64)
        y0 = np.floor(cy - self.plan.win_y / 2 + 0.5).astype(np.int64)
        return x0, y0

    @property
    def level(self) -> int:
        """Pyramid level the windows are read from."""
        return self.plan.level

    @property
    def read_mpp(self) -> tuple[float, float]:
        """µm/px of the level read, before resampling."""
        return self.plan.mpp_x, self.plan.mpp_y

    @property
    def padded_fraction(self) -> np.ndarray:
        """Fraction of each window that lies outside the image and was padded."""
        h, w = self.levels[self.plan.level].shape_yx
        ix = np.clip(self._x0 + self.plan.win_x, 0, w) - np.clip(self._x0, 0, w)
        iy = np.clip(self._y0 + self.plan.win_y, 0, h) - np.clip(self._y0, 0, h)
        return 1.0 - (ix * iy) / float(self.plan.win_x * self.plan.win_y)

    def spatial_order(self) -> np.ndarray:
        """Order of the windows by chunk row, then column: consecutive batches share chunks."""
        cy = np.searchsorted(self._chunks_y, self._y0 + self.plan.win_y // 2, side="right")
        cx = np.searchsorted(self._chunks_x, self._x0 + self.plan.win_x // 2, side="right")
        return np.lexsort((self._x0, cx, cy))

    def _chunk_rows(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """First and last chunk row touched by the windows ``idx``."""
        h = self.levels[self.plan.level].shape_yx[0]
        y0 = self._y0[idx]
        ky0 = np.searchsorted(self._chunks_y, np.clip(y0, 0, h - 1), side="right") - 1
        ky1 = np.searchsorted(self._chunks_y, np.clip(y0 + self.plan.win_y - 1, 0, h - 1), side="right") - 1
        return ky0, ky1

    def _compute_blocks(self, missing: list[tuple[int, int]]) -> list[Any]:
        """Compute chunks ``(ky, kx)`` of the level.

        Runs the culled low-level graph directly: going through ``dask.compute`` on per-block collections costs
        milliseconds of graph building and tokenising per call, more than decoding a chunk.
        """
        # dask's thread pool does not survive a fork: DataLoader workers compute synchronously
        threaded = os.getpid() == self._pid
        arr = self._array
        if arr.numblocks[0] == 1:
            try:
                if self._dsk is None:
                    self._dsk = dict(arr.__dask_graph__())
                keys = [(arr.name, 0, ky, kx) for ky, kx in missing]
                if all(k in self._dsk for k in keys):
                    dsk, _ = cull(self._dsk, keys)
                    get = dask.threaded.get if threaded and len(keys) > 1 else dask.get
                    return list(get(dsk, keys))
            except Exception:  # noqa: BLE001 - an exotic graph: fall back on dask.compute below
                self._dsk = {}
        blocks = [arr.blocks[0, ky, kx] if arr.numblocks[0] == 1 else
                  arr[:, self._chunks_y[ky]:self._chunks_y[ky + 1],
                      self._chunks_x[kx]:self._chunks_x[kx + 1]] for ky, kx in missing]  # fmt: skip
        return list(dask.compute(*blocks, scheduler="threads" if threaded else "sync"))

    def _fetch(self, keys: list[tuple[int, int]]) -> dict[tuple[int, int], np.ndarray]:
        out: dict[tuple[int, int], np.ndarray] = {}
        missing = []
        for k in keys:
            arr = self._cache.get(k)
            if arr is None:
                missing.append(k)
            else:
                out[k] = arr
        if missing:
            values = self._compute_blocks(missing)
            for k, v in zip(missing, values, strict=True):
                v = np.ascontiguousarray(np.asarray(v)[: self._nc])
                self._cache.put(k, v)
                out[k] = v
        return out

    def read_raw(self, indices: np.ndarray | list[int]) -> np.ndarray:
        """Windows at the read level, before resampling: ``(b, 3, win_y, win_x)`` uint8."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        return self._read_region(self._x0[idx], self._y0[idx], self.plan.win_x, self.plan.win_y)

    def _read_subpixel(self, idx: np.ndarray) -> tuple[np.ndarray, list[tuple[float, float, float, float]]]:
        """Level pixels around the windows ``idx`` on the output lattice, and each one's fractional box in them."""
        wx, wy = self.size_um / self.plan.mpp_x, self.size_um / self.plan.mpp_y
        # the antialiasing filter reaches max(1, reduction) level pixels beyond the box
        pad = int(np.ceil(max(wx, wy) / self.patch_px)) + 1
        step = self.size_um / self.patch_px  # the output lattice, from the image origin
        origin_um = np.round((self.centers[idx] * np.asarray(self.mpp0) - self.size_um / 2) / step) * step
        fx = origin_um[:, 0] / self.plan.mpp_x
        fy = origin_um[:, 1] / self.plan.mpp_y
        x0 = np.floor(fx).astype(np.int64) - pad
        y0 = np.floor(fy).astype(np.int64) - pad
        raw = self._read_region(x0, y0, int(np.ceil(wx)) + 2 * pad + 1, int(np.ceil(wy)) + 2 * pad + 1)
        bx, by = fx - x0, fy - y0
        return raw, [(float(a), float(b), float(a + wx), float(b + wy)) for a, b in zip(bx, by, strict=True)]

    def _read_region(self, x0: np.ndarray, y0: np.ndarray, wx: int, wy: int) -> np.ndarray:
        """``(b, 3, wy, wx)`` uint8 level pixels from origins ``(x0, y0)``, padded outside the image."""
        h, w = self.levels[self.plan.level].shape_yx
        out = np.full((len(x0), 3, wy, wx), self.pad_value, dtype=np.uint8)
        ky0 = np.searchsorted(self._chunks_y, np.clip(y0, 0, h - 1), side="right") - 1
        ky1 = np.searchsorted(self._chunks_y, np.clip(y0 + wy - 1, 0, h - 1), side="right") - 1
        kx0 = np.searchsorted(self._chunks_x, np.clip(x0, 0, w - 1), side="right") - 1
        kx1 = np.searchsorted(self._chunks_x, np.clip(x0 + wx - 1, 0, w - 1), side="right") - 1
        inside = (x0 + wx > 0) & (x0 < w) & (y0 + wy > 0) & (y0 < h)
        keys = sorted(
            {
                (ky, kx)
                for j in np.flatnonzero(inside)
                for ky in range(ky0[j], ky1[j] + 1)
                for kx in range(kx0[j], kx1[j] + 1)
            }
        )
        chunks = self._fetch(keys)
        for j in np.flatnonzero(inside):
            for ky in range(ky0[j], ky1[j] + 1):
                cy0, cy1 = self._chunks_y[ky], self._chunks_y[ky + 1]
                ys, ye = max(y0[j], cy0), min(y0[j] + wy, cy1)
                for kx in range(kx0[j], kx1[j] + 1):
                    cx0, cx1 = self._chunks_x[kx], self._chunks_x[kx + 1]
                    xs, xe = max(x0[j], cx0), min(x0[j] + wx, cx1)
                    if ys >= ye or xs >= xe:
                        continue
                    c = chunks[(ky, kx)]
                    out[j, : self._nc, ys - y0[j] : ye - y0[j], xs - x0[j] : xe - x0[j]] = c[
                        :, ys - cy0 : ye - cy0, xs - cx0 : xe - cx0
                    ]
        if self._nc < 3:  # greyscale read as RGB only if the caller allowed it upstream
            out[:, self._nc :] = out[:, :1]
        return out

    def read(self, indices: np.ndarray | list[int]) -> np.ndarray:
        """Windows resampled to ``patch_px``: ``(b, 3, patch_px, patch_px)`` uint8."""
        if not self.plan.resampled:
            return self.read_raw(indices)
        from PIL import Image

        p = self.patch_px
        if self.subpixel:
            raw, boxes = self._read_subpixel(np.asarray(indices, dtype=np.int64).reshape(-1))
        else:
            raw = self.read_raw(indices)
            boxes = [None] * raw.shape[0]
        n = raw.shape[0]
        out = np.empty((n, 3, p, p), dtype=np.uint8)

        def resample(j: int) -> None:
            # channel by channel as 8-bit planes: no HWC transposes, and PIL resamples 3 planes instead of
            # the 4 of its RGBX layout; same antialiased bilinear filter, bit-identical to an RGB resize
            for c in range(3):
                plane = Image.fromarray(raw[j, c])
                out[j, c] = np.asarray(plane.resize((p, p), Image.Resampling.BILINEAR, box=boxes[j]))

        if n > 1 and RESAMPLE_THREADS > 1 and os.getpid() == self._pid:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(RESAMPLE_THREADS, thread_name_prefix="stpredict-patches")
            list(self._pool.map(resample, range(n)))
        else:
            for j in range(n):
                resample(j)
        return out

    def batches(
        self, batch_size: int | None = None, *, order: np.ndarray | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(indices, patches)`` batches in spatial order (or ``order``)."""
        bs = batch_size or settings.batch_size
        spatial = order is None
        order = self.spatial_order() if spatial else np.asarray(order)
        if spatial and len(order):
            # in spatial order, once no later window touches a chunk row it can leave the cache: the memory
            # held follows the slide's width, not its area
            ky0, _ = self._chunk_rows(order)
            still_needed = np.minimum.accumulate(ky0[::-1])[::-1]
        for s in range(0, len(order), bs):
            idx = order[s : s + bs]
            yield idx, self.read(idx)
            if spatial and s + bs < len(order):
                self._cache.drop_rows_above(int(still_needed[s + bs]))
