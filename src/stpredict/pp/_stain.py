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
    """Optical density ``-ln((I + 1) / (I0 + 1))`` of uint8 (or 0-255 float) RGB; works on any batch shape.

    ``I0 = 255`` is the background (glass) intensity; the ``+ 1`` keeps black pixels finite.

    Parameters
    ----------
    rgb
        Intensities on the 0-255 scale, any shape (e.g. ``(3, h, w)`` or ``(b, 3, h, w)``).
    channel_axis
        Position of the RGB axis. Not used: the transform is element-wise, so any layout works; accepted for
        symmetry with :func:`stain_concentrations`.

    Returns
    -------
    float32 optical densities (natural log) of the same shape: 0 for white (255), ``ln(256) ≈ 5.55`` for
    black (0).

    Examples
    --------
    >>> import numpy as np
    >>> from stpredict.pp import rgb_to_od
    >>> rgb_to_od(np.array([127, 0], dtype=np.uint8)).round(2)
    array([0.69, 5.55], dtype=float32)
    """
    x = np.asarray(rgb, dtype=np.float32)
    return -np.log((x + 1.0) / (I0 + 1.0))


def od_to_rgb(od: Any) -> np.ndarray:
    """Inverse of :func:`rgb_to_od`, clipped to uint8.

    Parameters
    ----------
    od
        Optical densities (natural log, as from :func:`rgb_to_od`), any shape.

    Returns
    -------
    uint8 intensities of the same shape: ``(I0 + 1) · exp(-od) - 1`` rounded and clipped to 0-255, with
    ``I0 = 255``.

    Examples
    --------
    >>> import numpy as np
    >>> from stpredict.pp import od_to_rgb, rgb_to_od
    >>> od_to_rgb(rgb_to_od(np.array([0, 128, 255], dtype=np.uint8)))
    array([  0, 128, 255], dtype=uint8)
    """
    x = (I0 + 1.0) * np.exp(-np.asarray(od, dtype=np.float64)) - 1.0
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def stain_concentrations(od: Any, stains: np.ndarray = RUIFROK_HED[:2], *, channel_axis: int = -3) -> np.ndarray:
    """Least-squares concentrations of ``stains`` (rows, OD space) at every pixel of ``od``.

    Each pixel's OD vector is decomposed as ``od ≈ stains.T @ c`` through the pseudo-inverse of the stain
    matrix (colour deconvolution, Ruifrok & Johnston 2001). The concentrations are not constrained: they can
    be slightly negative on background or on colours the stains do not explain.

    Parameters
    ----------
    od
        Optical densities with their 3 RGB channels on ``channel_axis`` (e.g. :func:`rgb_to_od` of
        ``(b, 3, h, w)`` patches).
    stains
        ``(k, 3)`` stain vectors in OD space, one per row; default the Ruifrok–Johnston hematoxylin and eosin
        vectors (``RUIFROK_HED[:2]``). Concentrations are in multiples of each row's length (unit rows:
        optical density along that stain).
    channel_axis
        Axis of ``od`` holding the RGB channels.

    Returns
    -------
    float64 concentrations shaped like ``od`` with the RGB axis replaced by the ``k`` stains, at the same
    position (``(b, 3, h, w)`` gives ``(b, k, h, w)``).

    Examples
    --------
    >>> import numpy as np
    >>> from stpredict.pp import rgb_to_od, stain_concentrations
    >>> patches = np.full((2, 3, 4, 4), 200, dtype=np.uint8)
    >>> stain_concentrations(rgb_to_od(patches)).shape
    (2, 2, 4, 4)
    """
    od = np.moveaxis(np.asarray(od, dtype=np.float64), channel_axis, -1)
    pinv = np.linalg.pinv(np.asarray(stains, dtype=np.float64).T)  # (k, 3)
    return np.moveaxis(od @ pinv.T, -1, channel_axis)


