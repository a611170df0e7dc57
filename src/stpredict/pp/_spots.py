"""Spot geometry: the only place that resolves coordinate systems and physical units."""

from __future__ import annotations

import difflib
import re
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

if TYPE_CHECKING:
    from spatialdata import SpatialData

__all__ = ["SpotGeometry", "image_microns_per_pixel", "spots"]

logger = get_logger(__name__)

VISIUM_SPOT_UM = 55.0
_HD_BARCODE = re.compile(r"^s_\d{3}um_\d+_\d+")


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


def _affine(element: Any, cs: str) -> np.ndarray:
    from spatialdata.transformations import get_transformation

    t = get_transformation(element, to_coordinate_system=cs)
    return np.asarray(t.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")), dtype=float)


def _coordinate_systems(element: Any) -> list[str]:
    from spatialdata.transformations import get_transformation

    return list(get_transformation(element, get_all=True))


def _is_visium(table: Any) -> bool:
    """Visium spots (55 µm circles); Visium HD bins (barcodes ``s_008um_…``) are not."""
    if table is not None and table.n_obs and _HD_BARCODE.match(str(table.obs_names[0])):
        return False
    spatial = table.uns.get("spatial", {}) if table is not None else {}
    for lib in spatial.values() if isinstance(spatial, dict) else []:
        meta = lib.get("metadata", {}) if isinstance(lib, dict) else {}
        version = meta.get("software_version", "")
        version = version.decode() if isinstance(version, bytes) else str(version)
        if "spaceranger" in version.lower():
            return True
    return table is not None and {"array_row", "array_col", "in_tissue"} <= set(table.obs.columns)


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
            msg = f"Several tables annotate the spots ({', '.join(map(repr, annotating))}): pass table_key=..."
            raise KeyError(msg)
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


def _check_unique(index: pd.Index, what: str, fix: str) -> None:
    if index.is_unique:
        return
    dup = index[index.duplicated()]
    msg = f"{what} repeats {len(dup)} ids (e.g. {dup.unique()[:3].tolist()}): {fix}."
    raise ValueError(msg)


def _raise_dangling_tables(sdata: SpatialData) -> None:
    """Raise for a table annotating regions that are not elements of ``sdata`` (a misnamed region)."""
    elements = set(sdata.shapes) | set(sdata.labels) | set(sdata.points)
    for k, t in sdata.tables.items():
        regions, _, _ = table_region(t)
        missing = [r for r in regions if r not in elements]
        if regions and len(missing) == len(regions):
            close = difflib.get_close_matches(str(missing[0]), [str(e) for e in sdata.shapes], n=1, cutoff=0.5)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            msg = (
                f"Table {k!r} annotates {_names(missing)}, which the SpatialData does not have (its shapes: "
                f"{_names(sdata.shapes)}).{hint} Re-link the table to the spots: "
                "spatialdata.models.TableModel.parse(table, region=<spots_key>, region_key=..., instance_key=...), "
                "with the region column naming that element."
            )
            raise KeyError(msg)


def _names(keys: Any) -> str:
    keys = [str(k) for k in keys]
    return ", ".join(repr(k) for k in keys) if keys else "none"


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
        det = float(np.linalg.det(a[:2, :2]))
        if not np.isfinite(det) or abs(det) < 1e-12:
            msg = (
                f"The transformation of {what} {key!r} to {coordinate_system!r} is singular (it maps the {what} "
                "onto a line or a point): check it for a Scale of 0, or set the right one with "
                "spatialdata.transformations.set_transformation."
            )
            raise ValueError(msg)
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
    bad = ~np.isfinite(centers).all(axis=1)
    if bad.any():
        msg = (
            f"{int(bad.sum())} of {len(centers)} spots of {spots_key!r} have no finite centre (NaN or infinite "
            f"coordinates), e.g. {obs_names[np.flatnonzero(bad)[:3]].tolist()}: drop them or fix their coordinates."
        )
        raise ValueError(msg)
    diam = diam[pos]
    bad = ~(np.isfinite(diam) & (diam > 0))
    if bad.any():
        what, half = ("radius", 2.0) if kind == "circle" else ("size", 1.0)
        values = [float(v) / half for v in diam[bad][:3]]
        msg = (
            f"{int(bad.sum())} of {len(diam)} spots of {spots_key!r} have a {what} that is zero, negative or not "
            f"finite ({values}; spots {obs_names[np.flatnonzero(bad)[:3]].tolist()}): a spot must have a positive "
            "size. Set the spots' radius column to their radius, in the shapes' own coordinates."
        )
        raise ValueError(msg)
    lin_scale = float(np.sqrt(abs(det)))
    diameter = float(np.median(diam)) * lin_scale

    h, w = (int(v) for v in image_levels(image)[0].shape_yx)
    if diameter > max(h, w):
        msg = (
            f"Spots {spots_key!r} are {diameter:.4g} px across, larger than image {image_key!r} ({w}×{h} px): "
            "their radius is not in the shapes' coordinate units (a diameter or µm given for pixels?), or the "
            "transformations of spots and image disagree. Set the radius column to the spots' radius."
        )
        raise ValueError(msg)
    outside = (centers[:, 0] < 0) | (centers[:, 0] > w) | (centers[:, 1] < 0) | (centers[:, 1] > h)
    if outside.any():
        msg = (
            f"{int(outside.sum())} of {len(centers)} spots of {spots_key!r} lie outside image {image_key!r} "
            f"({w}×{h} px), e.g. {obs_names[np.flatnonzero(outside)[:3]].tolist()}: the spots and the image do "
            f"not match through coordinate system {coordinate_system!r}. Check their transformations or pass the right image_key."
        )
        raise ValueError(msg)

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


def _explicit_mpp(explicit: float) -> tuple[tuple[float, float], str]:
    value = float(explicit)
    if not np.isfinite(value) or value <= 0:
        msg = f"microns_per_pixel must be a positive number, got {explicit!r}."
        raise ValueError(msg)
    return (value, value), "explicit"


def _no_mpp_error(image_key: str) -> ValueError:
    msg = (
        f"No physical pixel size for image {image_key!r}: pass microns_per_pixel=..., or record it once with "
        f"`stp.io.set_microns_per_pixel(sdata, value, image_key={image_key!r})` (a Scale to the "
        f"{MICRONS_CS!r} coordinate system)."
    )
    return ValueError(msg)


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


def _resolve_mpp(
    sdata, image, shapes, table, cs, *, a_image, a_shapes, diameter_px, circles, explicit, image_key
) -> tuple[tuple[float, float], str]:
    if explicit is not None:
        return _explicit_mpp(explicit)
    image_cs = _coordinate_systems(image)
    m = None
    if MICRONS_CS in image_cs:
        m = _affine(image, MICRONS_CS)
    elif MICRONS_CS in _coordinate_systems(shapes):
        # image px -> shared cs -> spots' intrinsic -> µm
        m = _affine(shapes, MICRONS_CS) @ np.linalg.inv(a_shapes) @ a_image
    if m is not None:
        lin = m[:2, :2]
        mpp = (float(np.linalg.norm(lin[:, 0])), float(np.linalg.norm(lin[:, 1])))
        return mpp, "micrometers"
    if circles and _is_visium(table):
        value = VISIUM_SPOT_UM / diameter_px
        return (value, value), "visium"
    raise _no_mpp_error(image_key)
