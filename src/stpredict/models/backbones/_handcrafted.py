"""A weight-free backbone: stain, colour, texture and nuclei statistics (scikit-image / scipy).

Every feature is the mean of a per-pixel map over a window, so the same features can be computed for
any number of windows from one pass over the slide: the maps are summed into small cells once
(:meth:`HandcraftedBackbone.feature_map`) and every window is read from them
(:meth:`HandcraftedBackbone.map_features`).

Beside the base set, ``features=`` adds the groups of :mod:`._texture` (colour levels, LBP, GLCM, opened-mask
nuclei: the hand-crafted set commonly used across scanners), built the same way. They are not in the default:
measured with ridge (``benchmarks/accuracy.py --handcrafted``, ``docs/benchmarks.md``), every group lowers
leave-one-individual-out accuracy on mob without stain handling (0.442 → 0.423–0.434) because their fixed colour
and hematoxylin levels read differently on each scan; after Macenko normalisation all groups together raise it
(0.444 → 0.461, every held-out section ≥ its base score) at about 3× the embedding time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage as ndi

from ._base import Backbone
from ._cellmap import build_cell_map, map_bounds
from ._texture import GROUPS, Images, MapGroup

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ._cellmap import CellMap

__all__ = ["HandcraftedBackbone"]

#: per-pixel maps, in order
MAP_NAMES = (
    "od_r",
    "od_g",
    "od_b",
    "hematoxylin",
    "eosin",
    "dab",
    "grey",
    "saturation",
    "grad_grey",
    "grad_h",
    "blob_h",
    "nuclei_mask",
    "nuclei_count",
    "tissue",
)
#: maps whose window standard deviation is also a feature
STD_MAPS = ("hematoxylin", "eosin", "grey", "blob_h")
_STD_IDX = [MAP_NAMES.index(n) for n in STD_MAPS]


def _sobel(a: np.ndarray, axis: int) -> np.ndarray:
    """Sobel derivative of ``(b, h, w)`` images along ``axis`` (1 or 2), image by image.

    ``scipy.ndimage.sobel`` smooths along *every* other axis, the batch axis included, which would mix
    neighbouring patches of a batch: the derivative is taken along ``axis`` and the ``[1, 2, 1]`` smoothing
    along the other image axis only.
    """
    other = 3 - axis
    d = ndi.correlate1d(a, [-1.0, 0.0, 1.0], axis=axis)
    return ndi.correlate1d(d, [1.0, 2.0, 1.0], axis=other)


def pixel_maps(rgb: np.ndarray, mpp: float = 1.0) -> np.ndarray:
    """Per-pixel base maps of RGB images ``(b, 3, h, w)`` uint8 → ``(b, n_maps, h, w)`` float32 (:data:`MAP_NAMES`).

    Colour deconvolution uses the Ruifrok–Johnston HED matrix (:data:`stpredict.pp.RUIFROK_HED`);
    texture is Sobel gradient energy; nuclei are hematoxylin blobs (difference of Gaussians at the scale of a
    nucleus, ~3 µm) and their local maxima (counts). Filters are sized in µm via ``mpp``.
    """
    return _base_maps(Images(rgb, mpp))


def _base_maps(im: Images) -> np.ndarray:
    """:func:`pixel_maps` of a batch's shared intermediate images."""
    mpp, x, od, hed, grey = im.mpp, im.x, im.od, im.hed, im.grey
    mx, mn = x.max(axis=1), x.min(axis=1)
    sat = (mx - mn) / np.maximum(mx, 1e-3)
    s_fine = (0, 0.7 / mpp, 0.7 / mpp)

    def grad(a: np.ndarray) -> np.ndarray:
        a = ndi.gaussian_filter(a, s_fine)
        return np.hypot(_sobel(a, axis=1), _sobel(a, axis=2)) / 8.0

    hem = hed[:, 0]
    s1, s2 = 1.5 / mpp, 4.0 / mpp
    # the positive part of the difference of Gaussians: a zero-sum filter's window mean only measures the
    # hematoxylin within its reach of the window's edge (the inside cancels), not the blobs inside (version 3)
    blob = np.maximum(ndi.gaussian_filter(hem, (0, s1, s1)) - ndi.gaussian_filter(hem, (0, s2, s2)), 0.0)
    nuclei_mask = (blob > 0.02) & (hem > 0.05)
    peak = (blob == ndi.maximum_filter(blob, size=(1, max(3, round(5 / mpp)), max(3, round(5 / mpp))))) & nuclei_mask
    tissue = (grey < 0.85) | (sat > 0.12)
    maps = np.stack(
        [
            od[:, 0],
            od[:, 1],
            od[:, 2],
            hed[:, 0],
            hed[:, 1],
            hed[:, 2],
            grey,
            sat,
            grad(grey),
            grad(hem),
            blob,
            nuclei_mask.astype(np.float32),
            peak.astype(np.float32) * (100.0 * mpp * mpp),  # nuclei per 100 µm²
            tissue.astype(np.float32),
        ],
        axis=1,
    )
    return maps.astype(np.float32, copy=False)