def macenko_stains(rgb: Any, *, beta: float = 0.15, alpha: float = 1.0, min_angle: float = 15.0) -> np.ndarray:
    """Macenko et al. (2009) H and E stain vectors of an image or batch ``(..., 3, h, w)`` uint8.

    Pixels with OD below ``beta`` on any channel are background; the stain vectors are the robust extremes
    (``alpha`` and ``100 - alpha`` percentiles of angle) in the plane of the two main OD eigenvectors.
    Returns ``(2, 3)`` unit rows, hematoxylin first.

    Parameters
    ----------
    rgb
        uint8 RGB with the channels on axis -3: one image ``(3, h, w)`` or a batch ``(..., 3, h, w)``; the
        pixels of the whole batch are pooled into one estimate.
    beta
        Optical-density threshold: pixels whose OD is at most ``beta`` on any channel (glass, faint
        background) are ignored.
    alpha
        Percentile, in %, of the angle distribution taken as each extreme (``alpha`` and ``100 - alpha``);
        larger values are more robust to outlying pixels.
    min_angle
        Fewest degrees between the two vectors found: closer ones mean the image's hues do not separate two
        stains (a faint or single-stain section; the two would be confounded and their concentrations blow up),
        and the Ruifrok–Johnston vectors are returned instead.

    Returns
    -------
    ``(2, 3)`` float64 stain vectors in OD space, unit rows, hematoxylin (the one absorbing more red) first.
    With fewer than 10 foreground pixels, or two vectors closer than ``min_angle``, the Ruifrok–Johnston H and E
    vectors (``RUIFROK_HED[:2]``) are returned instead.

    Examples
    --------
    >>> import numpy as np
    >>> from stpredict.pp import macenko_stains
    >>> patches = np.random.default_rng(0).integers(60, 230, (4, 3, 32, 32), dtype=np.uint8)
    >>> macenko_stains(patches).shape
    (2, 3)
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
    if np.degrees(np.arccos(np.clip(v1 @ v2, -1.0, 1.0))) < min_angle:
        return RUIFROK_HED[:2].copy()
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
    stains
        ``(2, 3)`` hematoxylin and eosin vectors of the reference in OD space (unit rows, hematoxylin first),
        as from :func:`macenko_stains`; used by ``"macenko"``. The remaining parameters are the fitted
        state: leave them ``None`` and call :meth:`fit`, or pass values saved from a fitted normaliser to
        skip fitting.
    max_conc
        ``(2,)`` 99th-percentile H and E concentrations of the reference (in OD units along ``stains``);
        each patch's concentrations are rescaled so that its own 99th percentiles match them. Used by
        ``"macenko"``, together with ``stains``.
    lab_mean
        ``(3,)`` mean of the reference's pixels in CIELAB (L*, a*, b*); used by ``"reinhard"``.
    lab_std
        ``(3,)`` standard deviation of the reference's pixels in CIELAB (plus 1e-6, so it is never 0); used
        by ``"reinhard"``, together with ``lab_mean``.

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
            c = np.moveaxis(stain_concentrations(rgb_to_od(ref), self.stains), -3, -1).reshape(-1, 2)
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

    @property
    def is_fitted(self) -> bool:
        """Whether the reference statistics are set."""
        if self.method == "macenko":
            return self.stains is not None and self.max_conc is not None
        return self.lab_mean is not None and self.lab_std is not None

    def to_record(self) -> dict[str, Any]:
        """The method and fitted statistics as JSON-ready lists (what a checkpoint stores)."""
        rec: dict[str, Any] = {"method": self.method}
        for k in ("stains", "max_conc", "lab_mean", "lab_std"):
            v = getattr(self, k)
            if v is not None:
                rec[k] = np.asarray(v, dtype=float).tolist()
        return rec

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> StainNormalizer:
        """The normaliser of :meth:`to_record`'s output (e.g. read from a checkpoint)."""
        arrays = {
            k: np.asarray(record[k], dtype=float) for k in ("stains", "max_conc", "lab_mean", "lab_std") if k in record
        }
        norm = cls(str(record.get("method", "")), **arrays)
        if norm.method not in ("macenko", "reinhard") or not norm.is_fitted:
            msg = f"Not a fitted stain normaliser record: {record!r}."
            raise ValueError(msg)
        return norm

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
