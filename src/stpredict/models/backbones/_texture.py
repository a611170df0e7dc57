"""Optional feature groups of the hand-crafted backbone: colour levels, LBP, GLCM and opened-mask nuclei.

Each group is a set of per-pixel maps whose window means give its features, directly or through a fixed formula
of means (a standard deviation, a GLCM correlation, a mean nucleus area), so that one dense pass over a slide
serves every grid as for the base maps (:class:`~stpredict.models.backbones.HandcraftedBackbone`). The groups
follow the hand-crafted set commonly used to transfer across scanners and stains:

- ``colour``: RGB means and standard deviations, and the fraction of pixels darker than fixed grey levels and
  above fixed hematoxylin and eosin levels (samples of each channel's distribution function: what quantiles
  describe, as window means);
- ``lbp``: uniform rotation-invariant local binary patterns (8 neighbours) at two radii (1 and 3 µm), one-hot
  per code, so a window mean is the window's LBP histogram;
- ``glcm``: grey-level co-occurrence statistics of grey quantised to 16 levels at two distances (1 and 3 µm),
  averaged over four angles (0°, 45°, 90°, 135°): contrast, dissimilarity and homogeneity are window means of
  per-pixel functions of the difference to the offset pixel; correlation comes from the window means of the
  product with the offset pixel and of the grey level and its square;
- ``nuclei``: hematoxylin (smoothed at 1 µm) above a fixed level, opened with a 2 µm disk: the mask fraction,
  the nucleus count (each connected component spreads a total of one over its pixels) and the mean nucleus
  area (their ratio).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage as ndi

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["GROUPS", "Images", "MapGroup", "glcm_maps", "lbp_codes"]

#: grey levels below which pixels count as dark, hematoxylin and eosin levels above which they count as stained
GREY_LEVELS = (0.3, 0.5, 0.7, 0.85)
H_LEVELS = (0.25, 0.5, 1.0, 2.0)
E_LEVELS = (0.02, 0.05, 0.1)
#: LBP neighbours and radii (µm); GLCM grey levels, distances (µm) and angles
LBP_POINTS = 8
LBP_RADII_UM = (1.0, 3.0)
GLCM_LEVELS = 16
GLCM_DISTANCES_UM = (1.0, 3.0)
GLCM_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
#: nuclei: hematoxylin level, smoothing and opening radius (µm)
NUCLEUS_H = 0.8
NUCLEUS_SMOOTH_UM = 1.0
NUCLEUS_OPEN_UM = 2.0


class Images:
    """Intermediate images of a batch of RGB patches ``(b, 3, h, w)`` uint8, computed once and shared by the groups."""

    def __init__(self, rgb: np.ndarray, mpp: float) -> None:
        self.rgb = np.asarray(rgb)
        self.mpp = float(mpp)

    @cached_property
    def x(self) -> np.ndarray:
        """RGB in [0, 1], float32."""
        return self.rgb.astype(np.float32) / 255.0

    @cached_property
    def od(self) -> np.ndarray:
        """Optical density per channel."""
        from ...pp._stain import rgb_to_od

        return rgb_to_od(self.rgb)

    @cached_property
    def hed(self) -> np.ndarray:
        """Non-negative H, E and DAB concentrations (Ruifrok–Johnston deconvolution)."""
        from ...pp._stain import RUIFROK_HED

        inv = np.linalg.inv(RUIFROK_HED).astype(np.float32)
        return np.maximum(np.einsum("bchw,cd->bdhw", self.od, inv), 0.0)

    @cached_property
    def grey(self) -> np.ndarray:
        """Mean of R, G and B in [0, 1]."""
        return self.x.mean(axis=1)


@dataclass(frozen=True)
class MapGroup:
    """A feature group: per-pixel channels, and the features their window means give.

    Attributes
    ----------
    name
        The group's name (an option of the backbone's ``features``).
    features
        Names of its features.
    n_channels
        Per-pixel channels it computes.
    pixels
        :class:`Images` → ``(b, n_channels, h, w)`` float32.
    reduce
        ``(n, n_channels)`` window means → ``(n, len(features))`` features.
    """

    name: str
    features: tuple[str, ...]
    n_channels: int
    pixels: Callable[[Images], np.ndarray]
    reduce: Callable[[np.ndarray], np.ndarray]


def _std(mean: np.ndarray, sq: np.ndarray) -> np.ndarray:
    return np.sqrt(np.maximum(sq - mean**2, 0.0))


# --- colour: RGB moments and distribution-function samples ---------------------------------------------------


def _colour_pixels(im: Images) -> np.ndarray:
    x, grey, hed = im.x, im.grey, im.hed
    maps = [x[:, c] for c in range(3)] + [x[:, c] ** 2 for c in range(3)]
    maps += [grey < t for t in GREY_LEVELS] + [hed[:, 0] > t for t in H_LEVELS] + [hed[:, 1] > t for t in E_LEVELS]
    return np.stack([np.asarray(m, dtype=np.float32) for m in maps], axis=1)


def _colour_reduce(v: np.ndarray) -> np.ndarray:
    return np.concatenate([v[:, :3], _std(v[:, :3], v[:, 3:6]), v[:, 6:]], axis=1)


_COLOUR_FEATURES = (
    tuple(f"mean_{c}" for c in "rgb")
    + tuple(f"std_{c}" for c in "rgb")
    + tuple(f"frac_grey_below_{t:g}" for t in GREY_LEVELS)
    + tuple(f"frac_h_above_{t:g}" for t in H_LEVELS)
    + tuple(f"frac_e_above_{t:g}" for t in E_LEVELS)
)


# --- LBP -------------------------------------------------------------------------------------------------------


def _padded(a: np.ndarray, pad: int) -> np.ndarray:
    return np.pad(a, ((0, 0), (pad, pad), (pad, pad)), mode="edge")


def lbp_codes(grey: np.ndarray, radius: float, points: int = LBP_POINTS) -> np.ndarray:
    """Uniform rotation-invariant LBP codes of ``(b, h, w)`` images, ``0 .. points + 1`` (int8).

    As ``skimage.feature.local_binary_pattern(image, points, radius, method="uniform")``, image by image:
    neighbours on a circle (bilinear interpolation), a bit set where the neighbour is ≥ the centre; a pattern
    with at most two bit changes around the circle gets its number of set bits, any other ``points + 1``.
    Pixels beyond the border repeat the edge.
    """
    g = np.asarray(grey, dtype=np.float64)
    _, h, w = g.shape
    pad = int(np.ceil(radius)) + 1
    gp = _padded(g, pad)
    bits = []
    for p in range(points):
        dy = round(-radius * np.sin(2 * np.pi * p / points), 5)
        dx = round(radius * np.cos(2 * np.pi * p / points), 5)
        y0, x0 = int(np.floor(dy)), int(np.floor(dx))
        fy, fx = dy - y0, dx - x0

        def at(oy: int, ox: int) -> np.ndarray:
            return gp[:, pad + oy : pad + oy + h, pad + ox : pad + ox + w]

        n = at(y0, x0) * (1 - fy) * (1 - fx)
        if fx:
            n = n + at(y0, x0 + 1) * (1 - fy) * fx
        if fy:
            n = n + at(y0 + 1, x0) * fy * (1 - fx)
        if fx and fy:
            n = n + at(y0 + 1, x0 + 1) * fy * fx
        bits.append(n - g >= 0)
    b = np.stack(bits)
    changes = (b != np.roll(b, 1, axis=0)).sum(axis=0)
    return np.where(changes <= 2, b.sum(axis=0), points + 1).astype(np.int8)


def _lbp_pixels(im: Images) -> np.ndarray:
    out = []
    for r_um in LBP_RADII_UM:
        codes = lbp_codes(im.grey, max(1.0, r_um / im.mpp))
        out += [codes == k for k in range(LBP_POINTS + 2)]
    return np.stack(out, axis=1).astype(np.float32)


_LBP_FEATURES = tuple(f"lbp_r{r:g}_{k}" for r in LBP_RADII_UM for k in range(LBP_POINTS + 2))


# --- GLCM ------------------------------------------------------------------------------------------------------


def _offsets(d: int) -> list[tuple[int, int]]:
    """``(row, col)`` offsets at distance ``d`` for :data:`GLCM_ANGLES`, as ``skimage.feature.graycomatrix``."""
    return [(round(np.sin(a) * d), round(np.cos(a) * d)) for a in GLCM_ANGLES]


def glcm_maps(q: np.ndarray, distance: int) -> np.ndarray:
    """Per-pixel GLCM terms of quantised images ``(b, h, w)`` at one distance, averaged over the four angles.

    Returns ``(b, 4, h, w)``: with ``δ = q(p + o) − q(p)`` for each offset ``o``, the angle means of ``δ²``
    (contrast), ``|δ|`` (dissimilarity), ``1 / (1 + δ²)`` (homogeneity) and ``q(p) q(p + o)`` (for the
    correlation). Their window means are the GLCM statistics of the window's pixel pairs (an offset pixel past the
    image border repeats the edge).
    """
    q = np.asarray(q, dtype=np.float32)
    _, h, w = q.shape
    qp = _padded(q, distance)
    out = np.zeros((q.shape[0], 4, h, w), dtype=np.float32)
    for oy, ox in _offsets(distance):
        n = qp[:, distance + oy : distance + oy + h, distance + ox : distance + ox + w]
        d2 = (n - q) ** 2
        out[:, 0] += d2
        out[:, 1] += np.sqrt(d2)
        out[:, 2] += 1.0 / (1.0 + d2)
        out[:, 3] += n * q
    return out / len(GLCM_ANGLES)


def quantise(grey: np.ndarray, levels: int = GLCM_LEVELS) -> np.ndarray:
    """Grey in [0, 1] → levels ``0 .. levels − 1`` (float32)."""
    return np.minimum(np.floor(np.asarray(grey) * levels), levels - 1).astype(np.float32)


def _glcm_pixels(im: Images) -> np.ndarray:
    q = quantise(im.grey)
    maps = [q[:, None], q[:, None] ** 2]
    maps += [glcm_maps(q, max(1, round(d / im.mpp))) for d in GLCM_DISTANCES_UM]
    return np.concatenate(maps, axis=1)


def _glcm_reduce(v: np.ndarray) -> np.ndarray:
    mean, var = v[:, 0], v[:, 1] - v[:, 0] ** 2
    out = []
    for k in range(len(GLCM_DISTANCES_UM)):
        c, dis, hom, prod = (v[:, 2 + 4 * k + j] for j in range(4))
        flat = var <= 1e-6
        corr = np.where(flat, 1.0, (prod - mean**2) / np.where(flat, 1.0, var))  # a flat window: 1, as skimage
        out += [c, dis, hom, np.clip(corr, -1.0, 1.0)]
    return np.stack(out, axis=1)


_GLCM_FEATURES = tuple(
    f"glcm_d{d:g}_{s}" for d in GLCM_DISTANCES_UM for s in ("contrast", "dissimilarity", "homogeneity", "correlation")
)


# --- nuclei from an opened hematoxylin mask --------------------------------------------------------------------


def _nuclei_pixels(im: Images) -> np.ndarray:
    s = NUCLEUS_SMOOTH_UM / im.mpp
    hem = ndi.gaussian_filter(im.hed[:, 0], (0, s, s))
    r = max(1, round(NUCLEUS_OPEN_UM / im.mpp))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disk = (yy**2 + xx**2 <= r * r)[None]  # image by image: no reach along the batch axis
    mask = ndi.binary_opening(hem > NUCLEUS_H, structure=disk)
    conn = np.zeros((3, 3, 3), dtype=bool)
    conn[1] = ndi.generate_binary_structure(2, 1)
    lab, n = ndi.label(mask, structure=conn)
    area = np.bincount(lab.ravel(), minlength=n + 1).astype(np.float32)
    share = np.zeros_like(area)
    share[1:] = 100.0 * im.mpp * im.mpp / np.maximum(area[1:], 1.0)  # nuclei per 100 µm², one per component
    return np.stack([mask.astype(np.float32), share[lab]], axis=1)


def _nuclei_reduce(v: np.ndarray) -> np.ndarray:
    frac, count = v[:, 0], v[:, 1]
    area = 100.0 * frac / np.maximum(count, 0.01)  # µm² per nucleus
    return np.stack([frac, count, area], axis=1)


#: the optional groups, by name
GROUPS: dict[str, MapGroup] = {
    "colour": MapGroup("colour", _COLOUR_FEATURES, 17, _colour_pixels, _colour_reduce),
    "lbp": MapGroup("lbp", _LBP_FEATURES, len(_LBP_FEATURES), _lbp_pixels, lambda v: v),
    "glcm": MapGroup("glcm", _GLCM_FEATURES, 2 + 4 * len(GLCM_DISTANCES_UM), _glcm_pixels, _glcm_reduce),
    "nuclei": MapGroup(
        "nuclei",
        ("opened_nuclei_fraction", "opened_nuclei_count", "opened_nuclei_area"),
        2,
        _nuclei_pixels,
        _nuclei_reduce,
    ),
}
