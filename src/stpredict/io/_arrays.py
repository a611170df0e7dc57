"""Build a SpatialData from plain arrays."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._validate import check_count_values
from ._build import build_sdata, load_image

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    import dask.array as da
    from spatialdata import SpatialData

__all__ = ["from_arrays"]


def from_arrays(
    image: np.ndarray | da.Array | str | Path,
    coords: np.ndarray,
    counts: Any,
    microns_per_pixel: float | tuple[float, float],
    spot_diameter_um: float,
    *,
    genes: Sequence[str] | None = None,
    obs_names: Sequence[str] | None = None,
    channel_axis: int | None = None,
) -> SpatialData:
    """Build a SpatialData from an image, spot centres and counts.

    Parameters
    ----------
    image
        H&E image as ``(y, x, c)`` / ``(c, y, x)`` array or a file path.
    coords
        ``(n, 2)`` spot centres, x then y, in pixels of ``image``.
    counts
        ``(n, genes)`` raw counts: array, sparse matrix or DataFrame (its columns then name the genes).
        ``None`` builds an H&E-only object with an empty (0-gene) table.
    microns_per_pixel
        Pixel size of ``image`` in µm (a pair for x and y if they differ).
    spot_diameter_um
        Spot diameter in µm (55 for Visium, 100 for legacy ST).
    genes
        Gene names; default the DataFrame's columns or ``gene_0..``.
    obs_names
        Spot names; default the DataFrame's index or ``spot_0..``.
    channel_axis
        Axis of the colour channels in ``image`` (guessed when ``None``).

    Returns
    -------
    A SpatialData with image ``"he"``, circles ``"spots"`` and table ``"table"``.

    Raises
    ------
    ValueError
        Before reading the image: no spot, a non-finite spot position, a spot diameter that is not a positive
        number, repeated gene or spot names, or counts that are negative, not finite or look log-normalised
        (non-integer values no larger than 30).
    """
    coords = np.asarray(coords, dtype=float)
    if coords.ndim != 2 or coords.shape[1] != 2:
        msg = f"coords must be (n, 2) x/y pixel positions, got shape {coords.shape}."
        raise ValueError(msg)
    n = len(coords)
    if n == 0:
        msg = "coords holds no spot (shape (0, 2)): a SpatialData needs at least one spot."
        raise ValueError(msg)
    bad = ~np.isfinite(coords).all(axis=1)
    if bad.any():
        msg = (
            f"coords has {int(bad.sum())} spots with NaN or infinite positions (rows {np.flatnonzero(bad)[:3].tolist()}"
            f"{', ...' if bad.sum() > 3 else ''}): drop those spots (and their counts rows) first."
        )
        raise ValueError(msg)
    if not (np.isfinite(spot_diameter_um) and spot_diameter_um > 0):
        msg = f"spot_diameter_um must be a positive number of µm (55 for Visium, 100 for legacy ST), got {spot_diameter_um!r}."
        raise ValueError(msg)
    if isinstance(counts, pd.DataFrame):
        genes = genes if genes is not None else counts.columns.astype(str)
        obs_names = obs_names if obs_names is not None else counts.index.astype(str)
        counts = counts.to_numpy()
    if counts is None:
        counts = np.zeros((n, 0), dtype=np.int32)
    elif not sp.issparse(counts):
        counts = np.asarray(counts)
        if counts.ndim != 2:
            msg = f"counts must be a (spots, genes) matrix, got shape {counts.shape}."
            raise ValueError(msg)
    if counts.shape[0] != n:
        msg = f"counts has {counts.shape[0]} rows but coords has {n} spots."
        raise ValueError(msg)
    genes = pd.Index(genes if genes is not None else [f"gene_{i}" for i in range(counts.shape[1])]).astype(str)
    if len(genes) != counts.shape[1]:
        msg = f"{len(genes)} gene names for {counts.shape[1]} count columns."
        raise ValueError(msg)
    obs_names = pd.Index(obs_names if obs_names is not None else [f"spot_{i}" for i in range(n)]).astype(str)
    for what, names in (("gene", genes), ("spot", obs_names)):
        if not names.is_unique:
            dup = names[names.duplicated()].unique()[:3].tolist()
            msg = f"{len(names) - names.nunique()} {what} names repeat (e.g. {dup}): each {what} needs its own name."
            raise ValueError(msg)
    if counts.shape[1]:
        check_count_values(
            counts, "counts passed to from_arrays",
            fix="from_arrays takes the raw counts (whole numbers of reads or UMIs per spot and gene).",
        )  # fmt: skip
    mpp = np.broadcast_to(np.asarray(microns_per_pixel, dtype=float), (2,))
    if not np.all(np.isfinite(mpp) & (mpp > 0)):
        msg = f"microns_per_pixel must be positive, got {microns_per_pixel!r}."
        raise ValueError(msg)
    img = load_image(image, channel_axis=channel_axis)
    diameter_px = float(spot_diameter_um) / float(np.sqrt(mpp[0] * mpp[1]))
    return build_sdata(
        img,
        coords,
        diameter_px,
        counts,
        mpp_xy=(float(mpp[0]), float(mpp[1])),
        obs=pd.DataFrame(index=obs_names),
        var_names=genes,
        uns={"stpredict_source": {"technology": "arrays", "spot_diameter_um": float(spot_diameter_um)}},
    )
