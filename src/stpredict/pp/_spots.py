"""Spot geometry: the only place that resolves coordinate systems and physical units (see ``_spots_units``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._docs import doc_params
from .._image import check_rgb, image_levels
from .._keys import MICRONS_CS
from .._logging import get_logger
from .._validate import pick_key, table_region
from ._regions import shape_centers, shape_kind
from ._spots_checks import (
    _check_unique,
    _raise_dangling_tables,
    check_centers,
    check_not_singular,
    check_on_image,
    check_sizes,
    several_tables_error,
)
from ._spots_units import _affine, _coordinate_systems, _explicit_mpp, _no_mpp_error, _resolve_mpp

if TYPE_CHECKING:
    from spatialdata import SpatialData

__all__ = ["SpotGeometry", "image_microns_per_pixel", "spots"]

logger = get_logger(__name__)


@dataclass
class SpotGeometry:
    """Spots in the pixels of an image's level 0, in the table's row order.

    Attributes
    ----------
    centers
        ``(n, 2)`` spot centres, x then y, in level-0 pixels of ``image_key``.
    diameter
        Spot diameter in level-0 pixels (mean over axes when pixels are anisotropic).
    microns_per_pixel
        Physical size of a level-0 pixel in µm (geometric mean of both axes).
    microns_per_pixel_xy
        The same along x and along y; legacy ST scans can differ by a few percent.
    image_key, spots_key, table_key
        The elements the geometry was resolved from (``table_key`` is ``None`` without a table).
    obs_names
        Row names: the table's obs_names, or the shapes' index without a table.
    rows
        Positions of these spots in the table (all rows unless the table annotates several regions).
    shapes_index
        The spots' index values in the shapes element, aligned with ``centers``.
    image_shape
        ``(height, width)`` of level 0.
    coordinate_system
        The coordinate system shared by the spots and the image.
    shapes_to_image
        3x3 affine from the spots' intrinsic coordinates to level-0 pixels.
    mpp_source
        Where the pixel size came from: ``"explicit"``, ``"micrometers"`` or ``"visium"``.
    kind
        Shape of the measured regions: ``"circle"`` (``diameter`` is the circles'), ``"square"`` (square
        polygons in any orientation, e.g. Visium HD bins: ``diameter`` is the side) or ``"polygon"`` (any other
        polygon: ``diameter`` is that of the circle of equal area). Centres of polygons are their centroids.
    """

    centers: np.ndarray
    diameter: float
    microns_per_pixel: float
    microns_per_pixel_xy: tuple[float, float]
    image_key: str
    spots_key: str
    table_key: str | None
    obs_names: pd.Index
    rows: np.ndarray
    shapes_index: np.ndarray
    image_shape: tuple[int, int]
    coordinate_system: str
    shapes_to_image: np.ndarray
    mpp_source: str
    kind: str = "circle"
    shapes_transformations: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def n_spots(self) -> int:
        """Number of spots."""
        return int(self.centers.shape[0])

    @property
    def diameter_um(self) -> float:
        """Spot diameter in µm."""
        return float(self.diameter * self.microns_per_pixel)

    def px_to_um(self, xy: np.ndarray) -> np.ndarray:
        """Convert level-0 pixel coordinates (x, y) to µm (x, y)."""
        return np.asarray(xy, dtype=float) * np.asarray(self.microns_per_pixel_xy)

    def um_to_px(self, xy: np.ndarray) -> np.ndarray:
        """Convert µm (x, y) to level-0 pixel coordinates (x, y)."""
        return np.asarray(xy, dtype=float) / np.asarray(self.microns_per_pixel_xy)

    @property
    def centers_um(self) -> np.ndarray:
        """Spot centres in µm from the image origin."""
        return self.px_to_um(self.centers)

    def image_to_shapes(self, xy: np.ndarray) -> np.ndarray:
        """Map level-0 pixel coordinates back into the spots' intrinsic coordinates."""
        inv = np.linalg.inv(self.shapes_to_image)
        xy = np.asarray(xy, dtype=float)
        return xy @ inv[:2, :2].T + inv[:2, 2]


