"""HEST-1k samples (mahmoodlab/HEST) read into a SpatialData, and SpatialData written back as a HEST sample.

Layout covered: HEST-1k as released on the Hugging Face hub (metadata ``HEST_v1_1_0.csv``; checked against the hest
library 1.1.1, mahmoodlab/HEST afd42c3, `iter_hest`, `read_HESTData` and `dump_patches`),
one folder per kind of file, one file per sample id::

    <root>/st/<id>.h5ad          spots x genes counts; obsm["spatial"] = spot centres (x, y) in WSI level-0
                                 pixels; obs pxl_col_in_fullres / pxl_row_in_fullres (the same centres),
                                 array_row / array_col, in_tissue
    <root>/wsis/<id>.tif         the H&E, a pyramidal tiled generic TIFF
    <root>/metadata/<id>.json    pixel_size_um_estimated, pixel_size_um_embedded (µm per level-0 pixel),
                                 spot_diameter and inter_spot_dist (µm), st_technology, species, organ, ...
    <root>/patches/<id>.h5       optional: img (N, 224, 224, 3) uint8 at 0.5 µm/px, coords (N, 2) top-left
                                 corners in level-0 pixels, barcode (N, 1)

``spatial_plots/``, ``cellvit_seg/``, ``tissue_seg/``, ``xenium_seg/`` and ``transcripts/`` are not read.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from .._keys import DEFAULT_IMAGE
from .._logging import get_logger
from ._build import build_sdata, load_image
from ._tiff import use_tiff_pyramid

if TYPE_CHECKING:
    from spatialdata import SpatialData

__all__ = ["read_hest"]

logger = get_logger(__name__)

#: Sub-folder and suffix of each file a HEST sample needs.
HEST_FILES = {"st": ".h5ad", "wsis": ".tif", "metadata": ".json"}
#: Optional per-sample files (recognised in a path, never needed).
HEST_OPTIONAL = {"patches": ".h5"}
_HUB_HINT = "download it from the HEST-1k dataset (https://huggingface.co/datasets/MahmoodLab/hest)"


def _ids_in(folder: Path, suffix: str) -> set[str]:
    if not folder.is_dir():
        return set()
    return {p.name[: -len(suffix)] for p in folder.iterdir() if p.name.endswith(suffix) and not p.name.startswith(".")}


def _few(ids: set[str] | list[str], n: int = 5) -> str:
    ids = sorted(ids)
    shown = ", ".join(map(repr, ids[:n]))
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > n else "")


def resolve_sample(path: str | Path, sample_id: str | None) -> tuple[Path, str]:
    """``(root, sample_id)`` from a dataset root (and an id), or from one of a sample's files."""
    path = Path(path)
    kinds = {**HEST_FILES, **HEST_OPTIONAL}
    if path.suffix and path.parent.name in kinds and path.name.endswith(kinds[path.parent.name]):
        root, found = path.parent.parent, path.name[: -len(kinds[path.parent.name])]
        if sample_id is not None and sample_id != found:
            msg = f"{str(path)!r} is a file of sample {found!r}, not of sample_id={sample_id!r}: pass one or the other."
            raise ValueError(msg)
        sample_id = found
    elif not path.exists() and (path.parent / "st").is_dir() and sample_id in (None, path.name):
        root, sample_id = path.parent, path.name  # "<root>/<id>"
    else:
        root = path
    if not root.is_dir():
        msg = f"HEST dataset folder {str(root)!r} does not exist."
        raise FileNotFoundError(msg)
    ids = _ids_in(root / "st", ".h5ad")
    if sample_id is None:
        if len(ids) == 1:
            return root, next(iter(ids))
        if not ids:
            msg = (
                f"{str(root)!r} holds no HEST sample: expected st/<id>.h5ad, wsis/<id>.tif and metadata/<id>.json "
                "under it (pass the dataset root, the folder holding st/, wsis/ and metadata/)."
            )
            raise FileNotFoundError(msg)
        msg = f"{str(root)!r} holds {len(ids)} HEST samples ({_few(ids)}): pass sample_id=... to choose one."
        raise ValueError(msg)
    known = set().union(*(_ids_in(root / sub, suf) for sub, suf in HEST_FILES.items()))
    if sample_id not in known:
        msg = (
            f"No HEST sample {sample_id!r} in {str(root)!r}; it holds "
            + (_few(known) if known else "no sample (no st/, wsis/ or metadata/ files)")
            + "."
        )
        raise KeyError(msg)
    return root, sample_id


