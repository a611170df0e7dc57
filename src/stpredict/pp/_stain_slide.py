"""Stain normalisation of a whole slide: one per-pixel map from the slide's own stain statistics to a reference.

A slide's stain statistics (Macenko stain vectors and 99th-percentile concentrations, or Reinhard's CIELAB
mean and sd) are estimated once from a sample of its tissue pixels (:func:`tissue_pixels`); with a
reference's (a :class:`~stpredict.pp.StainNormalizer` fitted on the training slides' pixels) they define one
fixed per-pixel map (:class:`SlideStainMap`), applied lazily to every pyramid level
(:func:`normalized_levels`). Every reader of pixels — windows, dense feature maps, pixel-trained predictors —
then sees the same normalised slide, and a window's pixels do not depend on which other pixels it was read
with (unlike normalising each patch on its own statistics).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ._stain import I0, rgb_to_od

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .._image import ImageLevel
    from ._stain import StainNormalizer

__all__ = ["SlideStainMap", "hed_jitter_map", "normalized_levels", "slide_stain_map", "tissue_pixels"]

#: pixel size (µm) the stain statistics are estimated at: the same physical resolution on every slide
STAIN_MPP = 2.0
#: at most this many pixels of a level are read to estimate the statistics
_MAX_READ = 16_000_000
#: optical density of every uint8 level (:func:`~stpredict.pp.rgb_to_od`), looked up per pixel
_OD_LUT = rgb_to_od(np.arange(256, dtype=np.uint8))


def tissue_pixels(
    levels: Sequence[ImageLevel],
    microns_per_pixel_xy: Sequence[float],
    *,
    max_pixels: int = 200_000,
    beta: float = 0.15,
    seed: int = 0,
) -> np.ndarray:
    """A random sample of a slide's tissue pixels, ``(3, n, 1)`` uint8, for its stain statistics.

    Read from the coarsest pyramid level at most ``STAIN_MPP`` (2 µm) per pixel, or a coarser one if that level
    exceeds 16 M pixels (then every pixel of a strided subsample); tissue is every pixel whose optical density
    exceeds ``beta`` on all three channels (Macenko's rule: glass and faint background are left out).

    Parameters
    ----------
    levels
        The image's pyramid levels (:func:`stpredict._image.image_levels`).
    microns_per_pixel_xy
        Level-0 pixel size.
    max_pixels
        Sample size (all tissue pixels when there are fewer).
    beta
        Optical-density threshold of tissue.
    seed
        Seed of the sample.

    Returns
    -------
    ``(3, n, 1)`` uint8: RGB of ``n`` tissue pixels, shaped as an image so :meth:`StainNormalizer.fit` takes it.
    """
    from ._patches import choose_level

    mpp = [
        (float(microns_per_pixel_xy[0]) * lv.factor_x, float(microns_per_pixel_xy[1]) * lv.factor_y) for lv in levels
    ]
    i = choose_level(mpp, STAIN_MPP)
    while i + 1 < len(levels) and np.prod(levels[i].shape_yx) > _MAX_READ:
        i += 1
    arr = levels[i].array[:3]
    h, w = levels[i].shape_yx
    step = max(1, int(np.ceil(np.sqrt(h * w / _MAX_READ))))
    rgb = np.asarray(arr[:, ::step, ::step].compute(), dtype=np.uint8).reshape(3, -1)
    dense = beta < _OD_LUT  # per uint8 value: the same test as rgb_to_od(rgb) > beta, without a float copy
    tissue = np.flatnonzero(dense[rgb[0]] & dense[rgb[1]] & dense[rgb[2]])
    if len(tissue) > max_pixels:
        tissue = np.sort(np.random.default_rng(seed).choice(tissue, max_pixels, replace=False))
    return np.ascontiguousarray(rgb[:, tissue, None])


@dataclass(frozen=True)
class SlideStainMap:
    """The per-pixel map taking one slide's stains onto a reference's, for uint8 ``(c, h, w)`` blocks.

    ``"macenko"``: in optical density, each pixel's hematoxylin and eosin concentrations (from the slide's own
    stain vectors) are rescaled so that the slide's 99th percentiles match the reference's and re-expressed with
    the reference's vectors; the part of the optical density the two stains do not explain is kept as it is,
    so normalising a slide to its own statistics is the identity. As one matrix: ``od' = od @ matrix``.
    ``"hed_jitter"`` (stain augmentation): ``od' = od @ matrix + offset``, from :func:`hed_jitter_map`.
    ``"reinhard"``: each CIELAB channel's mean and sd over the slide's tissue are matched to the reference's.
    Channels past the third (alpha) pass through.

    Attributes
    ----------
    method
        ``"macenko"``, ``"hed_jitter"`` or ``"reinhard"``.
    matrix
        ``(3, 3)`` optical-density map (Macenko, HED jitter).
    offset
        ``(3,)`` optical density added after ``matrix`` (HED jitter).
    lab_from, lab_to
        ``(2, 3)`` mean and sd of the slide and of the reference in CIELAB (Reinhard).
    record
        What identifies the map in embedding records (method and statistics, rounded).
    """

    #: largest entry of ``matrix - I`` below which a Macenko map is the identity on uint8 pixels
    IDENTITY_TOL = 1e-9

    method: str
    matrix: np.ndarray | None = None
    offset: np.ndarray | None = None
    lab_from: np.ndarray | None = None
    lab_to: np.ndarray | None = None
    record: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def is_identity(self) -> bool:
        """Whether the map leaves every uint8 pixel as it is (a slide normalised onto its own statistics).

        Only a matrix map without offset within :attr:`IDENTITY_TOL` of the identity; its uint8 round trip through
        optical density is exact (checked over every RGB value in the tests).
        """
        if self.matrix is None or self.offset is not None:
            return False
        return bool(np.abs(np.asarray(self.matrix, dtype=float) - np.eye(3)).max() <= self.IDENTITY_TOL)

    def token(self) -> str:
        """A digest of the map's exact parameters (names the normalised arrays, so equal maps share dask keys)."""
        import hashlib

        h = hashlib.sha1(self.method.encode(), usedforsecurity=False)
        for a in (self.matrix, self.offset, self.lab_from, self.lab_to):
            h.update(b"-" if a is None else np.ascontiguousarray(a, dtype=np.float64).tobytes())
        return h.hexdigest()[:16]

    def __call__(self, block: np.ndarray) -> np.ndarray:
        """Normalise a ``(c, h, w)`` uint8 block (c ≥ 3)."""
        block = np.asarray(block)
        if block.size == 0:
            return block
        out = block.copy()
        rgb = block[:3]
        if self.matrix is not None:
            od = _OD_LUT[rgb]  # (3, h, w)
            od2 = np.einsum("chw,cd->dhw", od, self.matrix.astype(np.float32), optimize=True)
            if self.offset is not None:
                od2 += np.asarray(self.offset, dtype=np.float32)[:, None, None]
            x = (np.float32(I0 + 1.0)) * np.exp(-od2) - 1.0
        else:
            from skimage.color import lab2rgb, rgb2lab

            lab = rgb2lab(np.moveaxis(rgb, 0, -1))
            (m_s, s_s), (m_r, s_r) = self.lab_from, self.lab_to
            lab = (lab - m_s) / s_s * s_r + m_r
            x = np.moveaxis(lab2rgb(lab), -1, 0) * 255.0
        out[:3] = np.clip(np.round(x), 0, 255).astype(np.uint8)
        return out