def resolve_elements(
    sdata: SpatialData,
    *,
    image_key: str | None = None,
    spots_key: str | None = None,
    table_key: str | None = None,
    need_table: bool = False,
) -> tuple[str, str, str | None]:
    """Resolve the image, spots and table keys, raising clear errors for missing or ambiguous ones."""
    if spots_key is not None:  # a misspelt key answered as such, not as "no table annotates it"
        pick_key(sdata, "shapes", spots_key)
    # table first: it names the spots it annotates
    if table_key is None:
        annotating = []
        for k, t in sdata.tables.items():
            regions, _, _ = table_region(t)
            if any(r in sdata.shapes for r in regions) and (spots_key is None or spots_key in regions):
                annotating.append(k)
        if len(annotating) > 1:
            # super-resolved grids written by stpredict annotate their own shapes: not the measured spots
            measured = [k for k in annotating if "superresolve" not in sdata.tables[k].uns.get("stpredict", {})]
            annotating = measured or annotating
        if len(annotating) == 1:
            table_key = annotating[0]
        elif len(annotating) > 1:
            raise several_tables_error(sdata, annotating)
        elif need_table:
            _raise_dangling_tables(sdata)
            msg = (
                "No table annotates a shapes element"
                + (f" ({spots_key!r})" if spots_key else "")
                + f"; the SpatialData has tables {list(sdata.tables)}. Fitting needs measured counts: "
                "link a table with TableModel.parse(..., region=<spots_key>, ...)."
            )
            raise KeyError(msg)
    else:
        pick_key(sdata, "tables", table_key)
    if table_key is not None:
        regions, _, _ = table_region(sdata.tables[table_key])
        shape_regions = [r for r in regions if r in sdata.shapes]
        if spots_key is None:
            if len(shape_regions) != 1:
                msg = (
                    f"Table {table_key!r} annotates {regions or 'no region'}; "
                    "pass spots_key=... naming the shapes element of the spots."
                )
                raise KeyError(msg)
            spots_key = shape_regions[0]
        elif spots_key not in regions:
            pick_key(sdata, "shapes", spots_key)
            msg = (
                f"Table {table_key!r} does not annotate the spots {spots_key!r} (it annotates {regions}). "
                "Pass the table_key of the table linked to these spots, or link it with TableModel.parse(region=...)."
            )
            raise KeyError(msg)
    spots_key = pick_key(sdata, "shapes", spots_key)
    spots_cs = set(_coordinate_systems(sdata.shapes[spots_key]))
    if image_key is None:
        candidates = [k for k, im in sdata.images.items() if spots_cs & set(_coordinate_systems(im))]
        if not candidates and len(sdata.images):
            listing = "; ".join(f"{k!r}: {_coordinate_systems(im)}" for k, im in sdata.images.items())
            msg = (
                f"No image shares a coordinate system with spots {spots_key!r} (spots: {sorted(spots_cs)}; "
                f"images: {listing}). Add a transformation from the spots and the H&E to one coordinate system "
                "(spatialdata.transformations.set_transformation)."
            )
            raise ValueError(msg)
        rgb = [k for k in candidates if _looks_rgb(sdata.images[k])]
        if rgb and len(rgb) < len(candidates):  # an H&E beside fluorescence (Xenium's DAPI): the H&E
            logger.info("Using the 8-bit RGB image(s) %s, not %s.", rgb, sorted(set(candidates) - set(rgb)))
            candidates = rgb
        if len(candidates) > 1:
            # several resolutions of one slide (e.g. Visium hires + lowres): take the finest
            res = {}
            for k in candidates:
                cs = sorted(spots_cs & set(_coordinate_systems(sdata.images[k])))[0]
                res[k] = abs(np.linalg.det(_affine(sdata.images[k], cs)[:2, :2]))
            best = min(res.values())
            finest = [k for k, v in res.items() if np.isclose(v, best)]
            if len(finest) > 1:
                msg = f"Several images could be meant ({', '.join(map(repr, finest))}): pass image_key=..."
                raise KeyError(msg)
            logger.info("Using image %r, the finest of %s.", finest[0], candidates)
            candidates = finest
        image_key = pick_key(sdata, "images", None, candidates=candidates)
    else:
        pick_key(sdata, "images", image_key)
        if not spots_cs & set(_coordinate_systems(sdata.images[image_key])):
            msg = (
                f"Image {image_key!r} and spots {spots_key!r} share no coordinate system "
                f"(spots: {sorted(spots_cs)}; image: {_coordinate_systems(sdata.images[image_key])}). "
                "Add a transformation from both to one coordinate system."
            )
            raise ValueError(msg)
    return image_key, spots_key, table_key


