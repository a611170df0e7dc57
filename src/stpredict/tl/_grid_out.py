"""Output elements of ``superresolve`` beside its table: a predictor's dense map as an image, grid identity, names."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .._keys import UNS_KEY

if TYPE_CHECKING:
    from spatialdata import SpatialData

__all__ = ["check_output_names", "map_element", "same_geometry"]


def map_element(sdata: SpatialData, predictor: Any, slide: Any, geo: Any) -> tuple[Any, dict[str, Any]]:
    """The predictor's dense map over the spots' bounding box as an image element in the H&E's frame."""
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Scale, Sequence, Translation, get_transformation

    mpp = np.asarray(slide.microns_per_pixel_xy, float)
    c_um = np.asarray(slide.centers_px) * mpp
    r_um = float(geo.diameter_um)
    lo, hi = c_um.min(0) - r_um, c_um.max(0) + r_um
    arr, map_um, origin_um = predictor.predict_map(slide, (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])))
    to_px = Sequence(
        [
            Scale([map_um / mpp[0], map_um / mpp[1]], axes=("x", "y")),
            Translation([origin_um[0] / mpp[0], origin_um[1] / mpp[1]], axes=("x", "y")),
        ]
    )
    image_ts = get_transformation(sdata.images[geo.image_key], get_all=True)
    ts = {cs: Sequence([to_px, t]) for cs, t in image_ts.items()}
    img = Image2DModel.parse(
        np.asarray(arr, np.float32),
        dims=("c", "y", "x"),
        c_coords=[str(g) for g in predictor.genes],
        transformations=ts,
    )
    info = {
        "microns_per_pixel": float(map_um),
        "origin_um": [float(origin_um[0]), float(origin_um[1])],
        "values": "linear normalised expression (per 1e4)",
    }
    return img, info


def same_geometry(a: Any, b: Any) -> bool:
    """Whether two shapes elements have the same number of shapes at the same centroids."""
    if len(a) != len(b):
        return False
    ca, cb = a.geometry.centroid, b.geometry.centroid
    return bool(np.allclose(ca.x.to_numpy(), cb.x.to_numpy()) and np.allclose(ca.y.to_numpy(), cb.y.to_numpy()))


def check_output_names(sdata: SpatialData, shapes_name: str | None, image_name: str | None, he: str) -> None:
    """The grid's shapes and the map's image may not take the name of another kind of element, nor of the H&E.

    An existing map is replaced only if an earlier ``superresolve`` wrote it (a table records it).
    """
    for key, kind in ((shapes_name, "shapes"), (image_name, "images")):
        if key is None:
            continue
        other = [
            k for k in ("images", "labels", "points", "shapes", "tables") if k != kind and key in getattr(sdata, k)
        ]
        if other:
            arg = "map_key" if kind == "images" else "spots_key/grid"
            msg = f"Element name {key!r} is already used by {other[0]}; choose another {arg}."
            raise ValueError(msg)
    if image_name is None or image_name not in sdata.images:
        return
    if image_name == he:
        msg = f"map_key {image_name!r} is the H&E image; choose another name."
        raise ValueError(msg)
    maps = {t.uns.get(UNS_KEY, {}).get("superresolve", {}).get("map", {}).get("key") for t in sdata.tables.values()}
    if image_name not in maps:
        msg = (
            f"map_key {image_name!r} names an existing image that stp.tl.superresolve did not write: it would be "
            "replaced. Choose another name, or map_key=True for '<model>_<spots_key>_map'."
        )
        raise ValueError(msg)