def sample_files(root: Path, sample_id: str) -> dict[str, Path]:
    """The sample's needed files, raising one error that names every missing one."""
    files = {sub: root / sub / f"{sample_id}{suf}" for sub, suf in HEST_FILES.items()}
    missing = [f"{sub}/{p.name}" for sub, p in files.items() if not p.is_file()]
    if missing:
        msg = f"HEST sample {sample_id!r} in {str(root)!r} lacks {', '.join(missing)}: {_HUB_HINT}."
        raise FileNotFoundError(msg)
    return files


def _positive(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def _clean(value: Any) -> Any:
    """JSON metadata as values a zarr ``uns`` stores: no None, lists as arrays of one type."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        items = [v for v in value if v is not None]
        if all(isinstance(v, bool | int | float) for v in items) or all(isinstance(v, str) for v in items):
            return np.asarray(items)
        return json.dumps(value)
    return value


def read_hest(
    path: str | Path,
    *,
    sample_id: str | None = None,
    microns_per_pixel: float | None = None,
    pixel_size: Literal["estimated", "embedded"] = "estimated",
    spot_diameter_um: float | None = None,
    chunks: int = 1024,
) -> SpatialData:
    """Read one HEST-1k sample (Jaume et al. 2024, mahmoodlab/HEST).

    Covers the layout of the HEST-1k release (metadata ``HEST_v1_1_0.csv``; files as the hest 1.1 library's
    ``iter_hest`` reads them): ``st/<id>.h5ad``, ``wsis/<id>.tif`` (pyramidal generic TIFF) and
    ``metadata/<id>.json`` under one dataset root. Optional folders (``patches/``, ``cellvit_seg/``,
    ``tissue_seg/``, ...) are not read: stpredict cuts its own patches from the WSI.

    The H&E stays on disk: level 0 is read lazily through tifffile and dask, and the coarser levels come from
    the TIFF's own pyramid where their sizes match (else they are computed from level 0 on demand).

    The pixel size is ``pixel_size_um_estimated`` by default, which HEST itself uses for patching: HEST
    estimated it for every sample from the spot lattice (pixels between spots of known distance in µm).
    ``pixel_size_um_embedded`` is only what the original image's TIFF tags said: in the v1.1.0 metadata it is
    missing for 872 of 1229 samples and more than 10 % off the estimate for 198 of the 357 others (e.g. a
    default 800 dpi, 31.75 µm/px, on Visium slides of 0.45 µm/px).

    Parameters
    ----------
    path
        The dataset root (the folder holding ``st/``, ``wsis/`` and ``metadata/``); ``<root>/<id>``, a sample's
        id inside the root; or any file of the sample (``<root>/st/<id>.h5ad``, ``<root>/wsis/<id>.tif``, ...).
    sample_id
        The sample's id (e.g. ``"TENX95"``); ``None`` if ``path`` is one of its files or the root holds one sample.
    microns_per_pixel
        µm per level-0 pixel of the WSI, overriding the metadata.
    pixel_size
        Which metadata pixel size to use: ``"estimated"`` (``pixel_size_um_estimated``) or ``"embedded"``
        (``pixel_size_um_embedded``).
    spot_diameter_um
        Spot diameter in µm, overriding the metadata's ``spot_diameter`` (HEST's Xenium samples have none: their
        spots are transcripts pooled into squares; give the square's side).
    chunks
        Chunk size of the image levels.

    Returns
    -------
    A SpatialData with image ``"he"`` (multiscale, lazy), circles ``"spots"`` of the sample's spot diameter and
    table ``"table"`` of the counts (int32 when integral) annotating them; obs_names are HEST's barcodes, obs
    keeps ``in_tissue``, ``array_row``, ``array_col``, ``pxl_col_in_fullres``, ``pxl_row_in_fullres`` and
    adds ``library_id``. Elements are in the ``"global"`` (level-0 pixels) and ``"micrometers"`` coordinate
    systems. ``table.uns["stpredict_source"]`` records ``technology="HEST"``, ``sample_id``, ``st_technology``,
    ``spot_diameter_um``, ``inter_spot_dist_um``, ``microns_per_pixel``, ``pixel_size_source`` and the whole
    JSON ``metadata``.

    Examples
    --------
    >>> import stpredict as stp  # doctest: +SKIP
    >>> sdata = stp.io.read_hest("hest_data", sample_id="TENX95")  # doctest: +SKIP
    >>> stp.tl.predict(sdata, "ridge")  # doctest: +SKIP
    """
    if pixel_size not in ("estimated", "embedded"):
        msg = f"pixel_size must be 'estimated' or 'embedded', got {pixel_size!r}."
        raise ValueError(msg)
    root, sample_id = resolve_sample(path, sample_id)
    files = sample_files(root, sample_id)
    try:
        meta = json.loads(files["metadata"].read_text())
    except json.JSONDecodeError as e:
        msg = f"metadata/{sample_id}.json is not valid JSON ({e}): {_HUB_HINT} again."
        raise ValueError(msg) from e
    if not isinstance(meta, dict):
        msg = f"metadata/{sample_id}.json holds a {type(meta).__name__}, not HEST's object of sample metadata."
        raise ValueError(msg)
    mpp, mpp_source, diameter_um = _units(meta, sample_id, microns_per_pixel, pixel_size, spot_diameter_um)

    import anndata as ad

    adata = ad.read_h5ad(files["st"])
    centers = _centers(adata, sample_id)
    obs = _obs(adata, sample_id)
    image = load_image(files["wsis"], chunks=chunks)
    _check_spots(centers, image.shape[1:], diameter_um, mpp, sample_id)
    inter = _positive(meta.get("inter_spot_dist"))
    source = {
        "technology": "HEST",
        "st_technology": str(meta.get("st_technology", "unknown")),
        "sample_id": sample_id,
        "library_id": sample_id,
        "spot_diameter_um": diameter_um,
        "microns_per_pixel": mpp,
        "pixel_size_source": mpp_source,
        "metadata": _clean(meta),
    }
    if inter is not None:
        source["inter_spot_dist_um"] = inter
    X = adata.X
    var_names = pd.Index(adata.var_names.astype(str))
    if not var_names.is_unique:
        n_dup = int(var_names.duplicated().sum())
        var_names = pd.Index(ad.utils.make_index_unique(var_names))
        logger.info("%s: %d repeated gene names made unique (suffix -1, -2, ...).", sample_id, n_dup)
    sdata = build_sdata(
        image, centers, diameter_um / mpp, X, mpp_xy=(mpp, mpp), obs=obs, var_names=var_names,
        uns={"stpredict_source": source}, chunks=chunks,
    )  # fmt: skip
    replaced = use_tiff_pyramid(sdata.images[DEFAULT_IMAGE], files["wsis"], chunks=chunks)
    logger.info(
        "%s: %d spots x %d genes, %.4g µm/px (%s), spots %.4g µm; levels %s read from the TIFF pyramid.",
        sample_id, len(centers), len(var_names), mpp, mpp_source, diameter_um, replaced or "none",
    )  # fmt: skip
    return sdata


def _units(
    meta: dict, sample_id: str, microns_per_pixel: Any, pixel_size: str, spot_diameter_um: Any
) -> tuple[float, str, float]:
    """``(µm per pixel, where it came from, spot diameter in µm)``: explicit values, else the metadata's."""
    key = f"pixel_size_um_{pixel_size}"
    if microns_per_pixel is not None:
        mpp = _positive(microns_per_pixel)
        if mpp is None:
            msg = f"microns_per_pixel must be a positive number, got {microns_per_pixel!r}."
            raise ValueError(msg)
        mpp_source = "explicit"
    else:
        mpp = _positive(meta.get(key))
        if mpp is None:
            other = "pixel_size_um_embedded" if pixel_size == "estimated" else "pixel_size_um_estimated"
            alt = (
                f" (it has {other}={meta[other]!r}: pass pixel_size={other[14:]!r} to use it)"
                if _positive(meta.get(other))
                else ""
            )
            msg = (
                f"metadata/{sample_id}.json has no usable {key!r} (got {meta.get(key)!r}){alt}. Pass the WSI's "
                f"level-0 pixel size: read_hest(..., microns_per_pixel=...)."
            )
            raise ValueError(msg)
        mpp_source = key
    if spot_diameter_um is not None:
        diameter_um = _positive(spot_diameter_um)
        if diameter_um is None:
            msg = f"spot_diameter_um must be a positive number, got {spot_diameter_um!r}."
            raise ValueError(msg)
    else:
        diameter_um = _positive(meta.get("spot_diameter"))
        if diameter_um is None:
            msg = (
                f"metadata/{sample_id}.json has no usable 'spot_diameter' (got {meta.get('spot_diameter')!r}; "
                f"st_technology {meta.get('st_technology', 'unknown')!r}). Pass the spots' diameter in µm: "
                "read_hest(..., spot_diameter_um=...)."
            )
            raise ValueError(msg)

    return mpp, mpp_source, diameter_um


def _centers(adata: Any, sample_id: str) -> np.ndarray:
    """Spot centres (x, y) in level-0 pixels: ``obsm["spatial"]``, else ``pxl_col/row_in_fullres``."""
    cols = ["pxl_col_in_fullres", "pxl_row_in_fullres"]
    from_obs = None
    if set(cols) <= set(adata.obs.columns):
        from_obs = adata.obs[cols].to_numpy(dtype=float)
    if "spatial" in adata.obsm and np.asarray(adata.obsm["spatial"]).shape == (adata.n_obs, 2):
        xy = np.asarray(adata.obsm["spatial"], dtype=float)
        if from_obs is not None and np.nanmax(np.abs(xy - from_obs), initial=0.0) > 1.0:
            logger.warning(
                "%s: obsm['spatial'] and obs pxl_col/row_in_fullres disagree by up to %.1f px; using obsm['spatial'].",
                sample_id, float(np.nanmax(np.abs(xy - from_obs))),
            )  # fmt: skip
    elif from_obs is not None:
        xy = from_obs
    else:
        msg = (
            f"st/{sample_id}.h5ad has neither obsm['spatial'] nor obs {cols}: no spot centres in WSI pixels "
            "(a HEST sample without spots, e.g. Xenium without pooled transcripts, cannot be read)."
        )
        raise ValueError(msg)
    if len(xy) == 0 or not np.isfinite(xy).all():
        msg = f"st/{sample_id}.h5ad has {'no spots' if len(xy) == 0 else 'non-finite spot centres'}."
        raise ValueError(msg)
    return xy


def _obs(adata: Any, sample_id: str) -> pd.DataFrame:
    """HEST's obs, with text columns as str (zarr-writable), barcodes as unique str and ``library_id``."""
    obs = adata.obs.copy()
    for c in obs.columns:
        if obs[c].dtype == object:
            obs[c] = obs[c].astype(str)
    obs.index = pd.Index(obs.index.astype(str))
    if not obs.index.is_unique:
        logger.info("%s: repeated barcodes made unique.", sample_id)
        import anndata as ad

        obs.index = pd.Index(ad.utils.make_index_unique(obs.index))
    for c in ("region", "spot_id"):  # names build_sdata writes
        if c in obs.columns:
            obs = obs.rename(columns={c: f"hest_{c}"})
    obs["library_id"] = pd.Categorical([sample_id] * len(obs))
    return obs


def _check_spots(centers: np.ndarray, shape_yx: tuple[int, int], diameter_um: float, mpp: float, sid: str) -> None:
    h, w = (int(s) for s in shape_yx)
    outside = ~((centers[:, 0] >= 0) & (centers[:, 0] < w) & (centers[:, 1] >= 0) & (centers[:, 1] < h))
    if outside.all():
        msg = (
            f"No spot of {sid!r} lies on wsis/{sid}.tif ({w} x {h} px); spot centres span x "
            f"{centers[:, 0].min():.0f}..{centers[:, 0].max():.0f}, y {centers[:, 1].min():.0f}.."
            f"{centers[:, 1].max():.0f}. The WSI is not the one the spots were aligned to."
        )
        raise ValueError(msg)
    if outside.any():
        logger.warning("%s: %d of %d spot centres lie outside the WSI.", sid, int(outside.sum()), len(centers))
    if len(centers) > 1:
        from scipy.spatial import cKDTree

        d, _ = cKDTree(centers).query(centers, k=2)
        spacing_um = float(np.median(d[:, 1])) * mpp
        if spacing_um > 5 * diameter_um:
            logger.warning(
                "%s: spots are %.3g µm apart but their diameter is %.3g µm: if the table holds pooled bins "
                "(HEST's Visium HD and Xenium samples), pass spot_diameter_um=<bin side>.",
                sid, spacing_um, diameter_um,
            )  # fmt: skip
