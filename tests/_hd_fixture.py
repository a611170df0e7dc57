"""A tiny Space Ranger 3.x Visium HD ``outs`` folder over a synthetic H&E, with its truth.

Layout written (the parts of Space Ranger's output that readers use)::

    outs/
      feature_slice.h5                      root attribute metadata_json (hd_layout_json: file_format 1.0)
      spatial/tissue_hires_image.png, tissue_lowres_image.png
      binned_outputs/square_<NNN>um/
        filtered_feature_bc_matrix.h5       10x HDF5 feature-barcode matrix (CSC, features x barcodes)
        spatial/tissue_positions.parquet     barcode, in_tissue, array_row, array_col, pxl_row_in_fullres, pxl_col_in_fullres
        spatial/scalefactors_json.json       spot_diameter_fullres, bin_size_um, microns_per_pixel, tissue_*_scalef, ...
        spatial/tissue_hires_image.png, tissue_lowres_image.png
    tissue_fullres.tif                      the full-resolution H&E given to Space Ranger (beside outs/)
    outs/microscope_image/tissue_image.tif  with ``microscope_image=True``: the same H&E, tiled 256 px, where
                                            spatialdata-io looks for it when no ``fullres_image_file`` is given

Bins are nested as in Space Ranger: a bin of side ``k · s`` sums the ``k × k`` bins of side ``s`` it covers, and
its barcode is ``s_<NNN>um_<row:05d>_<col:05d>-1``. Bin ``(row, col)`` of side ``s`` µm spans
``[x0 + col·s, x0 + (col + 1)·s) × [y0 + row·s, y0 + (row + 1)·s)`` µm of the image (``origin_um = (x0, y0)``),
turned by ``rotation_deg`` about ``(x0, y0)`` when given (Space Ranger's registration of a slightly rotated
capture area).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

HIRES_SCALEF = 0.25
LOWRES_SCALEF = 0.125


@dataclass
class HDTruth:
    """What the fixture wrote: where, at which pixel size, and each bin size's bins."""

    outs: Path
    fullres: Path
    microns_per_pixel: float
    image: np.ndarray  # (H, W, 3) uint8
    bins: dict[int, pd.DataFrame]  # per bin size: barcode-indexed centre_x_um, centre_y_um, in_tissue, row, col
    counts: dict[int, pd.DataFrame]  # per bin size: in-tissue barcodes x genes, int


def _box_downsample(img: np.ndarray, f: int) -> np.ndarray:
    h, w = (img.shape[0] // f) * f, (img.shape[1] // f) * f
    x = img[:h, :w].reshape(h // f, f, w // f, f, 3).astype(float).mean(axis=(1, 3))
    return np.round(x).astype(np.uint8)


def _write_h5(path: Path, counts: pd.DataFrame) -> None:
    import h5py
    from scipy import sparse

    m = sparse.csc_matrix(counts.to_numpy(np.int32).T)  # features x barcodes, one column per barcode
    n = len(counts.columns)
    with h5py.File(path, "w") as f:
        f.attrs["filetype"] = "matrix"
        f.attrs["version"] = 2
        f.attrs["software_version"] = "spaceranger-3.1.2"
        f.attrs["chemistry_description"] = "Visium HD v1"
        f.attrs["library_ids"] = np.array([b"fixture"])
        f.attrs["original_gem_groups"] = np.array([1])
        g = f.create_group("matrix")
        g.create_dataset("barcodes", data=np.array(counts.index, dtype="S"))
        g.create_dataset("data", data=m.data.astype(np.int32))
        g.create_dataset("indices", data=m.indices.astype(np.int64))
        g.create_dataset("indptr", data=m.indptr.astype(np.int64))
        g.create_dataset("shape", data=np.array(m.shape, dtype=np.int32))
        ft = g.create_group("features")
        ft.create_dataset("id", data=np.array([f"ENSFX{i:07d}" for i in range(n)], dtype="S"))
        ft.create_dataset("name", data=np.array(counts.columns, dtype="S"))
        ft.create_dataset("feature_type", data=np.array(["Gene Expression"] * n, dtype="S"))
        ft.create_dataset("genome", data=np.array(["GRCm39"] * n, dtype="S"))
        ft.create_dataset("_all_tag_keys", data=np.array([b"genome"]))


def _positions(bins: pd.DataFrame, s: int, mpp: float) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "barcode": bins.index.to_numpy(),
            "in_tissue": bins["in_tissue"].to_numpy(np.int32),
            "array_row": bins["row"].to_numpy(np.int32),
            "array_col": bins["col"].to_numpy(np.int32),
            "pxl_row_in_fullres": bins["centre_y_um"].to_numpy(float) / mpp,
            "pxl_col_in_fullres": bins["centre_x_um"].to_numpy(float) / mpp,
        }
    )


