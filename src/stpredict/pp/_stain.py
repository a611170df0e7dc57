"""Optical density, stain matrices and stain normalisation (Beer–Lambert), shared by every method."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "RUIFROK_HED",
    "StainNormalizer",
    "macenko_stains",
    "od_to_rgb",
    "rgb_to_od",
    "stain_concentrations",
]

#: Ruifrok & Johnston (2001) stain vectors (rows: hematoxylin, eosin, DAB) in optical-density space, unit norm;
#: the same as ``skimage.color.rgb_from_hed``.
RUIFROK_HED = np.array(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]],
    dtype=np.float64,
)
RUIFROK_HED = RUIFROK_HED / np.linalg.norm(RUIFROK_HED, axis=1, keepdims=True)

#: Background light intensity (8-bit): I0 in Beer–Lambert.
I0 = 255.0


def rgb_to_od(rgb: Any, *, channel_axis: int = -3) -> np.ndarray:
    """Optical density ``-ln((I + 1) / (I0 + 1))`` of uint8 (or 0-255 float) RGB; works on any batch shape."""
    x = np.asarray(rgb, dtype=np.float32)
    return -np.log((x + 1.0) / (I0 + 1.0))


def od_to_rgb(od: Any) -> np.ndarray:
    """Inverse of :func:`rgb_to_od`, clipped to uint8."""
    x = (I0 + 1.0) * np.exp(-np.asarray(od, dtype=np.float64)) - 1.0
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def stain_concentrations(od: Any, stains: np.ndarray = RUIFROK_HED[:2], *, channel_axis: int = -3) -> np.ndarray:
    """Least-squares concentrations of ``stains`` (rows, OD space) at every pixel of ``od``."""
    od = np.moveaxis(np.asarray(od, dtype=np.float64), channel_axis, -1)
    pinv = np.linalg.pinv(np.asarray(stains, dtype=np.float64).T)  # (k, 3)
    return np.moveaxis(od @ pinv.T, -1, channel_axis)


def macenko_stains(rgb: Any, *, beta: float = 0.15, alpha: float = 1.0) -> np.ndarray:
    """Macenko et al. (2009) H and E stain vectors of an image or batch ``(..., 3, h, w)`` uint8.

    Pixels with OD below ``beta`` on any channel are background; the stain vectors are the robust extremes
    (``alpha`` and ``100 - alpha`` percentiles of angle) in the plane of the two main OD eigenvectors.
    Returns ``(2, 3)`` unit rows, hematoxylin first.
    """
    od = np.moveaxis(rgb_to_od(rgb), -3, -1).reshape(-1, 3).astype(np.float64)
    od = od[(od > beta).all(axis=1)]
    if len(od) < 10:
        return RUIFROK_HED[:2].copy()
    _, vecs = np.linalg.eigh(np.cov(od.T))
    plane = vecs[:, [2, 1]]
    proj = od @ plane
    ang = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(ang, [alpha, 100 - alpha])
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    v1, v2 = np.abs(v1) / np.linalg.norm(v1), np.abs(v2) / np.linalg.norm(v2)
    # hematoxylin absorbs more red than eosin
    return np.stack([v1, v2]) if v1[0] > v2[0] else np.stack([v2, v1])


@dataclass
class StainNormalizer:
    """A patch transform mapping stains onto a reference (Macenko or Reinhard), fitted on reference patches.

    Parameters
    ----------
    method
        ``"macenko"``: re-express pixels' H/E concentrations (from the patch's own Macenko stains) with the
        reference stain vectors and the reference's 99th-percentile concentrations; ``"reinhard"``: match
        per-channel mean and sd in LAB.

    Examples
    --------
    >>> import numpy as np
    >>> from stpredict.pp import StainNormalizer
    >>> ref = np.random.default_rng(0).integers(80, 250, (4, 3, 32, 32), dtype=np.uint8)
    >>> norm = StainNormalizer("reinhard").fit(ref)
    >>> norm(ref).shape
    (4, 3, 32, 32)
    """

    method: str = "macenko"
    stains: np.ndarray | None = None
    max_conc: np.ndarray | None = None
    lab_mean: np.ndarray | None = None
    lab_std: np.ndarray | None = None

    def fit(self, reference: Any) -> StainNormalizer:
        """Learn the reference's stains (Macenko) or colour statistics (Reinhard) from ``(b, 3, h, w)`` uint8."""
        ref = np.asarray(reference)
        if self.method == "macenko":
            self.stains = macenko_stains(ref)
            c = (
                stain_concentrations(rgb_to_od(ref), self.stains).reshape(-1, 2)
                if ref.ndim == 3
                else np.moveaxis(stain_concentrations(rgb_to_od(ref), self.stains), 1, -1).reshape(-1, 2)
            )
            self.max_conc = np.percentile(c, 99, axis=0)
        elif self.method == "reinhard":
            lab = _to_lab(ref)
            self.lab_mean = (
                lab.reshape(3, -1).mean(1) if ref.ndim == 3 else np.moveaxis(lab, 1, 0).reshape(3, -1).mean(1)
            )
            self.lab_std = (lab.reshape(3, -1) if ref.ndim == 3 else np.moveaxis(lab, 1, 0).reshape(3, -1)).std(
                1
            ) + 1e-6
        else:
            msg = f"method must be 'macenko' or 'reinhard', got {self.method!r}."
            raise ValueError(msg)
        return self

    def __call__(self, patches: Any) -> np.ndarray:
        """Normalise ``(b, 3, h, w)`` (or ``(3, h, w)``) uint8 patches, each on its own statistics."""
        p = np.asarray(patches)
        single = p.ndim == 3
        p = p[None] if single else p
        out = np.stack([self._one(x) for x in p])
        return out[0] if single else out

    def _one(self, x: np.ndarray) -> np.ndarray:
        if self.method == "macenko":
            if self.stains is None:
                msg = "StainNormalizer is not fitted: call .fit(reference_patches)."
                raise RuntimeError(msg)
            own = macenko_stains(x)
            c = stain_concentrations(rgb_to_od(x), own)  # (2, h, w)
            own_max = np.percentile(c.reshape(2, -1), 99, axis=1)
            c = c * (self.max_conc / np.maximum(own_max, 1e-6))[:, None, None]
            od = np.einsum("khw,kc->chw", c, self.stains)
            return od_to_rgb(od)
        if self.lab_mean is None:
            msg = "StainNormalizer is not fitted: call .fit(reference_patches)."
            raise RuntimeError(msg)
        from skimage.color import lab2rgb

        lab = _to_lab(x)
        flat = lab.reshape(3, -1)
        m, s = flat.mean(1), flat.std(1) + 1e-6
        lab = ((flat - m[:, None]) / s[:, None] * self.lab_std[:, None] + self.lab_mean[:, None]).reshape(lab.shape)
        rgb = lab2rgb(np.moveaxis(lab, 0, -1))
        return np.clip(np.round(np.moveaxis(rgb, -1, 0) * 255), 0, 255).astype(np.uint8)


def _to_lab(x: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2lab

    x = np.asarray(x)
    if x.ndim == 3:
        return np.moveaxis(rgb2lab(np.moveaxis(x, 0, -1)), -1, 0)
    return np.moveaxis(rgb2lab(np.moveaxis(x, 1, -1)), -1, 1)