def _looks_rgb(image: Any) -> bool:
    """An 8-bit image of 3 or 4 channels (an H&E), not fluorescence (one channel or 16 bit)."""
    arr = image_levels(image)[0].array
    return arr.dtype == np.uint8 and int(arr.shape[0]) in (3, 4)


@doc_params()
def spots(
    sdata: SpatialData,
    *,
    image_key: str | None = None,
    spots_key: str | None = None,
    table_key: str | None = None,
    coordinate_system: str | None = None,
    microns_per_pixel: float | None = None,
    check_image: bool = True,
) -> SpotGeometry:
    """Resolve the spots' geometry in the pixels of the H&E image's level 0.

    The measured regions may be circles (Visium, ST), square polygons (Visium HD bins) or other polygons. A
    polygon's centre is its centroid; its ``diameter`` is a square's side, or else that of the circle of equal
    area. The verbs read every measured region as the disk of that diameter around its centre — for a square
    bin its inscribed disk, which never reaches into the neighbouring bins of a contiguous grid — and cut
    image windows of ``patch_size_um`` around the centre, whatever the region's size.

    Parameters
    ----------
    {sdata}
    {keys}
    coordinate_system
        Coordinate system shared by spots and image through which they are related. ``None`` picks one
        (``"global"`` when shared).
    {mpp}
    check_image
        Check that the image is an 8-bit RGB pyramid and not blank (after the spots' checks; reads a few small
        windows, and the coarsest level only when these are all one colour).

    Returns
    -------
    The :class:`SpotGeometry` of the spots, in the table's row order.

    Examples
    --------
    >>> import stpredict as stp
    >>> sdata = stp.datasets.synthetic(image_size=512, n_genes=5, seed=0)
    >>> geo = stp.pp.spots(sdata)
    >>> geo.centers.shape[1], round(geo.diameter_um)
    (2, 55)
    """
    image_key, spots_key, table_key = resolve_elements(
        sdata, image_key=image_key, spots_key=spots_key, table_key=table_key
    )
    image = sdata.images[image_key]
    shapes = sdata.shapes[spots_key]
    shared = sorted(set(_coordinate_systems(shapes)) & set(_coordinate_systems(image)))
    if coordinate_system is None:
        coordinate_system = "global" if "global" in shared else (shared[0] if shared else None)
    if coordinate_system not in shared:
        msg = f"Coordinate system {coordinate_system!r} is not shared by image {image_key!r} and spots {spots_key!r}; shared: {shared}."
        raise ValueError(msg)
    a_shapes = _affine(shapes, coordinate_system)
    a_image = _affine(image, coordinate_system)
    for what, key, a in (("spots", spots_key, a_shapes), ("image", image_key, a_image)):
        check_not_singular(a, what, key, coordinate_system)
    shapes_to_image = np.linalg.inv(a_image) @ a_shapes
    det = float(np.linalg.det(shapes_to_image[:2, :2]))

    index = shapes.index.to_numpy()
    _check_unique(shapes.index, f"The index of spots {spots_key!r}", "each spot needs its own id")
    xy, diam = shape_centers(shapes)
    kind = shape_kind(shapes)
    table = sdata.tables[table_key] if table_key is not None else None
    if table is not None:
        regions, region_key, instance_key = table_region(table)
        if region_key is None or instance_key is None:
            msg = f"Table {table_key!r} has no region/instance keys; parse it with TableModel.parse(region=..., region_key=..., instance_key=...)."
            raise ValueError(msg)
        in_region = (table.obs[region_key].astype(str) == spots_key).to_numpy()
        rows = np.flatnonzero(in_region)
        if rows.size == 0:
            msg = f"Table {table_key!r} has no rows annotating spots {spots_key!r}."
            raise ValueError(msg)
        inst = table.obs[instance_key].to_numpy()[rows]
        _check_unique(
            pd.Index(inst), f"Table {table_key!r} (column {instance_key!r})",
            "each row must annotate its own spot: drop or merge the duplicate rows",
        )  # fmt: skip
        pos = pd.Index(index).get_indexer(inst)
        if (pos < 0).any():
            missing = inst[pos < 0]
            msg = (
                f"Table {table_key!r} annotates {int((pos < 0).sum())} instances that are not in spots "
                f"{spots_key!r} (e.g. {list(missing[:3])}): the table does not annotate these spots. "
                "Re-link it with TableModel.parse(..., instance_key=...) or match_table_to_element."
            )
            raise ValueError(msg)
        obs_names = table.obs_names[rows]
    else:
        rows = np.arange(len(index))
        pos = rows
        obs_names = pd.Index(index.astype(str))
    xy = xy[pos]
    centers = xy @ shapes_to_image[:2, :2].T + shapes_to_image[:2, 2]
    check_centers(centers, obs_names, spots_key)
    diam = diam[pos]
    check_sizes(diam, kind, obs_names, spots_key)
    lin_scale = float(np.sqrt(abs(det)))
    diameter = float(np.median(diam)) * lin_scale

    h, w = (int(v) for v in image_levels(image)[0].shape_yx)
    check_on_image(centers, diameter, (h, w), obs_names, spots_key=spots_key, image_key=image_key, cs=coordinate_system)

    mpp_xy, source = _resolve_mpp(
        sdata,
        image,
        shapes,
        table,
        coordinate_system,
        a_image=a_image,
        a_shapes=a_shapes,
        diameter_px=diameter,
        circles=kind == "circle",
        explicit=microns_per_pixel,
        image_key=image_key,
    )
    if check_image:  # after the geometry: its checks read no pixel
        check_rgb(image, image_key)
    from spatialdata.transformations import get_transformation

    return SpotGeometry(
        centers=centers,
        diameter=diameter,
        microns_per_pixel=float(np.sqrt(mpp_xy[0] * mpp_xy[1])),
        microns_per_pixel_xy=mpp_xy,
        image_key=image_key,
        spots_key=spots_key,
        table_key=table_key,
        obs_names=obs_names,
        rows=rows,
        shapes_index=index[pos],
        image_shape=(h, w),
        coordinate_system=coordinate_system,
        shapes_to_image=shapes_to_image,
        mpp_source=source,
        kind=kind,
        shapes_transformations=dict(get_transformation(shapes, get_all=True)),
    )


