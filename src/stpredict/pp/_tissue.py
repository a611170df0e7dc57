"""Tissue detection on a coarse pyramid level."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .._docs import doc_params
from .._image import image_levels
from .._validate import pick_key
from ._spots import image_microns_per_pixel

if TYPE_CHECKING:
    from spatialdata import SpatialData

__all__ = ["TissueMask", "tissue_mask"]


@dataclass
class TissueMask:
    """A boolean tissue mask on a coarse grid and its scale to level-0 pixels.

    Attributes
    ----------
    mask
        ``(h, w)`` booleans, True on tissue.
    factor_x, factor_y
        Level-0 pixels per mask pixel along x and y.
    """

    mask: np.ndarray
    factor_x: float
    factor_y: float

    def contains(self, xy: np.ndarray) -> np.ndarray:
        """Whether level-0 pixel positions ``(n, 2)`` (x, y) fall on tissue."""
        xy = np.asarray(xy, dtype=float).reshape(-1, 2)
        h, w = self.mask.shape
        ix = np.floor(xy[:, 0] / self.factor_x).astype(np.int64)
        iy = np.floor(xy[:, 1] / self.factor_y).astype(np.int64)
        ok = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
        out = np.zeros(len(xy), dtype=bool)
        out[ok] = self.mask[iy[ok], ix[ok]]
        return out

    @classmethod
    def full(cls, shape_yx: tuple[int, int]) -> TissueMask:
        """A mask that is all tissue (for images without background)."""
        return cls(np.ones((1, 1), dtype=bool), factor_x=float(shape_yx[1]), factor_y=float(shape_yx[0]))


def _disk_closing(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary closing by the disk ``x² + y² ≤ radius²`` through two Euclidean distance transforms.

    The same set as ``skimage.morphology.closing(mask, disk(radius))`` away from the image's top-left corner
    (where skimage's padding adds pixels), at a cost that does not grow with the radius (40× faster at 25).
    """
    from scipy import ndimage as ndi

    if not mask.any():
        return mask.copy()
    dilated = ndi.distance_transform_edt(~mask) <= radius
    if dilated.all():  # nothing to erode from (outside the image counts as inside, as in skimage)
        return dilated
    return ndi.distance_transform_edt(dilated) > radius


@doc_params()
def tissue_mask(
    sdata: SpatialData,
    *,
    image_key: str | None = None,
    microns_per_pixel: float | None = None,
    resolution_um: float = 8.0,
    min_side_px: int = 128,
    closing_um: float = 30.0,
    min_area_um2: float = 2.0e4,
) -> TissueMask:
    """Detect tissue: saturated or dark pixels, against a bright unsaturated slide background.

    Works at about ``resolution_um`` µm per pixel, whatever the slide's size: the pyramid level nearest that
    pixel size, averaged over blocks of pixels toward it (both sides kept ≥ ``min_side_px``);
    Otsu thresholds on saturation and on grey level, a morphological closing, hole filling and removal of small
    specks. The cost so grows with the tissue's area, not with the pyramid's depth (a 1 mm slide is not
    analysed at 1 µm/px).

    Parameters
    ----------
    {sdata}
    image_key
        The H&E image; ``None`` if there is only one.
    microns_per_pixel
        Level-0 pixel size, to size the morphology in µm; ``None`` resolves it as :func:`stpredict.pp.spots`
        does (the image's ``"micrometers"`` transformation, else the spots' pixel size) and raises a
        :class:`ValueError` when it is unknown.
    resolution_um
        Pixel size of the mask in µm (8: finer than a Visium spot's radius and than an 8 µm bin's centre
        spacing, enough to keep bins and pseudo-spots on tissue).
    min_side_px
        Smallest side of the mask in pixels (small images are analysed finer than ``resolution_um``).
    closing_um
        Radius of the closing that bridges gaps between cells.
    min_area_um2
        Connected components smaller than this are dropped.

    Returns
    -------
    A :class:`TissueMask`.

    Raises
    ------
    ValueError
        If ``microns_per_pixel`` is None and the pixel size is not recorded.
    """
    from scipy import ndimage as ndi
    from skimage import filters, morphology

    image_key = pick_key(sdata, "images", image_key)
    levels = image_levels(sdata.images[image_key])
    mpp0 = image_microns_per_pixel(sdata, image_key=image_key, microns_per_pixel=microns_per_pixel)
    rgb, factor_x, factor_y = _read_coarse(levels, mpp0, resolution_um, min_side_px)
    mpp = mpp0 * np.sqrt(factor_x * factor_y)
    mx, mn = rgb.max(axis=0), rgb.min(axis=0)
    sat = (mx - mn) / np.maximum(mx, 1e-3)
    grey = rgb.mean(axis=0)
    mask = np.zeros(grey.shape, dtype=bool)
    if np.ptp(sat) > 1e-3:
        mask |= sat > max(filters.threshold_otsu(sat), 0.05)
    if np.ptp(grey) > 1e-3:
        mask |= grey < min(filters.threshold_otsu(grey), 0.92)
    r = max(1, round(closing_um / mpp))
    mask = _disk_closing(mask, min(r, 25))
    mask = ndi.binary_fill_holes(mask)
    min_px = max(1, round(min_area_um2 / mpp**2))
    mask = morphology.remove_small_objects(mask, max_size=min_px)
    if not mask.any():
        return TissueMask.full(levels[0].shape_yx)
    return TissueMask(mask.astype(bool), factor_x=factor_x, factor_y=factor_y)


def _read_coarse(levels: list, mpp0: float, resolution_um: float, min_side_px: int) -> tuple[np.ndarray, float, float]:
    """``(rgb (3, h, w) in [0, 1], factor_x, factor_y)`` at about ``resolution_um`` µm/px (see :func:`tissue_mask`).

    The level whose pixel size is nearest ``resolution_um`` (by ratio) among those with both sides ≥
    ``min_side_px`` (level 0 if none), then means over ``k × k`` blocks (edge pixels repeated to fill the last
    ones), ``k`` the nearest integer to the remaining ratio, kept to sides ≥ ``min_side_px``.
    """

    def mpp(lv) -> float:
        return mpp0 * float(np.sqrt(lv.factor_x * lv.factor_y))

    ok = [lv for lv in levels if min(lv.shape_yx) >= min_side_px] or [levels[0]]
    lv = min(ok, key=lambda lv: abs(np.log(mpp(lv) / resolution_um)))
    k = max(1, min(round(resolution_um / mpp(lv)), min(lv.shape_yx) // max(min_side_px, 1)))
    rgb = np.asarray(lv.array[:3].compute()).astype(np.float32) / 255.0
    if k > 1:
        h, w = rgb.shape[1:]
        hk, wk = -(-h // k), -(-w // k)
        rgb = np.pad(rgb, ((0, 0), (0, hk * k - h), (0, wk * k - w)), mode="edge")
        rgb = rgb.reshape(3, hk, k, wk, k).mean(axis=(2, 4))
    return rgb, lv.factor_x * k, lv.factor_y * k
