"""The predictor contract's inputs: one slide's measured spots (SlideData) and where to predict (Regions)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from .._image import ImageLevel
    from ..pp._patches import PatchExtractor

__all__ = ["Regions", "SlideData"]


# inputs built by stp.tl (predictors never touch SpatialData)
@dataclass
class SlideData:
    """One slide's measured spots, as a predictor sees them.

    Attributes
    ----------
    name
        Slide name (library id or table key).
    centers_px
        ``(n, 2)`` spot centres (x, y) in level-0 image pixels.
    microns_per_pixel_xy
        Level-0 pixel size along x and y.
    spot_diameter_px
        Spot diameter in level-0 pixels.
    image_levels
        The image pyramid (lazy arrays), for predictors that read pixels.
    obs_names
        Spot names.
    genes
        Genes of ``y`` (the panel being fitted or predicted).
    y
        ``(n, genes)`` targets on the output scale (normalize_total 1e4 + log1p by default), or ``None`` on a
        slide without counts.
    y_linear
        The same before the log (normalised linear units), for predictors that aggregate in linear space.
    library_size
        Total counts per spot (all genes).
    embeddings
        ``(n, d)`` backbone features of the spots' windows, when the predictor consumes embeddings.
    meta
        Free-form provenance (image key, backbone parameters).
    """

    name: str
    centers_px: np.ndarray
    microns_per_pixel_xy: tuple[float, float]
    spot_diameter_px: float
    image_levels: list[ImageLevel] = field(repr=False)
    obs_names: pd.Index
    genes: list[str] | None = None
    y: np.ndarray | None = None
    y_linear: np.ndarray | None = None
    library_size: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        """Number of spots."""
        return int(len(self.centers_px))

    @property
    def microns_per_pixel(self) -> float:
        """Geometric-mean pixel size."""
        return float(np.sqrt(self.microns_per_pixel_xy[0] * self.microns_per_pixel_xy[1]))

    @property
    def centers_um(self) -> np.ndarray:
        """Spot centres in µm."""
        return np.asarray(self.centers_px) * np.asarray(self.microns_per_pixel_xy)

    @property
    def spot_diameter_um(self) -> float:
        """Spot diameter in µm."""
        return float(self.spot_diameter_px * self.microns_per_pixel)

    @property
    def image_shape(self) -> tuple[int, int]:
        """Level-0 ``(height, width)``."""
        return self.image_levels[0].shape_yx

    def patches(self, size_um: float, patch_px: int, centers_px: np.ndarray | None = None) -> PatchExtractor:
        """A patch reader for windows around the spots (or ``centers_px``)."""
        from ..pp._patches import PatchExtractor

        c = self.centers_px if centers_px is None else centers_px
        return PatchExtractor(self.image_levels, c, self.microns_per_pixel_xy, size_um=size_um, patch_px=patch_px)

    def subset(self, idx: np.ndarray) -> SlideData:
        """The slide restricted to spots ``idx`` (used for held-out folds)."""
        idx = np.asarray(idx)

        def take(a):
            return None if a is None else np.asarray(a)[idx]

        return SlideData(
            name=self.name,
            centers_px=np.asarray(self.centers_px)[idx],
            microns_per_pixel_xy=self.microns_per_pixel_xy,
            spot_diameter_px=self.spot_diameter_px,
            image_levels=self.image_levels,
            obs_names=self.obs_names[idx],
            genes=self.genes,
            y=take(self.y),
            y_linear=take(self.y_linear),
            library_size=take(self.library_size),
            embeddings=take(self.embeddings),
            meta=dict(self.meta),
        )

    def without_targets(self) -> SlideData:
        """The slide with its measured values removed (an H&E-only view)."""
        out = self.subset(np.arange(self.n))
        out.y = out.y_linear = out.library_size = None
        return out


@dataclass
class Regions:
    """Where to predict: spots, pseudo-spots, bins or shapes, in the slide's level-0 pixels.

    Attributes
    ----------
    centers_px
        ``(n, 2)`` centres (x, y); the centroids of polygons.
    kind
        ``"circle"``, ``"square"`` or ``"polygon"`` (cells of a shapes element: their geometry is in
        ``polygons_px``).
    size_um
        Diameter (circles) or side (squares) in µm; polygons: the median diameter of the circle of equal area.
    name
        ``"spots"``, a grid name (``ps4``, ``bin16um``, ``cells``) or a shapes key.
    embeddings
        ``(n, d)`` features of windows around the centres (same backbone and window as training), if the
        predictor consumes embeddings. Polygons are read like pseudo-spots: one window at the centroid.
    meta
        Free-form options (e.g. ``"seed"``).
    polygons_px
        ``(n,)`` shapely polygons (or multipolygons) in level-0 pixels when ``kind == "polygon"``, else
        ``None``. Predictors that aggregate a dense map (``pixnet``) average it over these polygons
        (:meth:`polygons_um`); the others read the centres.
    """

    centers_px: np.ndarray
    kind: Literal["circle", "square", "polygon"] = "circle"
    size_um: float = 55.0
    name: str = "spots"
    embeddings: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    polygons_px: Any = None

    def polygons_um(self, slide: SlideData) -> Any:
        """``polygons_px`` scaled to µm by the slide's pixel size (x and y apart), or ``None``."""
        if self.polygons_px is None:
            return None
        from ..pp._cells import polygons_to_um

        return polygons_to_um(self.polygons_px, slide.microns_per_pixel_xy)

    @property
    def n(self) -> int:
        """Number of regions."""
        return int(len(self.centers_px))

    def centers_um(self, slide: SlideData) -> np.ndarray:
        """Centres in µm."""
        return np.asarray(self.centers_px) * np.asarray(slide.microns_per_pixel_xy)

    def patches(self, slide: SlideData, size_um: float, patch_px: int) -> PatchExtractor:
        """A patch reader for windows around the regions."""
        return slide.patches(size_um, patch_px, centers_px=self.centers_px)
