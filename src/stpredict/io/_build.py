"""Assemble a valid SpatialData from an image, spot centres and counts (shared by every reader)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._image import to_multiscale
from .._keys import DEFAULT_IMAGE, DEFAULT_SPOTS, DEFAULT_TABLE, MICRONS_CS, PIXELS_CS
from ._tiff import TIFF_SUFFIXES, tiff_cyx

if TYPE_CHECKING:
    from spatialdata import SpatialData

__all__ = ["build_sdata", "int32_if_whole", "load_image"]


def load_image(
    image: str | Path | np.ndarray | da.Array, *, channel_axis: int | None = None, chunks: int = 1024
) -> np.ndarray | da.Array:
    """Read an image file or array into a ``(c, y, x)`` array.

    JPEG/PNG are decoded once (they cannot be read lazily); TIFF/OME-TIFF levels are read lazily in blocks of
    ``chunks`` pixels (:func:`~stpredict.io._tiff.tiff_cyx`), channels placed by the file's axis letters.
    Arrays may be ``(y, x, c)``, ``(c, y, x)`` or ``(y, x)``.
    """
    if isinstance(image, str | Path):
        path = Path(image)
        if not path.exists():
            msg = f"Image file {str(path)!r} does not exist."
            raise FileNotFoundError(msg)
        if path.suffix.lower() in TIFF_SUFFIXES:
            return tiff_cyx(path, 0, chunks=chunks)
        from PIL import Image

        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            with Image.open(path) as im:
                arr = np.asarray(im)
        finally:
            Image.MAX_IMAGE_PIXELS = old
        return _to_cyx(arr, channel_axis=None)
    return _to_cyx(image, channel_axis=channel_axis)


def int32_if_whole(X: Any, *, table_key: str | None = None) -> Any:
    """Counts as int32 when every value is a whole number within int32's range; otherwise ``X`` unchanged.

    The one rule of every reader (scanpy reads 10x HDF5 counts as float32): exact equality with the rounded
    value, finite, and no overflow (``astype`` would truncate 2.9999 to 2 and wrap 2**31 to a negative count).
    ``X`` stays sparse (same format) or dense. With ``table_key``, a kept non-int32 ``X`` is logged as a warning.
    """
    values = X.data if sp.issparse(X) else np.asarray(X)
    kind = values.dtype.kind  # b: bool, i/u: integers, f: floats
    if values.dtype == np.int32:
        return X
    reason = None if kind in "biuf" else f"values of dtype {values.dtype}"
    if reason is None and values.size and kind != "b":
        lo, hi, int32 = values.min(), values.max(), np.iinfo(np.int32)
        if kind == "f" and not np.isfinite([lo, hi]).all():
            reason = "NaN or infinite values"
        elif not (int32.min <= lo and hi <= int32.max):
            reason = f"values outside int32's range ({lo:g} to {hi:g})"
        elif kind == "f" and not np.array_equal(values, np.round(values)):
            reason = "non-integer values"
    if reason is None:
        return X.astype(np.int32)
    if table_key is not None:
        from .._logging import get_logger

        get_logger(__name__).warning("Table %r holds %s: kept as %s.", table_key, reason, values.dtype)
    return X


def _to_cyx(arr: Any, *, channel_axis: int | None) -> np.ndarray | da.Array:
    if not isinstance(arr, da.Array):
        arr = np.asarray(arr)
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim != 3:
        msg = f"Expected a 2-D or 3-D image array, got shape {arr.shape}."
        raise ValueError(msg)
    if channel_axis is None:
        channel_axis = 2 if arr.shape[2] <= 4 and arr.shape[0] > 4 else (0 if arr.shape[0] <= 4 else 2)
    if channel_axis in (2, -1):
        arr = arr.transpose(2, 0, 1)
    return arr


def build_sdata(
    image_cyx: np.ndarray | da.Array,
    centers_px: np.ndarray,
    diameter_px: float,
    counts: Any,
    *,
    mpp_xy: tuple[float, float],
    obs: pd.DataFrame,
    var_names: pd.Index,
    image_key: str = DEFAULT_IMAGE,
    spots_key: str = DEFAULT_SPOTS,
    table_key: str = DEFAULT_TABLE,
    uns: dict | None = None,
    chunks: int = 1024,
) -> SpatialData:
    """Build ``SpatialData(images={image_key}, shapes={spots_key}, tables={table_key})``.

    Everything is placed in two coordinate systems: ``"global"`` (level-0 image pixels) and
    ``"micrometers"`` (a ``Scale`` by the pixel size), so downstream code can work in microns.
    """
    import anndata as ad
    from spatialdata import SpatialData
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import Identity, Scale

    def transforms():
        return {
            PIXELS_CS: Identity(),
            MICRONS_CS: Scale([float(mpp_xy[0]), float(mpp_xy[1])], axes=("x", "y")),
        }

    image = to_multiscale(image_cyx, transformations=transforms(), chunks=chunks)
    n = len(centers_px)
    instance = np.arange(n)
    shapes = ShapesModel.parse(
        np.asarray(centers_px, dtype=float),
        geometry=0,
        radius=np.full(n, float(diameter_px) / 2.0),
        index=instance,
        transformations=transforms(),
    )
    X = int32_if_whole(sp.csr_matrix(counts if sp.issparse(counts) else np.asarray(counts)))
    obs = obs.copy()
    obs["region"] = pd.Categorical([spots_key] * n)
    obs["spot_id"] = instance
    adata = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=pd.Index(var_names).astype(str)))
    adata.obsm["spatial"] = np.asarray(centers_px, dtype=float)
    if uns:
        adata.uns.update(uns)
    table = TableModel.parse(adata, region=spots_key, region_key="region", instance_key="spot_id")
    return SpatialData(images={image_key: image}, shapes={spots_key: shapes}, tables={table_key: table})