def write_visium_hd(
    root: Path,
    *,
    bin_sizes: tuple[int, ...] = (8, 16),
    microns_per_pixel: float = 0.5,
    image_size: tuple[int, int] = (416, 448),
    origin_um: tuple[float, float] = (16.0, 16.0),
    extent_um: tuple[float, float] = (192.0, 176.0),
    n_genes: int = 8,
    depth: float = 30.0,
    seed: int = 0,
    microscope_image: bool = False,
    rotation_deg: float = 0.0,
) -> HDTruth:
    """Write a Space Ranger HD ``outs`` folder under ``root`` (see the module docstring).

    ``extent_um`` (width, height) must be a multiple of the largest bin size; ``image_size`` is (height, width)
    in full-resolution pixels and must be divisible by 8 (hires 1/4, lowres 1/8). ``microscope_image``: also
    write the H&E, tiled, into ``outs/microscope_image/`` (``HDTruth.fullres`` is then that copy).
    ``rotation_deg``: the bin lattice turned by that angle (counter-clockwise in x, y) about ``origin_um``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    import tifffile
    from PIL import Image

    import stpredict as stp
    from stpredict._image import image_levels

    sdata = stp.datasets.synthetic(
        image_size=image_size, microns_per_pixel=microns_per_pixel, n_genes=n_genes, seed=seed
    )
    img = np.asarray(image_levels(sdata.images["he"])[0].array.compute()).transpose(1, 2, 0)
    truth = stp.datasets.synthetic_truth(sdata)
    genes = list(sdata.tables["table"].var_names)

    # counts on the finest bins, summed over the coarser ones as Space Ranger bins 2 µm squares
    sizes = sorted(bin_sizes)
    s0 = sizes[0]
    nx, ny = round(extent_um[0] / s0), round(extent_um[1] / s0)
    rr, cc = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    t = np.radians(rotation_deg)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])

    def place(col: np.ndarray, row: np.ndarray, side: float) -> tuple[np.ndarray, np.ndarray]:
        xy = np.column_stack([col + 0.5, row + 0.5]) * side @ rot.T + np.asarray(origin_um)
        return xy[:, 0], xy[:, 1]

    cx, cy = place(cc.ravel(), rr.ravel(), s0)
    lam = truth.mean_rates(np.column_stack([cx, cy]), float(s0), "square", step_um=1.0)
    rng = np.random.default_rng(seed + 7)
    fine = rng.poisson(depth * lam).reshape(ny, nx, -1)
    fine_tissue = truth.tissue(cx, cy).reshape(ny, nx)

    outs = Path(root) / "outs"
    (outs / "spatial").mkdir(parents=True)
    hires = _box_downsample(img, round(1 / HIRES_SCALEF))
    lowres = _box_downsample(img, round(1 / LOWRES_SCALEF))
    fullres = Path(root) / "tissue_fullres.tif"
    tifffile.imwrite(fullres, img, photometric="rgb")
    if microscope_image:
        (outs / "microscope_image").mkdir()
        fullres = outs / "microscope_image" / "tissue_image.tif"
        tifffile.imwrite(fullres, img, photometric="rgb", tile=(256, 256), compression="zlib")
    Image.fromarray(hires).save(outs / "spatial" / "tissue_hires_image.png")
    Image.fromarray(lowres).save(outs / "spatial" / "tissue_lowres_image.png")

    hd_layout = {"file_format": "1.0", "transform": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]}
    eye = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    meta = {
        "hd_layout_json": json.dumps(hd_layout),
        "transform_matrices": dict.fromkeys(
            (
                "cytassist_colrow_to_spot_colrow",
                "spot_colrow_to_cytassist_colrow",
                "microscope_colrow_to_spot_colrow",
                "spot_colrow_to_microscope_colrow",
            ),
            eye,
        ),
    }
    import h5py

    with h5py.File(outs / "feature_slice.h5", "w") as f:
        f.attrs["metadata_json"] = json.dumps(meta)

    all_bins, all_counts = {}, {}
    for s in sizes:
        k = s // s0
        by, bx = ny // k, nx // k
        counts = fine[: by * k, : bx * k].reshape(by, k, bx, k, -1).sum(axis=(1, 3)).reshape(by * bx, -1)
        in_tissue = fine_tissue[: by * k, : bx * k].reshape(by, k, bx, k).any(axis=(1, 3)).ravel()
        r, c = np.meshgrid(np.arange(by), np.arange(bx), indexing="ij")
        r, c = r.ravel(), c.ravel()
        barcodes = [f"s_{s:03d}um_{i:05d}_{j:05d}-1" for i, j in zip(r, c, strict=True)]
        bx_um, by_um = place(c, r, s)
        bins = pd.DataFrame(
            {
                "centre_x_um": bx_um,
                "centre_y_um": by_um,
                "in_tissue": in_tissue.astype(int),
                "row": r,
                "col": c,
            },
            index=pd.Index(barcodes, name="barcode"),
        )
        cnt = pd.DataFrame(counts[in_tissue], index=bins.index[in_tissue], columns=genes)
        d = outs / "binned_outputs" / f"square_{s:03d}um"
        (d / "spatial").mkdir(parents=True)
        _write_h5(d / "filtered_feature_bc_matrix.h5", cnt)
        pq.write_table(pa.Table.from_pandas(_positions(bins, s, microns_per_pixel), preserve_index=False),
                       d / "spatial" / "tissue_positions.parquet")  # fmt: skip
        scalefactors = {
            "spot_diameter_fullres": s / microns_per_pixel,
            "bin_size_um": float(s),
            "microns_per_pixel": microns_per_pixel,
            "regist_target_img_scalef": HIRES_SCALEF,
            "tissue_lowres_scalef": LOWRES_SCALEF,
            "fiducial_diameter_fullres": 1000.0 / microns_per_pixel * 0.1,
            "tissue_hires_scalef": HIRES_SCALEF,
        }
        (d / "spatial" / "scalefactors_json.json").write_text(json.dumps(scalefactors))
        Image.fromarray(hires).save(d / "spatial" / "tissue_hires_image.png")
        Image.fromarray(lowres).save(d / "spatial" / "tissue_lowres_image.png")
        all_bins[s], all_counts[s] = bins, cnt
    return HDTruth(outs, fullres, microns_per_pixel, img, all_bins, all_counts)