def slide_stain_map(reference: StainNormalizer, own: StainNormalizer) -> SlideStainMap:
    """The map from a slide's own fitted statistics ``own`` onto ``reference`` (both fitted, same method)."""
    if reference.method != own.method:
        msg = f"reference and slide statistics use different methods ({reference.method!r}, {own.method!r})."
        raise ValueError(msg)
    if reference.method == "macenko":
        S, R = np.asarray(own.stains, float), np.asarray(reference.stains, float)
        A = np.linalg.pinv(S.T).T  # (3, 2): concentrations c = od @ A
        k = np.asarray(reference.max_conc, float) / np.maximum(np.asarray(own.max_conc, float), 1e-6)
        M = np.eye(3) - A @ S + A @ np.diag(k) @ R
        rec = {"method": "macenko", "slide_stains": S, "slide_max_conc": np.asarray(own.max_conc, float)}
        return SlideStainMap("macenko", matrix=M, record=_rounded(rec))
    lab_from = np.stack([own.lab_mean, own.lab_std]).astype(float)
    lab_to = np.stack([reference.lab_mean, reference.lab_std]).astype(float)
    rec = {"method": "reinhard", "slide_lab": lab_from}
    return SlideStainMap("reinhard", lab_from=lab_from, lab_to=lab_to, record=_rounded(rec))


