"""Reader for the legacy Spatial Transcriptomics layout (ST Spot Detector output)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from .._logging import get_logger
from ._build import build_sdata, load_image

if TYPE_CHECKING:
    import dask.array as da
    from spatialdata import SpatialData

__all__ = ["fit_array_affine", "read_st"]

logger = get_logger(__name__)

#: µm between neighbouring array positions, per unit step of the array coordinates.
_ARRAY_PITCH_UM = {"1k": 200.0, "2k": 100.0}


def fit_array_affine(array_xy: np.ndarray, pixel_xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares affine ``pixel = A @ array + t`` of a spot array; returns ``(A, t)``."""
    design = np.column_stack([array_xy, np.ones(len(array_xy))])
    coef, *_ = np.linalg.lstsq(design, pixel_xy, rcond=None)
    return coef[:2].T, coef[2]


def read_st(
    counts: str | Path | pd.DataFrame,
    spots: str | Path | pd.DataFrame,
    image: str | Path | np.ndarray | da.Array,
    *,
    array: Literal["1k", "2k"] = "1k",
    spot_diameter_um: float = 100.0,
    microns_per_pixel: float | None = None,
    under_tissue_only: bool = True,
    library_id: str | None = None,
) -> SpatialData:
    """Read a legacy ST section: counts table, ST Spot Detector spot file and H&E image.

    Parameters
    ----------
    counts
        Spots × genes table (tsv, optionally gzipped) whose first column is the spot id ``"<x>x<y>"``
        (integer array coordinates), or such a DataFrame.
    spots
        Spot Detector file with columns ``x y new_x new_y pixel_x pixel_y [selected]``; ``pixel_x/pixel_y``
        are the spot centre in pixels of ``image``.
    image
        The full-resolution H&E (JPEG/PNG/TIFF path or an array). JPEG and PNG are decoded once into a
        chunked multiscale image.
    array
        ``"1k"`` (square lattice, 200 µm pitch: her2st) or ``"2k"`` (centred-rectangular lattice with
        ``x + y`` even, 100 µm per array unit, 141 µm between diagonal neighbours: the mouse olfactory bulb).
    spot_diameter_um
        Physical spot diameter (100 µm on both ST arrays).
    microns_per_pixel
        Isotropic pixel size; ``None`` fits the array → pixel affine of this section, which also captures
        scans whose x and y scales differ.
    under_tissue_only
        Keep only rows with ``selected == 1`` in the spot file (when the column exists).
    library_id
        Name recorded in ``obs["library_id"]``; defaults to the counts file's stem.

    Returns
    -------
    A SpatialData with image ``"he"``, circles ``"spots"`` and a table ``"table"`` of raw counts whose
    obs_names are the source's spot ids, in the ``"global"`` (pixels) and ``"micrometers"`` coordinate systems.
    """
    if array not in _ARRAY_PITCH_UM:
        msg = f"array must be '1k' or '2k', got {array!r}."
        raise ValueError(msg)
    for what, source in (("counts", counts), ("spots", spots), ("image", image)):
        if isinstance(source, str | Path) and not Path(source).is_file():
            msg = f"The ST {what} file {str(source)!r} does not exist ({what}=...)."
            raise FileNotFoundError(msg)
    if isinstance(counts, str | Path):
        if library_id is None:
            library_id = Path(counts).name.split(".")[0]
        counts = pd.read_csv(counts, sep="\t", index_col=0)
    else:
        counts = counts.copy()
    if isinstance(spots, str | Path):
        spots = pd.read_csv(spots, sep="\t")
    library_id = library_id or "st"
    needed = {"x", "y", "pixel_x", "pixel_y"}
    if not needed <= set(spots.columns):
        msg = f"The spot file lacks columns {sorted(needed - set(spots.columns))}; expected ST Spot Detector output."
        raise ValueError(msg)
    spots = spots.copy()
    if under_tissue_only and "selected" in spots.columns:
        spots = spots[spots["selected"].astype(int) == 1]
    spots.index = pd.Index([f"{int(x)}x{int(y)}" for x, y in zip(spots["x"], spots["y"], strict=True)])
    spots = spots[~spots.index.duplicated()]
    counts.index = counts.index.astype(str)
    ids = counts.index.intersection(spots.index, sort=False)
    if len(ids) == 0:
        msg = "No spot id of the counts table matches the spot file (ids look like '10x21' = '<x>x<y>')."
        raise ValueError(msg)
    n_drop_spots = len(spots) - len(ids)
    n_drop_counts = len(counts) - len(ids)
    if n_drop_spots:
        logger.info("%s: %d spot-file rows have no counts row; dropped.", library_id, n_drop_spots)
    if n_drop_counts:
        logger.info("%s: %d counts rows are not selected spots of the spot file; dropped.", library_id, n_drop_counts)
    spots = spots.loc[ids]
    cnt = counts.loc[ids]
    pixel_xy = spots[["pixel_x", "pixel_y"]].to_numpy(dtype=float)
    array_xy = spots[["x", "y"]].to_numpy(dtype=float)

    pitch = _ARRAY_PITCH_UM[array]
    if microns_per_pixel is None:
        if len(ids) < 3:
            msg = "At least 3 spots are needed to fit the array → pixel scale; pass microns_per_pixel=..."
            raise ValueError(msg)
        A, _ = fit_array_affine(array_xy, pixel_xy)
        m = pitch * np.linalg.inv(A)  # pixel -> µm (linear part)
        mpp_xy = (float(np.linalg.norm(m[:, 0])), float(np.linalg.norm(m[:, 1])))
    else:
        mpp_xy = (float(microns_per_pixel), float(microns_per_pixel))
    mpp = float(np.sqrt(mpp_xy[0] * mpp_xy[1]))
    diameter_px = spot_diameter_um / mpp

    img = load_image(image)
    obs = pd.DataFrame(
        {
            "array_x": spots["x"].to_numpy(dtype=int),
            "array_y": spots["y"].to_numpy(dtype=int),
            "library_id": pd.Categorical([library_id] * len(ids)),
        },
        index=ids,
    )
    meta = {
        "technology": "ST",
        "array": array,
        "spot_diameter_um": float(spot_diameter_um),
        "microns_per_pixel_xy": list(mpp_xy),
        "library_id": library_id,
    }
    return build_sdata(
        img,
        pixel_xy,
        diameter_px,
        cnt.to_numpy(),
        mpp_xy=mpp_xy,
        obs=obs,
        var_names=cnt.columns,
        uns={"stpredict_source": meta},
    )
