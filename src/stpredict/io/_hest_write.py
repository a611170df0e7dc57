"""Write a SpatialData as a HEST-1k sample (the layout :func:`stpredict.io.read_hest` reads)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._logging import get_logger
from .._settings import settings

if TYPE_CHECKING:
    from spatialdata import SpatialData

    from ..pp._spots import SpotGeometry

__all__ = ["to_hest"]

logger = get_logger(__name__)

#: stpredict_source["technology"] -> HEST's st_technology.
_TECHNOLOGY = {"Visium": "Visium", "ST": "Spatial Transcriptomics", "HEST": None}
#: Longest side of the thumbnail HEST keeps in ``uns["spatial"]["ST"]["images"]["downscaled_fullres"]``.
THUMBNAIL_PX = 1000
TIFF_TILE = 256


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.stem}.tmp{path.suffix}")


def to_hest(
    sdata: SpatialData,
    path: str | Path,
    *,
    sample_id: str,
    image_key: str | None = None,
    spots_key: str | None = None,
    table_key: str | None = None,
    microns_per_pixel: float | None = None,
    patch_size_um: float = 112.0,
    patch_px: int = 224,
    write_wsi: bool = False,
    metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
    batch_size: int | None = None,
    progress: bool | None = None,
) -> dict[str, Path]:
    """Write the spots, counts and patches of a SpatialData as a HEST-1k sample under ``path``.

    Writes the files of the HEST-1k layout (see :func:`stpredict.io.read_hest`), so that the HEST-Benchmark
    recipe (embed ``patches/<id>.h5``, match ``barcode`` to the rows of ``st/<id>.h5ad``, fit a linear probe)
    runs on stpredict's patches:

    - ``st/<id>.h5ad``: the counts (rows in the table's order, obs_names the barcodes), obs ``in_tissue``,
      ``array_row``, ``array_col`` (when the table has array coordinates), ``pxl_col_in_fullres`` and
      ``pxl_row_in_fullres``; ``obsm["spatial"]`` the spot centres (x, y) in level-0 pixels; and the
      thumbnail and scale factors HEST's ``read_HESTData`` requires in ``uns["spatial"]["ST"]``.
    - ``metadata/<id>.json``: ``pixel_size_um_estimated`` (the level-0 µm/px), ``spot_diameter`` and
      ``inter_spot_dist`` in µm (the median distance to the nearest spot unless the source metadata has it),
      ``st_technology``, image size, spot count, the metadata a :func:`~stpredict.io.read_hest` sample came
      with, and ``metadata``.
    - ``patches/<id>.h5``: ``img`` ``(N, patch_px, patch_px, 3)`` uint8, the windows of
      :func:`stpredict.pp.patches` (same level, resampling and white padding as every predictor sees);
      ``coords`` ``(N, 2)`` int64, each window's top-left corner (x, y) in level-0 pixels (HEST's convention);
      ``barcode`` ``(N, 1)`` bytes. Both ``img`` and ``coords`` carry HEST's attributes ``patch_size_target``,
      ``patch_size_src``, ``pixel_size`` and ``downsample``.
    - ``wsis/<id>.tif`` only with ``write_wsi=True``: every level of the image as a tiled pyramidal TIFF
      (256 px tiles, deflate, resolution tags in µm/px), which can be large.

    Parameters
    ----------
    sdata
        A SpatialData with an H&E image, spots and a table of raw counts annotating them.
    path
        Dataset root to write into (created if needed; other samples in it are left alone).
    sample_id
        The sample's id: letters, digits, ``_``, ``-`` and ``.``.
    image_key, spots_key, table_key
        The elements; ``None`` picks them as :func:`stpredict.pp.spots` does.
    microns_per_pixel
        Level-0 pixel size, if the SpatialData does not record it.
    patch_size_um
        Window side in µm (HEST: 224 px at 0.5 µm/px, 112 µm).
    patch_px
        Window side in pixels.
    write_wsi
        Also write the image as ``wsis/<id>.tif``.
    metadata
        Extra metadata (e.g. ``{"species": "Homo sapiens", "organ": "Breast"}``), written last.
    overwrite
        Replace this sample's files if they exist.
    batch_size
        Patches read per batch; ``None`` uses :attr:`stpredict.settings.batch_size`.
    progress
        Show a progress bar; ``None`` uses :attr:`stpredict.settings.progress`.

    Returns
    -------
    The paths written, keyed ``"st"``, ``"metadata"``, ``"patches"`` and (with ``write_wsi``) ``"wsis"``.
    """
    from .._image import check_rgb
    from .._validate import check_counts
    from ..pp._spots import spots

    if not isinstance(sample_id, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", sample_id) or sample_id[0] == ".":
        msg = f"sample_id must be letters, digits, '_', '-' or '.' (a file name), got {sample_id!r}."
        raise ValueError(msg)
    if not patch_size_um > 0 or int(patch_px) != patch_px or patch_px <= 0:
        msg = f"patch_size_um and patch_px must be positive (patch_px an integer), got {patch_size_um!r}, {patch_px!r}."
        raise ValueError(msg)
    geo = spots(sdata, image_key=image_key, spots_key=spots_key, table_key=table_key,
                microns_per_pixel=microns_per_pixel)  # fmt: skip
    if geo.table_key is None:
        msg = (
            f"No table annotates the spots {geo.spots_key!r}: a HEST sample needs the counts. Link a table with "
            "TableModel.parse(..., region=<spots_key>, ...)."
        )
        raise KeyError(msg)
    check_counts(sdata.tables[geo.table_key][geo.rows], geo.table_key)
    check_rgb(sdata.images[geo.image_key], geo.image_key)
    if metadata is not None and not isinstance(metadata, dict):
        msg = f"metadata must be a dict of JSON values, got {type(metadata).__name__}."
        raise TypeError(msg)
    mx, my = geo.microns_per_pixel_xy
    if abs(mx / my - 1) > 0.01:
        logger.warning(
            "%s: pixels are %.4g x %.4g µm; HEST records one pixel size, the geometric mean %.4g.",
            sample_id, mx, my, geo.microns_per_pixel,
        )  # fmt: skip
    root = Path(path)
    out = {
        "st": root / "st" / f"{sample_id}.h5ad",
        "metadata": root / "metadata" / f"{sample_id}.json",
        "patches": root / "patches" / f"{sample_id}.h5",
    }
    if write_wsi:
        out["wsis"] = root / "wsis" / f"{sample_id}.tif"
    existing = [str(p) for p in out.values() if p.exists()]
    if existing and not overwrite:
        msg = f"HEST sample {sample_id!r} already has {', '.join(existing)}: pass overwrite=True to replace them."
        raise FileExistsError(msg)

    table = sdata.tables[geo.table_key]
    source = dict(table.uns.get("stpredict_source", {}))
    for p in out.values():
        p.parent.mkdir(parents=True, exist_ok=True)
    _write_adata(sdata, geo, out["st"])
    _write_patches(
        sdata, geo, out["patches"], size_um=patch_size_um, patch_px=int(patch_px), batch_size=batch_size,
        progress=progress,
    )  # fmt: skip
    if write_wsi:
        _write_tiff(sdata, geo, out["wsis"])
    meta = _metadata(geo, source, sample_id, table.n_vars, write_wsi=write_wsi)
    meta.update(metadata or {})
    tmp = _tmp(out["metadata"])
    tmp.write_text(json.dumps(meta, indent=1, default=_json_default))
    tmp.replace(out["metadata"])
    logger.info("Wrote HEST sample %r: %s.", sample_id, ", ".join(str(p) for p in out.values()))
    return out


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def _inter_spot_um(geo: SpotGeometry) -> float | None:
    if geo.n_spots < 2:
        return None
    from scipy.spatial import cKDTree

    um = geo.centers_um
    d, _ = cKDTree(um).query(um, k=2)
    return float(np.median(d[:, 1]))


def _metadata(geo: SpotGeometry, source: dict, sample_id: str, n_genes: int, *, write_wsi: bool) -> dict[str, Any]:
    meta = dict(source.get("metadata", {})) if source.get("technology") == "HEST" else {}
    meta = {k: _json_default(v) if isinstance(v, np.ndarray | np.generic) else v for k, v in meta.items()}
    tech = _TECHNOLOGY.get(str(source.get("technology")), str(source.get("technology", "unknown")))
    h, w = geo.image_shape
    inter = source.get("inter_spot_dist_um") or _inter_spot_um(geo)
    meta.update(
        {
            "id": sample_id,
            "pixel_size_um_estimated": geo.microns_per_pixel,
            "spot_diameter": geo.diameter_um,
            "fullres_px_width": int(w),
            "fullres_px_height": int(h),
            "spots_under_tissue": geo.n_spots,
            "adata_nb_col": int(n_genes),
        }
    )
    if inter is not None:
        meta["inter_spot_dist"] = float(inter)
    if tech is not None:
        meta["st_technology"] = tech
    meta.setdefault("st_technology", "unknown")
    if write_wsi:
        meta["pixel_size_um_embedded"] = geo.microns_per_pixel  # written into the TIFF's resolution tags
    else:
        meta.setdefault("pixel_size_um_embedded", None)
    from .._version import __version__

    meta["stpredict_version"] = __version__
    return meta


def _thumbnail(sdata: SpatialData, geo: SpotGeometry) -> tuple[np.ndarray, float]:
    """An ``(h, w, 3)`` uint8 thumbnail (longest side at most 1000 px) and its scale from level 0."""
    from PIL import Image

    from .._image import image_levels

    levels = image_levels(sdata.images[geo.image_key])
    h0, w0 = geo.image_shape
    scale = min(1.0, THUMBNAIL_PX / max(h0, w0))
    tw, th = max(1, round(w0 * scale)), max(1, round(h0 * scale))
    lv = next((lv for lv in reversed(levels) if lv.shape_yx[1] >= tw and lv.shape_yx[0] >= th), levels[0])
    arr = np.asarray(lv.array[:3].compute()).transpose(1, 2, 0)
    if arr.shape[:2] != (th, tw):
        arr = np.asarray(Image.fromarray(arr).resize((tw, th), Image.Resampling.BILINEAR))
    return np.ascontiguousarray(arr), tw / w0


def _as_int(column: pd.Series, *, default: int) -> np.ndarray | int:
    """An obs column as integers (booleans, also as text, as 0/1), or ``default`` if it holds something else."""
    try:
        return np.asarray(column.to_numpy(), dtype=float).astype(np.int64)
    except (TypeError, ValueError):
        text = column.astype(str).str.lower()
        return (text == "true").to_numpy().astype(np.int64) if text.isin(["true", "false"]).all() else default


def _write_adata(sdata: SpatialData, geo: SpotGeometry, path: Path) -> None:
    import anndata as ad

    table = sdata.tables[geo.table_key]
    X = table.X[geo.rows]
    X = sp.csr_matrix(X) if sp.issparse(X) else sp.csr_matrix(np.asarray(X))
    src_obs = table.obs.iloc[geo.rows]
    obs = pd.DataFrame(index=pd.Index(geo.obs_names.astype(str)))
    obs["in_tissue"] = _as_int(src_obs["in_tissue"], default=1) if "in_tissue" in src_obs else 1
    for hest, ours in (("array_row", ("array_row", "array_y")), ("array_col", ("array_col", "array_x"))):
        col = next((c for c in ours if c in src_obs.columns), None)
        if col is not None:
            obs[hest] = _as_int(src_obs[col], default=-1)
    obs["pxl_col_in_fullres"] = geo.centers[:, 0]
    obs["pxl_row_in_fullres"] = geo.centers[:, 1]
    adata = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=pd.Index(table.var_names.astype(str))))
    adata.obsm["spatial"] = np.asarray(geo.centers, dtype=float)
    thumb, scalef = _thumbnail(sdata, geo)
    adata.uns["spatial"] = {
        "ST": {
            "images": {"downscaled_fullres": thumb},
            "scalefactors": {"spot_diameter_fullres": float(geo.diameter), "tissue_downscaled_fullres_scalef": scalef},
        }
    }
    tmp = _tmp(path)
    adata.write_h5ad(tmp)
    tmp.replace(path)


def _write_patches(
    sdata: SpatialData,
    geo: SpotGeometry,
    path: Path,
    *,
    size_um: float,
    patch_px: int,
    batch_size: int | None,
    progress: bool | None,
) -> None:
    import h5py
    from tqdm.auto import tqdm

    from ..pp._patch_dataset import patches

    ds = patches(sdata, size_um=size_um, patch_px=patch_px, geometry=geo)
    ext = ds.extractor
    n = geo.n_spots
    mpp = geo.microns_per_pixel
    src_px = np.asarray([size_um / m for m in geo.microns_per_pixel_xy])
    # the window's top-left corner in level-0 pixels, as the extractor places it (centre - side / 2, rounded)
    coords = np.floor(geo.centers - np.round(src_px) / 2 + 0.5).astype(np.int64)
    attrs = {
        "patch_size_target": patch_px,
        "patch_size_src": round(size_um / mpp),
        "pixel_size": mpp,
        "downsample": size_um / patch_px / mpp,
        "patch_size_um": size_um,
        "level": ext.level,
    }
    barcodes = np.asarray([b.encode() for b in geo.obs_names.astype(str)]).reshape(-1, 1)
    show = settings.progress if progress is None else progress
    tmp = _tmp(path)
    with h5py.File(tmp, "w") as f:
        img = f.create_dataset("img", shape=(n, patch_px, patch_px, 3), dtype=np.uint8,
                               chunks=(1, patch_px, patch_px, 3))  # fmt: skip
        f.create_dataset("coords", data=coords)
        f.create_dataset("barcode", data=barcodes)
        for key in ("img", "coords"):
            f[key].attrs.update(attrs)
        with tqdm(total=n, disable=not show, desc="HEST patches", unit="spot") as bar:
            for idx, batch in ext.batches(batch_size):
                hwc = batch.transpose(0, 2, 3, 1)
                for j, i in enumerate(idx):  # one chunk per patch: row writes (h5py's fancy indexing is slow)
                    img[int(i)] = hwc[j]
                bar.update(len(idx))
    tmp.replace(path)


def _write_tiff(sdata: SpatialData, geo: SpotGeometry, path: Path) -> None:
    """Every level as tiled pages (level 0, then reduced-resolution pages), read a row of tiles at a time."""
    import tifffile

    from .._image import image_levels

    mpp_cm = [m * 1e-4 for m in geo.microns_per_pixel_xy]
    tmp = _tmp(path)
    with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
        for i, lv in enumerate(image_levels(sdata.images[geo.image_key])):
            arr = lv.array[:3]
            h, w = lv.shape_yx

            def tiles(arr=arr, h=h, w=w):
                for y in range(0, h, TIFF_TILE):
                    row = np.asarray(arr[:, y : y + TIFF_TILE].compute()).transpose(1, 2, 0)
                    for x in range(0, w, TIFF_TILE):
                        tile = np.full((TIFF_TILE, TIFF_TILE, 3), 255, dtype=np.uint8)
                        part = row[:, x : x + TIFF_TILE]
                        tile[: part.shape[0], : part.shape[1]] = part
                        yield tile

            kw: dict[str, Any] = {"subfiletype": 1} if i else {
                "resolution": (1 / mpp_cm[0], 1 / mpp_cm[1]), "resolutionunit": "CENTIMETER"
            }  # fmt: skip
            tw.write(tiles(), shape=(h, w, 3), dtype=np.uint8, tile=(TIFF_TILE, TIFF_TILE), photometric="rgb",
                     compression="zlib", **kw)  # fmt: skip
    tmp.replace(path)