def image_microns_per_pixel(
    sdata: SpatialData, *, image_key: str | None = None, microns_per_pixel: float | None = None
) -> float:
    """µm per level-0 pixel of an image, by the rules of :func:`spots` (ARCHITECTURE.md, "Physical units").

    In order: an explicit ``microns_per_pixel``; the image's transformation to the ``micrometers`` coordinate
    system; the spots' (a ``micrometers`` transformation of the spots, or Visium's 55 µm spot diameter), when
    the SpatialData has spots on this image; otherwise the same clear error as :func:`spots`. Anisotropic pixels
    give the geometric mean of the two axes.
    """
    image_key = pick_key(sdata, "images", image_key)
    if microns_per_pixel is not None:
        return _explicit_mpp(microns_per_pixel)[0][0]
    image = sdata.images[image_key]
    if MICRONS_CS in _coordinate_systems(image):
        lin = _affine(image, MICRONS_CS)[:2, :2]
        return float(np.sqrt(np.linalg.norm(lin[:, 0]) * np.linalg.norm(lin[:, 1])))
    try:
        geo = spots(sdata, image_key=image_key, check_image=False)
    except (KeyError, ValueError) as e:  # no spots on this image (or no pixel size through them either)
        raise _no_mpp_error(image_key) from e
    return geo.microns_per_pixel