def hed_jitter_map(alpha: np.ndarray, beta: np.ndarray) -> SlideStainMap:
    """A slide re-stained in the hematoxylin–eosin–DAB basis: each concentration ``c`` becomes ``alpha · c + beta``.

    The HED jitter of Tellez et al. (2018), applied to a whole slide (one draw per slide): the optical density is
    decomposed on the Ruifrok–Johnston vectors (:data:`~stpredict.pp.RUIFROK_HED`, a basis of the three colour
    channels, so nothing is lost), each concentration scaled by ``alpha`` and shifted by ``beta`` (optical-density
    units), and recomposed.

    Parameters
    ----------
    alpha
        ``(3,)`` factors of the H, E and DAB concentrations.
    beta
        ``(3,)`` shifts of the concentrations.
    """
    from ._stain import RUIFROK_HED

    hed = np.asarray(RUIFROK_HED, dtype=float)
    alpha, beta = np.asarray(alpha, dtype=float), np.asarray(beta, dtype=float)
    matrix = np.linalg.inv(hed) @ np.diag(alpha) @ hed  # row vectors: c = od @ inv(hed), od = c @ hed
    rec = {"method": "hed_jitter", "alpha": alpha, "beta": beta}
    return SlideStainMap("hed_jitter", matrix=matrix, offset=beta @ hed, record=_rounded(rec))


def normalized_levels(levels: Sequence[ImageLevel], stain_map: SlideStainMap) -> list[ImageLevel]:
    """Every pyramid level seen through ``stain_map``, lazily (block by block, channels in one block).

    Each level's dask name is derived from its source's and the map's exact parameters (:meth:`SlideStainMap.token`),
    so the same slide through the same map is the same array in every call (what kept fits are keyed by), and a
    different reference gives a different name. Normalised blocks are kept in a bounded cache shared by the levels (:attr:`stpredict.settings.chunk_cache_mb`),
    so the many reads a dense map makes of one block (a tile at a time) normalise it once.
    """
    from .._image import ImageLevel
    from .._settings import settings

    blocks = _BlockCache(stain_map, int(settings.chunk_cache_mb) * 2**20)
    token = stain_map.token()
    out = []
    for i, lv in enumerate(levels):
        arr = lv.array
        if arr.numblocks[0] != 1:
            arr = arr.rechunk({0: -1})
        mapped = arr.map_blocks(
            blocks, level=i, dtype=np.uint8, meta=np.empty((0, 0, 0), dtype=np.uint8), name=f"stain-{token}-{arr.name}"
        )
        out.append(ImageLevel(mapped, factor_x=lv.factor_x, factor_y=lv.factor_y, name=lv.name))
    return out


class _BlockCache:
    """``stain_map`` applied to blocks, the results kept (least recently used first out) up to ``max_bytes``."""

    def __init__(self, stain_map: SlideStainMap, max_bytes: int) -> None:
        self.stain_map, self.max_bytes = stain_map, max_bytes
        self._store: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __call__(self, block: np.ndarray, level: int = 0, block_info: dict | None = None) -> np.ndarray:
        key = None if block_info is None else (level, *block_info[None]["chunk-location"])
        if key is not None:
            with self._lock:
                hit = self._store.get(key)
                if hit is not None:
                    self._store.move_to_end(key)
                    return hit
        out = self.stain_map(block)
        if key is not None and out.nbytes <= self.max_bytes:
            with self._lock:
                if key not in self._store:
                    self._store[key] = out
                    self._bytes += out.nbytes
                while self._bytes > self.max_bytes:
                    _, old = self._store.popitem(last=False)
                    self._bytes -= old.nbytes
        return out

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers build their own cache
        return {"stain_map": self.stain_map, "max_bytes": self.max_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["stain_map"], state["max_bytes"])


def _rounded(rec: dict[str, Any]) -> dict[str, Any]:
    return {k: (np.round(v, 5).tolist() if isinstance(v, np.ndarray) else v) for k, v in rec.items()}
