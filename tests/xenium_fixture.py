"""Write a tiny Xenium Onboard Analysis (XOA) output folder, with a post-Xenium H&E and its alignment CSV.

The layout follows 10x Genomics' description of the XOA 3.0 output bundle (format of XOA 2.0 and later), for the
files that ``spatialdata_io.xenium`` 0.7.1 reads:

- ``experiment.xenium``: JSON manifest (``pixel_size``, ``analysis_sw_version`` ``xenium-3.0.0.15``, ...);
- ``cells.zarr.zip``: zarr v2 store in a zip (what XOA writes): ``cell_id`` ``(n, 2)`` uint32 (prefix, dataset
  suffix), ``cell_summary`` ``(n, 8)`` float64 with ``column_names``, ``masks/0`` (nuclei) and ``masks/1`` (cells)
  uint32 label images of the morphology image's shape with ``masks/homogeneous_transform`` (µm → pixels),
  ``polygon_sets/{0,1}/{cell_index,method,num_vertices,vertices}`` (v2.0+; no ``seg_mask_value``);
- ``cells.parquet``, ``cell_boundaries.parquet`` and ``nucleus_boundaries.parquet`` (``cell_id``, ``vertex_x``,
  ``vertex_y``, ``label_id``; rings closed, rows of one polygon contiguous), ``transcripts.parquet`` (µm);
- ``cell_feature_matrix.h5``: the 10x feature-barcode HDF5 matrix (``/matrix`` CSC over barcodes, ``features``
  group), genes plus negative-control probes and codewords, counting the transcripts with ``qv >= 20``;
- ``morphology_focus/morphology_focus_0000.ome.tif``: one DAPI channel, uint16, tiled, with a two-level pyramid in
  sub-IFDs (XOA's files are larger pyramids of the same kind).

Not written (``spatialdata_io.xenium`` 0.7.1 does not read them): ``morphology.ome.tif`` (the 3-D stack),
``transcripts.zarr.zip``, ``cell_feature_matrix.zarr.zip``, ``analysis.zarr.zip``, ``analysis/``,
``metrics_summary.csv``, ``analysis_summary.html``, the csv.gz and mtx copies.

Beside the bundle (as 10x ships post-Xenium H&E with its datasets): ``<name>_he_image.ome.tif``, an RGB uint8
OME-TIFF (``YXS``, tiled, pyramid in sub-IFDs) whose pixels are the image of :func:`stpredict.datasets.synthetic`,
and ``<name>_he_imagealignment.csv``: the 3×3 affine from H&E pixels to Xenium morphology pixels, three lines of
three comma-separated numbers and no header, as Xenium Explorer exports it. Cells' counts follow the synthetic
tissue's expression at the cells' positions on the H&E, so a predictor has something to learn.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

PIXEL_SIZE = 0.2125  # µm per morphology pixel (experiment.xenium "pixel_size")
VERSION = "xenium-3.0.0.15"
N_VERTICES = 13  # 12 distinct vertices and the closing one
CONTROL_PROBES = ["NegControlProbe_00042", "NegControlProbe_00062"]
CONTROL_CODEWORDS = ["NegControlCodeword_0500"]


@dataclass
class XeniumFixture:
    """What was written and the truth it was written from."""

    path: Path
    he_path: Path
    alignment_path: Path
    he_to_xenium: np.ndarray  # 3x3, H&E pixels -> Xenium morphology pixels
    pixel_size: float
    he_mpp: float
    he_image: np.ndarray  # (3, h, w) uint8, exactly the H&E's pixels
    cell_ids: np.ndarray  # str, in file order
    centers_um: np.ndarray  # (n, 2) x, y
    radii_um: np.ndarray  # circumradius of each cell polygon
    cell_area: np.ndarray  # µm², written to cells.parquet
    has_nucleus: np.ndarray  # bool
    genes: list[str]
    counts: np.ndarray  # (n, genes) gene counts with qv >= 20
    morphology_shape: tuple[int, int]


def cell_id_strings(prefix: np.ndarray, suffix: int = 1) -> np.ndarray:
    """10x cell ids: each of the 8 hex digits of the uint32 prefix shifted to 'a'..'p', then ``-<suffix>``."""
    out = []
    for v in np.asarray(prefix, dtype=np.uint32):
        digits = f"{int(v):08x}"
        out.append("".join(chr(ord("a") + int(d, 16)) for d in digits) + f"-{suffix}")
    return np.asarray(out)


def rotation_scale(theta_deg: float, scale: float, t: tuple[float, float]) -> np.ndarray:
    th = np.deg2rad(theta_deg)
    c, s = np.cos(th), np.sin(th)
    return np.array([[scale * c, -scale * s, t[0]], [scale * s, scale * c, t[1]], [0.0, 0.0, 1.0]])


def _ring(cx: float, cy: float, r: float, phase: float) -> np.ndarray:
    a = phase + 2 * np.pi * np.arange(N_VERTICES - 1) / (N_VERTICES - 1)
    xy = np.column_stack([cx + r * np.cos(a), cy + r * np.sin(a)])
    return np.vstack([xy, xy[:1]])  # closed


def _polygon_area(r: float) -> float:
    n = N_VERTICES - 1
    return 0.5 * n * r * r * np.sin(2 * np.pi / n)


def _write_ome_pyramid(path: Path, level0: np.ndarray, *, axes: str, mpp: float, photometric: str, levels: int = 2):
    import tifffile

    pyramid = [level0]
    for _ in range(levels - 1):
        prev = pyramid[-1]
        h, w = prev.shape[0] // 2, prev.shape[1] // 2
        acc = prev[: 2 * h : 2, : 2 * w : 2].astype(np.float64) + prev[1 : 2 * h : 2, : 2 * w : 2]
        acc += prev[: 2 * h : 2, 1 : 2 * w : 2]
        acc += prev[1 : 2 * h : 2, 1 : 2 * w : 2]
        pyramid.append(np.round(acc / 4).astype(level0.dtype))
    meta = {"axes": axes, "PhysicalSizeX": mpp, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": mpp}
    meta["PhysicalSizeYUnit"] = "µm"
    opts = {"tile": (256, 256), "photometric": photometric, "compression": "zlib"}
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(pyramid[0], subifds=len(pyramid) - 1, metadata=meta, **opts)
        for lvl in pyramid[1:]:
            tif.write(lvl, subfiletype=1, metadata=None, **opts)


def _write_h5(path: Path, barcodes: np.ndarray, features: pd.DataFrame, matrix_cells_by_features: np.ndarray):
    import h5py
    import scipy.sparse as sp

    # 10x stores features x barcodes in CSC: indptr runs over barcodes (columns)
    csc = sp.csc_matrix(matrix_cells_by_features.T.astype(np.int32))
    with h5py.File(path, "w") as f:
        f.attrs["filetype"] = "matrix"
        f.attrs["version"] = 2
        f.attrs["software_version"] = VERSION
        f.attrs["chemistry_description"] = "Xenium"
        f.attrs["library_ids"] = np.array([b"fixture"])
        f.attrs["original_gem_groups"] = np.array([1])
        m = f.create_group("matrix")
        m.create_dataset("barcodes", data=np.asarray(barcodes).astype("S"))
        m.create_dataset("data", data=csc.data.astype(np.int32), compression="gzip")
        m.create_dataset("indices", data=csc.indices.astype(np.int64), compression="gzip")
        m.create_dataset("indptr", data=csc.indptr.astype(np.int64), compression="gzip")
        m.create_dataset("shape", data=np.array(csc.shape, dtype=np.int32))
        g = m.create_group("features")
        g.create_dataset("_all_tag_keys", data=np.array([b"genome"]))
        for col in ("feature_type", "genome", "id", "name"):
            g.create_dataset(col, data=features[col].to_numpy().astype("S"))


def _write_cells_zarr(path, *, cell_prefix, summary, masks, polygons, nucleus_cells, pixel_size):
    import shutil
    import tempfile
    import zipfile

    import zarr

    # built in a folder, then zipped (a zip entry cannot be rewritten, and zarr rewrites attributes)
    tmp = Path(tempfile.mkdtemp())
    try:
        root = zarr.open_group(tmp, mode="w", zarr_format=2)
        n = len(cell_prefix)
        root.attrs.update(
            {
                "major_version": 6,
                "minor_version": 0,
                "name": "CellSegmentationDataset",
                "number_cells": n,
                "polygon_set_names": ["nucleus", "cell"],
                "polygon_set_display_names": ["Nucleus boundaries", "Cell boundaries"],
                "polygon_set_descriptions": ["DAPI-based nuclei segmentation", "Boundary stain cell segmentation"],
                "segmentation_methods": ["Segmented by boundary stain (ATP1A1+CD45+E-Cadherin)"],
                "spatial_units": "microns",
            }
        )
        ids = np.column_stack([cell_prefix, np.ones(n)]).astype(np.uint32)
        root.create_array("cell_id", data=ids, chunks=(max(n // 2, 1), 1))
        cs = root.create_array("cell_summary", data=summary.astype(np.float64), chunks=(n, 1))
        cs.attrs["column_names"] = [
            "cell_centroid_x",
            "cell_centroid_y",
            "cell_area",
            "nucleus_centroid_x",
            "nucleus_centroid_y",
            "nucleus_area",
            "z_level",
            "nucleus_count",
        ]
        cs.attrs["column_descriptions"] = [
            "Cell centroid in X",
            "Cell centroid in Y",
            "Cell area",
            "Nucleus centroid in X",
            "Nucleus centroid in Y",
            "Nucleus area",
            "z_level",
            "Number of nuclei in the cell",
        ]
        mg = root.create_group("masks")
        for i, m in enumerate(masks):
            mg.create_array(str(i), data=m.astype(np.uint32), chunks=(512, 512))
        mg.create_array(
            "homogeneous_transform",
            data=np.diag([1 / pixel_size, 1 / pixel_size, 1.0, 1.0]).astype(np.float32),
        )
        ps = root.create_group("polygon_sets")
        for i, (rings, owners) in enumerate([(polygons[0], nucleus_cells), (polygons[1], np.arange(n))]):
            g = ps.create_group(str(i))
            g.create_array("cell_index", data=np.asarray(owners, dtype=np.uint32))
            g.create_array("method", data=np.zeros(len(rings), dtype=np.uint32))
            g.create_array("num_vertices", data=np.full(len(rings), N_VERTICES, dtype=np.int32))
            g.create_array("vertices", data=np.stack([r.ravel() for r in rings]).astype(np.float32))
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
            for f in sorted(tmp.rglob("*")):
                if f.is_file():
                    zf.write(f, f.relative_to(tmp).as_posix())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_xenium_fixture(
    root: Path,
    *,
    name: str = "fixture",
    morphology_px: int = 1000,
    spacing_um: float = 10.0,
    margin_um: float = 20.0,
    n_genes: int = 12,
    he_px: int = 900,
    he_mpp: float = 0.3,
    theta_deg: float = 4.0,
    he_offset_px: tuple[float, float] = (0.0, 0.0),
    he_inside: bool = False,
    depth: float = 10.0,
    seed: int = 0,
) -> XeniumFixture:
    """Write ``root/<name>_outs`` (the XOA bundle) and the H&E with its alignment CSV (beside it, or inside).

    The H&E is ``he_px`` square at ``he_mpp`` µm/px, rotated by ``theta_deg`` and centred on the morphology image
    (shifted by ``he_offset_px`` Xenium pixels). A cell's counts are Poisson with mean ``depth`` times the
    synthetic tissue's normalised rates around the cell.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    import stpredict as stp

    rng = np.random.default_rng(seed)
    root = Path(root)
    outs = root / f"{name}_outs"
    outs.mkdir(parents=True)
    ps = PIXEL_SIZE
    H = W = int(morphology_px)
    extent_um = W * ps

    # the H&E and its alignment (H&E pixels -> Xenium pixels), centred on the morphology image
    syn = stp.datasets.synthetic(image_size=he_px, microns_per_pixel=he_mpp, n_genes=n_genes, seed=seed)
    he = np.asarray(syn.images["he"]["scale0"]["image"].data.compute())
    tissue = stp.datasets.synthetic_truth(syn)
    lin = rotation_scale(theta_deg, he_mpp / ps, (0.0, 0.0))
    c_he = np.array([he_px / 2, he_px / 2, 1.0])
    t = np.array([W / 2 + he_offset_px[0], H / 2 + he_offset_px[1]]) - (lin @ c_he)[:2]
    M = lin.copy()
    M[:2, 2] = t

    # cells on a jittered grid, in µm
    g = np.arange(margin_um, extent_um - margin_um + 1e-9, spacing_um)
    gx, gy = np.meshgrid(g, g)
    centers = np.column_stack([gx.ravel(), gy.ravel()]) + rng.uniform(-0.8, 0.8, (gx.size, 2))
    n = len(centers)
    radii = rng.uniform(3.0, 4.0, n)
    phases = rng.uniform(0, 2 * np.pi, n)
    prefix = np.sort(rng.choice(2**32 - 1, size=n, replace=False).astype(np.uint32))
    cell_ids = cell_id_strings(prefix)
    has_nuc = rng.random(n) > 0.05
    nuc_off = rng.uniform(-0.4, 0.4, (n, 2))
    nuc_r = 0.55 * radii
    cell_area = np.array([_polygon_area(r) for r in radii])
    nuc_area = np.where(has_nuc, [_polygon_area(r) for r in nuc_r], 0.0)
    nuc_centers = centers + nuc_off

    # counts: the synthetic tissue's expression at the cell's place on the H&E
    Minv = np.linalg.inv(M)
    xen_px = centers / ps
    he_xy = xen_px @ Minv[:2, :2].T + Minv[:2, 2]
    he_um = (he_xy) * he_mpp
    lam = tissue.mean_rates(he_um, 2 * radii.mean())
    counts = rng.poisson(depth * lam).astype(np.int64)
    genes = list(tissue.genes)
    ctrl_counts = rng.poisson(0.3, (n, len(CONTROL_PROBES) + len(CONTROL_CODEWORDS)))

    # transcripts: one row per molecule; those with qv >= 20 are the counts
    rows = []
    feature_all = genes + CONTROL_PROBES + CONTROL_CODEWORDS
    category = (
        ["predesigned_gene"] * len(genes)
        + ["negative_control_probe"] * len(CONTROL_PROBES)
        + ["negative_control_codeword"] * len(CONTROL_CODEWORDS)
    )
    full = np.hstack([counts, ctrl_counts])
    low_qv = rng.poisson(1.0, n)
    for i in range(n):
        feats = np.repeat(np.arange(full.shape[1]), full[i])
        q = rng.uniform(20.0, 40.0, len(feats))
        extra = rng.integers(0, len(genes), low_qv[i])
        feats = np.concatenate([feats, extra])
        q = np.concatenate([q, rng.uniform(5.0, 19.9, len(extra))])
        rr = radii[i] * 0.85 * np.sqrt(rng.random(len(feats)))
        aa = rng.uniform(0, 2 * np.pi, len(feats))
        x = centers[i, 0] + rr * np.cos(aa)
        y = centers[i, 1] + rr * np.sin(aa)
        d_nuc = (
            np.hypot(x - nuc_centers[i, 0], y - nuc_centers[i, 1]) - nuc_r[i] if has_nuc[i] else np.full(len(x), 5.0)
        )
        rows.append(pd.DataFrame({"f": feats, "x": x, "y": y, "qv": q, "cell": cell_ids[i], "dn": d_nuc}))
    n_un = 200
    un = pd.DataFrame(
        {
            "f": rng.integers(0, len(genes), n_un),
            "x": rng.uniform(0, extent_um, n_un),
            "y": rng.uniform(0, extent_um, n_un),
            "qv": rng.uniform(20.0, 40.0, n_un),
            "cell": "UNASSIGNED",
            "dn": rng.uniform(1.0, 10.0, n_un),
        }
    )
    tx = pd.concat([*rows, un], ignore_index=True)
    tx = tx.sample(frac=1.0, random_state=seed).reset_index(drop=True)  # XOA writes molecules in decoding order
    nt = len(tx)
    transcripts = pa.table(
        {
            "transcript_id": pa.array(np.arange(281474976710657, 281474976710657 + nt, dtype=np.uint64)),
            "cell_id": pa.array(tx["cell"].to_numpy(), type=pa.string()),
            "overlaps_nucleus": pa.array((tx["dn"].to_numpy() <= 0).astype(np.uint8)),
            "feature_name": pa.array(np.asarray(feature_all)[tx["f"].to_numpy()], type=pa.string()),
            "x_location": pa.array(tx["x"].to_numpy(np.float32)),
            "y_location": pa.array(tx["y"].to_numpy(np.float32)),
            "z_location": pa.array(rng.uniform(8.0, 14.0, nt).astype(np.float32)),
            "qv": pa.array(tx["qv"].to_numpy(np.float32)),
            "fov_name": pa.array(np.where(tx["x"].to_numpy() < extent_um / 2, "A1", "A2"), type=pa.string()),
            "nucleus_distance": pa.array(np.clip(tx["dn"].to_numpy(), 0, None).astype(np.float32)),
            "codeword_index": pa.array(tx["f"].to_numpy(np.int32)),
            "codeword_category": pa.array(np.asarray(category)[tx["f"].to_numpy()], type=pa.string()),
            "is_gene": pa.array(tx["f"].to_numpy() < len(genes)),
        }
    )
    pq.write_table(transcripts, outs / "transcripts.parquet")

    # cells.parquet
    seg = "Segmented by boundary stain (ATP1A1+CD45+E-Cadherin)"
    n_probe = len(CONTROL_PROBES)
    cells = pa.table(
        {
            "cell_id": pa.array(cell_ids, type=pa.string()),
            "x_centroid": pa.array(centers[:, 0]),
            "y_centroid": pa.array(centers[:, 1]),
            "transcript_counts": pa.array(counts.sum(1).astype(np.uint32)),
            "control_probe_counts": pa.array(ctrl_counts[:, :n_probe].sum(1).astype(np.uint32)),
            "genomic_control_counts": pa.array(np.zeros(n, np.uint32)),
            "control_codeword_counts": pa.array(ctrl_counts[:, n_probe:].sum(1).astype(np.uint32)),
            "unassigned_codeword_counts": pa.array(np.zeros(n, np.uint32)),
            "deprecated_codeword_counts": pa.array(np.zeros(n, np.uint32)),
            "total_counts": pa.array(full.sum(1).astype(np.uint32)),
            "cell_area": pa.array(cell_area),
            "nucleus_area": pa.array(nuc_area),
            "nucleus_count": pa.array(has_nuc.astype(np.uint32)),
            "segmentation_method": pa.array([seg] * n, type=pa.string()),
        }
    )
    pq.write_table(cells, outs / "cells.parquet")

    # boundaries (µm), label_id = polygon position + 1 (the mask's label)
    cell_rings = [_ring(*centers[i], radii[i], phases[i]) for i in range(n)]
    nuc_idx = np.flatnonzero(has_nuc)
    nuc_rings = [_ring(*nuc_centers[i], nuc_r[i], phases[i]) for i in nuc_idx]

    def boundaries(rings, owners):
        k = len(rings)
        xy = np.vstack(rings)
        return pa.table(
            {
                "cell_id": pa.array(np.repeat(cell_ids[owners], N_VERTICES), type=pa.string()),
                "vertex_x": pa.array(xy[:, 0].astype(np.float32)),
                "vertex_y": pa.array(xy[:, 1].astype(np.float32)),
                "label_id": pa.array(np.repeat(np.arange(1, k + 1, dtype=np.uint32), N_VERTICES)),
            }
        )

    pq.write_table(boundaries(cell_rings, np.arange(n)), outs / "cell_boundaries.parquet")
    pq.write_table(boundaries(nuc_rings, nuc_idx), outs / "nucleus_boundaries.parquet")

    # masks (labels) in morphology pixels: pixel (row, col) has its centre at ((col + .5) ps, (row + .5) ps)
    yy, xx = np.mgrid[0:H, 0:W]
    px_um = np.stack([(xx + 0.5) * ps, (yy + 0.5) * ps], -1)
    cell_mask = np.zeros((H, W), np.uint32)
    nuc_mask = np.zeros((H, W), np.uint32)

    def paint(mask, c, r, label):
        x0, x1 = max(int((c[0] - r) / ps) - 1, 0), int((c[0] + r) / ps) + 2
        y0, y1 = max(int((c[1] - r) / ps) - 1, 0), int((c[1] + r) / ps) + 2
        sub = px_um[y0:y1, x0:x1]
        inside = np.hypot(sub[..., 0] - c[0], sub[..., 1] - c[1]) <= r
        mask[y0:y1, x0:x1][inside] = label

    for i in range(n):
        paint(cell_mask, centers[i], radii[i], i + 1)
    for p, i in enumerate(nuc_idx):
        paint(nuc_mask, nuc_centers[i], nuc_r[i], p + 1)
    summary = np.column_stack(
        [
            centers,
            cell_area,
            np.where(has_nuc[:, None], nuc_centers, 0.0),
            nuc_area,
            rng.integers(0, 4, n).astype(float),
            has_nuc.astype(float),
        ]
    )
    _write_cells_zarr(
        outs / "cells.zarr.zip",
        cell_prefix=prefix,
        summary=summary,
        masks=[nuc_mask, cell_mask],
        polygons=[nuc_rings, cell_rings],
        nucleus_cells=nuc_idx,
        pixel_size=ps,
    )

    # cell_feature_matrix.h5: genes, then controls
    features = pd.DataFrame(
        {
            "id": [f"ENSG{100000 + i:011d}" for i in range(len(genes))] + CONTROL_PROBES + CONTROL_CODEWORDS,
            "name": feature_all,
            "feature_type": ["Gene Expression"] * len(genes)
            + ["Negative Control Probe"] * len(CONTROL_PROBES)
            + ["Negative Control Codeword"] * len(CONTROL_CODEWORDS),
            "genome": "Unknown",
        }
    )
    _write_h5(outs / "cell_feature_matrix.h5", cell_ids, features, full)

    # morphology_focus/: one DAPI channel
    dapi = (200 + 2500 * (nuc_mask > 0) + rng.integers(0, 60, (H, W))).astype(np.uint16)
    (outs / "morphology_focus").mkdir()
    _write_ome_pyramid(
        outs / "morphology_focus" / "morphology_focus_0000.ome.tif", dapi, axes="YX", mpp=ps, photometric="minisblack"
    )

    spec = {
        "major_version": 5,
        "minor_version": 0,
        "patch_version": 0,
        "run_name": "stpredict fixture",
        "run_start_time": "2024-06-28T20:28:29Z",
        "region_name": name,
        "preservation_method": "FFPE",
        "num_cells": int(n),
        "transcripts_per_cell": int(np.median(counts.sum(1))),
        "pixel_size": ps,
        "panel_name": "stpredict synthetic panel",
        "panel_num_targets_predesigned": len(genes),
        "panel_num_targets_custom": 0,
        "instrument_sn": "R&D",
        "instrument_sw_version": "R&D",
        "analysis_sw_version": VERSION,
        "z_step_size": 3.0,
        "images": {
            "morphology_filepath": "morphology.ome.tif",
            "morphology_focus_filepath": "morphology_focus/morphology_focus_0000.ome.tif",
        },
        "xenium_explorer_files": {
            "transcripts_zarr_filepath": "transcripts.zarr.zip",
            "cells_zarr_filepath": "cells.zarr.zip",
            "cell_features_zarr_filepath": "cell_feature_matrix.zarr.zip",
            "analysis_zarr_filepath": "analysis.zarr.zip",
            "analysis_summary_filepath": "analysis_summary.html",
        },
        "segmentation_stain": "Xenium Multi-Tissue Stain",
    }
    (outs / "experiment.xenium").write_text(json.dumps(spec, indent=4))

    # the post-Xenium H&E and Xenium Explorer's alignment matrix
    he_dir = outs if he_inside else root
    he_path = he_dir / f"{name}_he_image.ome.tif"
    _write_ome_pyramid(he_path, he.transpose(1, 2, 0), axes="YXS", mpp=he_mpp, photometric="rgb")
    alignment_path = he_dir / f"{name}_he_imagealignment.csv"
    write_alignment_csv(alignment_path, M)
    return XeniumFixture(
        path=outs,
        he_path=he_path,
        alignment_path=alignment_path,
        he_to_xenium=M,
        pixel_size=ps,
        he_mpp=he_mpp,
        he_image=he,
        cell_ids=cell_ids,
        centers_um=centers,
        radii_um=radii,
        cell_area=cell_area,
        has_nucleus=has_nuc,
        genes=genes,
        counts=counts,
        morphology_shape=(H, W),
    )


def write_alignment_csv(path: Path, M: np.ndarray) -> None:
    """Three lines of three comma-separated numbers, no header (Xenium Explorer's ``*_imagealignment.csv``)."""
    lines = [",".join(repr(float(v)) for v in M[0]), ",".join(repr(float(v)) for v in M[1]), "0,0,1"]
    Path(path).write_text("\n".join(lines) + "\n")