def _base_pixels(im: Images) -> np.ndarray:
    """The base maps, then the squares of :data:`STD_MAPS`."""
    maps = _base_maps(im)
    return np.concatenate([maps, maps[:, _STD_IDX] ** 2], axis=1)


def _base_reduce(v: np.ndarray) -> np.ndarray:
    """Window means of :func:`_base_pixels` → the maps' means and the standard deviations of STD_MAPS."""
    mean = v[:, : len(MAP_NAMES)]
    std = np.sqrt(np.maximum(v[:, len(MAP_NAMES) :] - mean[:, _STD_IDX] ** 2, 0.0))
    return np.concatenate([mean, std], axis=1)


#: the base group: the features of version 2
BASE = MapGroup(
    "base",
    tuple(f"mean_{n}" for n in MAP_NAMES) + tuple(f"std_{n}" for n in STD_MAPS),
    len(MAP_NAMES) + len(STD_MAPS),
    _base_pixels,
    _base_reduce,
)
#: every group, by name, in their canonical order
ALL_GROUPS = {"base": BASE, **GROUPS}
#: a patch batch is turned into per-pixel maps this many patches at a time (bounds the memory of the maps)
_CHUNK = 16


class HandcraftedBackbone(Backbone):
    """Weight-free features: stain (HED), colour, texture and nuclei statistics around a window.

    Per-pixel maps (14): optical density per channel; H, E and DAB concentrations from Ruifrok–Johnston
    colour deconvolution (``skimage.color.hed_from_rgb``); grey level; saturation; gradient energy of grey
    and of hematoxylin; a hematoxylin blob response (the positive part of a difference of Gaussians at nucleus scale); a nuclei mask;
    nuclei centres (nuclei per 100 µm²); a tissue mask. Each feature is the mean of a map, or the standard
    deviation of H, E, grey and blob response (4), over three concentric views — the context
    (``context`` × the window, default 336 µm), the window (112 µm) and its centre (56 µm): 3 × 18 = 54
    features. Pixels are analysed at ``mpp`` µm/px (1 µm/px), on one slide-wide lattice: a resampled window is
    read exactly there (:attr:`subpixel_windows`), as the dense map's tiles are, so both see the same pixels.

    The context view was adopted after measuring ridge leave-one-section-out on both real datasets here:
    mean per-gene PCC 0.155 → 0.19 on her2st and 0.436 → 0.477 on the mouse olfactory bulb (window only →
    window + 3× context), the multi-scale idea of TRIPLEX.

    Parameters
    ----------
    window_um
        Default window side in µm (the spot's view).
    context
        Side of the context view as a multiple of the window (1 disables it).
    mpp
        Analysis resolution in µm/px.
    features
        Feature groups, in order: ``"base"`` (the 18 above) and any of the optional groups of
        :mod:`~stpredict.models.backbones._texture` — ``"colour"`` (RGB moments, grey/H/E level fractions),
        ``"lbp"`` (uniform LBP histograms at two radii), ``"glcm"`` (co-occurrence statistics at two distances
        over four angles), ``"nuclei"`` (count and area from an opened hematoxylin mask). Each group's features
        come from window means of its per-pixel maps, so every group has a dense path.
    """

    name = "handcrafted"
    has_dense = True
    subpixel_windows = True

    def __init__(
        self,
        window_um: float = 112.0,
        context: float = 3.0,
        mpp: float = 1.0,
        *,
        features: Sequence[str] = ("base",),
    ) -> None:
        if isinstance(features, str):
            features = (features,)
        features = tuple(features)
        unknown = [f for f in features if f not in ALL_GROUPS]
        if not features or unknown or len(set(features)) < len(features):
            msg = (
                f"HandcraftedBackbone(features={features!r}): give each feature group once, from "
                f"{', '.join(map(repr, ALL_GROUPS))}"
                + (f"; unknown: {', '.join(map(repr, unknown))}." if unknown else ".")
            )
            raise ValueError(msg)
        self.default_patch_um = float(window_um)
        self.context = float(context)
        self.mpp = float(mpp)
        self.features = features
        self.groups: list[MapGroup] = [ALL_GROUPS[f] for f in features]
        self.n_channels = sum(g.n_channels for g in self.groups)
        self.patch_px = round(self.default_patch_um * self.context / self.mpp)
        #: views as fractions of the read patch: context, window, centre
        self.views = (1.0, 1.0 / self.context, 0.5 / self.context) if self.context > 1 else (1.0, 0.5)
        self.dim = len(self.views) * sum(len(g.features) for g in self.groups)

    def input_spec(self, size_um: float) -> tuple[float, int]:
        """Read ``context × size_um`` at ``mpp`` µm/px."""
        read = size_um * self.context
        return read, round(read / self.mpp)

    @property
    def feature_names(self) -> list[str]:
        """Names of the features."""
        base = [n for g in self.groups for n in g.features]
        names = ("context", "window", "centre") if len(self.views) == 3 else ("window", "centre")
        return [f"{b}_{v}" for v in names for b in base]

    def _pixels(self, rgb: np.ndarray) -> np.ndarray:
        """Per-pixel channels of every group of ``(b, 3, h, w)`` uint8 images → ``(b, n_channels, h, w)``."""
        im = Images(rgb, self.mpp)
        return np.concatenate([g.pixels(im) for g in self.groups], axis=1)

    def _reduce(self, means: np.ndarray) -> np.ndarray:
        """Window means of the channels ``(n, n_channels)`` → features ``(n, dim / n_views)``."""
        out, start = [], 0
        for g in self.groups:
            out.append(g.reduce(means[:, start : start + g.n_channels]))
            start += g.n_channels
        return np.concatenate(out, axis=1)

    def embed(self, patches: np.ndarray, *, device: Any = None) -> np.ndarray:
        """Features of ``(b, 3, P, P)`` uint8 patches covering the context view at ``mpp`` µm/px."""
        p = np.asarray(patches)
        out = []
        for i in range(0, len(p), _CHUNK):
            maps = self._pixels(p[i : i + _CHUNK])
            h = maps.shape[-1]
            feats = []
            for frac in self.views:
                k = max(1, round(h * frac))
                a = (h - k) // 2
                feats.append(self._reduce(maps[:, :, a : a + k, a : a + k].mean(axis=(2, 3))))
            out.append(np.concatenate(feats, axis=1))
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(out).astype(np.float32)

    def params(self) -> dict[str, Any]:
        """Name, dimension, views, analysis resolution and feature groups (when not the base set alone)."""
        out = super().params()
        # version 2: Sobel gradients image by image (version 1's depended on the batch): caches of 1 are stale;
        # version 3: the blob map is the positive part of the DoG, and resampled windows are read exactly where
        # asked (not snapped to the image's pixels), as the dense map's tiles are
        out.update({"mpp": self.mpp, "context": self.context, "weights": "none (hand-crafted)", "version": 3})
        if self.features != ("base",):
            out["features"] = list(self.features)
        return out

    def map_pixels(self, rgb: np.ndarray) -> np.ndarray:
        """Per-pixel channels of a ``(1, 3, h, w)`` tile, every group's in turn (:attr:`n_channels`)."""
        return self._pixels(rgb)[0]

    def read_um(self, window_um: float) -> float:
        """Side of the largest view (the context) of a window of ``window_um``: what :meth:`input_spec` reads."""
        return self.input_spec(window_um)[0]

    def feature_map(
        self,
        read_tile: Callable[[np.ndarray, float, int], np.ndarray],
        lo_um: np.ndarray,
        hi_um: np.ndarray,
        *,
        cell_um: float = 4.0,
        tile_um: float = 1024.0,
        progress: bool = False,
    ) -> CellMap:
        """The slide's per-pixel maps over ``[lo_um, hi_um]``, as cell means (one pass, tile by tile).

        Windows are then read from it with :meth:`map_features`. Memory: the map holds
        ``n_channels × area / cell_um²`` float32 values (18 channels for the base set: about 250 MB for a 6.5 mm
        capture area at 4 µm).
        """
        return build_cell_map(
            self.map_pixels,
            read_tile,
            lo_um,
            hi_um,
            n_channels=self.n_channels,
            mpp=self.mpp,
            cell_um=cell_um,
            tile_um=tile_um,
            progress=progress,
            desc="hand-crafted maps",
            point_channels=self._point_channels(),
        )

    def _point_channels(self) -> list[int]:
        """Channels of nucleus centres (the base set's ``nuclei_count``), kept as points by the dense map."""
        start = 0
        for g in self.groups:
            if g.name == BASE.name:  # by name: a backbone sent to a Dask worker holds copies of the groups
                return [start + MAP_NAMES.index("nuclei_count")]
            start += g.n_channels
        return []

    def map_features(self, cmap: CellMap, centers_um: np.ndarray, window_um: float) -> np.ndarray:
        """Features of windows of ``window_um`` at ``centers_um`` (µm), read from a :meth:`feature_map`."""
        read_um = self.read_um(window_um)
        sides = [frac * read_um for frac in self.views]
        feats = [self._reduce(vals) for vals in cmap.window_means(centers_um, sides)]
        return np.concatenate(feats, axis=1).astype(np.float32)

    def dense(
        self,
        read_tile: Callable[[np.ndarray, float, int], np.ndarray],
        centers_um: np.ndarray,
        *,
        window_um: float,
        tile_um: float = 1024.0,
        cell_um: float = 4.0,
        progress: bool = False,
    ) -> np.ndarray:
        """Features of windows of ``window_um`` centred at many points, from one pass over the slide.

        :meth:`feature_map` over the windows' extent, then :meth:`map_features`. Agrees with :meth:`embed` of
        the same windows (read on the same lattice, :attr:`subpixel_windows`) up to filter edge effects at patch
        borders and, for the channels read from cells, the sub-cell position of each window (nucleus counts are
        exact); every feature at r ≥ 0.99 at real spots (``docs/benchmarks.md``).

        Parameters
        ----------
        read_tile
            ``read_tile(center_um_xy, size_um, out_px) -> (1, 3, out_px, out_px)`` uint8 (a patch reader).
        centers_um
            ``(n, 2)`` window centres in µm from the image origin.
        window_um
            Window side in µm (the backbone's patch size; the context view is ``context`` times larger).
        tile_um, cell_um
            Tile and cell sizes in µm.
        progress
            Show a progress bar over tiles.
        """
        lo, hi = map_bounds(centers_um, self.read_um(window_um) / 2, cell_um)
        cmap = self.feature_map(read_tile, lo, hi, cell_um=cell_um, tile_um=tile_um, progress=progress)
        return self.map_features(cmap, centers_um, window_um)
