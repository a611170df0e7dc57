"""``stp.io.read_hest`` / ``stp.io.to_hest`` on tiny HEST-1k sample folders built with known truth."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import tifffile

import stpredict as stp
from stpredict._image import image_levels

if TYPE_CHECKING:
    from pathlib import Path

MPP = 2.0  # the estimated (true) pixel size of the fixtures
EMBEDDED = 31.750063  # a wrong embedded pixel size (800 dpi), as in many HEST-1k Visium samples


def _synthetic(seed: int):
    """A synthetic slide (~210 Visium spots, 20 genes) whose lazily rendered pyramid is computed once."""
    from stpredict._image import replace_levels

    sdata = stp.datasets.synthetic(image_size=(1001, 1100), microns_per_pixel=MPP, n_genes=20, seed=seed)
    tree = sdata.images["he"]
    replace_levels(tree, {lv.name: np.asarray(lv.array) for lv in image_levels(tree)}, chunks=512)
    return sdata


def write_hest_sample(root: Path, sample_id: str, sdata, *, meta_overrides: dict | None = None) -> dict:
    """Write ``sdata`` as HEST-1k's files of one sample (st/, wsis/, metadata/) and return the truth."""
    geo = stp.pp.spots(sdata)
    table = sdata.tables["table"]
    img = np.asarray(image_levels(sdata.images["he"])[0].array).transpose(1, 2, 0)
    n = geo.n_spots
    barcodes = [f"{sample_id}BC{i:05d}-1" for i in range(n)]
    counts = table.X.toarray().astype(np.float32)  # HEST's h5ad hold float32 counts
    obs = pd.DataFrame(
        {
            "in_tissue": np.ones(n, dtype=int),
            "array_row": table.obs["array_row"].to_numpy(),
            "array_col": table.obs["array_col"].to_numpy(),
            "pxl_col_in_fullres": geo.centers[:, 0],
            "pxl_row_in_fullres": geo.centers[:, 1],
            "total_counts": counts.sum(1),
            "comment": ["x"] * (n - 1) + [None],  # an object column with a missing value
        },
        index=barcodes,
    )
    adata = ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=table.var_names.astype(str)))
    adata.obsm["spatial"] = geo.centers.copy()
    down = 1000 / max(img.shape[:2])
    thumb = img[:: int(1 / down) + 1, :: int(1 / down) + 1]
    adata.uns["spatial"] = {
        "ST": {
            "images": {"downscaled_fullres": thumb},
            "scalefactors": {"spot_diameter_fullres": 55.0 / MPP, "tissue_downscaled_fullres_scalef": down},
        }
    }
    for sub in ("st", "wsis", "metadata"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(root / "st" / f"{sample_id}.h5ad")
    # pyramidal generic TIFF: tiled level 0 with resolution tags, then reduced pages rounding odd sizes up
    cm = EMBEDDED * 1e-4
    levels = [img]
    with tifffile.TiffWriter(root / "wsis" / f"{sample_id}.tif") as tw:
        tw.write(img, tile=(256, 256), photometric="rgb", compression="zlib", resolution=(1 / cm, 1 / cm),
                 resolutionunit="CENTIMETER")  # fmt: skip
        lv = img
        for _ in range(2):
            lv = lv[::2, ::2]
            levels.append(lv)
            tw.write(lv, tile=(256, 256), photometric="rgb", compression="zlib", subfiletype=1)
    meta = {
        "dataset_title": "synthetic",
        "id": sample_id,
        "organ": "Breast",
        "species": "Homo sapiens",
        "st_technology": "Visium",
        "inter_spot_dist": 100.0,
        "spot_diameter": 55.0,
        "spots_under_tissue": n,
        "pixel_size_um_embedded": EMBEDDED,
        "pixel_size_um_estimated": MPP,
        "magnification": "5x",
        "fullres_px_width": img.shape[1],
        "fullres_px_height": img.shape[0],
        "subseries": None,
        **(meta_overrides or {}),
    }
    (root / "metadata" / f"{sample_id}.json").write_text(json.dumps(meta))
    return {"centers": geo.centers, "counts": counts, "barcodes": barcodes, "img": img, "levels": levels, "meta": meta}


@pytest.fixture(scope="module")
def slides():
    return [_synthetic(0), _synthetic(1)]


@pytest.fixture(scope="module")
def hest_root(tmp_path_factory, slides):
    """A HEST dataset folder with two samples, and their truths."""
    root = tmp_path_factory.mktemp("hest")
    truth = {sid: write_hest_sample(root, sid, s) for sid, s in zip(("SYN0", "SYN1"), slides, strict=True)}
    return root, truth


def test_read_hest_equals_the_truth(hest_root):
    root, truth = hest_root
    t = truth["SYN0"]
    sdata = stp.io.read_hest(root, sample_id="SYN0")
    geo = stp.pp.spots(sdata)
    np.testing.assert_array_equal(geo.centers, t["centers"])
    assert geo.microns_per_pixel_xy == (MPP, MPP)
    assert geo.mpp_source == "micrometers"
    assert geo.diameter_um == pytest.approx(55.0)
    assert geo.diameter == pytest.approx(55.0 / MPP)
    table = sdata.tables["table"]
    assert list(table.obs_names) == t["barcodes"]
    assert table.X.dtype == np.int32
    np.testing.assert_array_equal(table.X.toarray(), t["counts"])
    assert {"in_tissue", "array_row", "array_col", "pxl_col_in_fullres", "library_id"} <= set(table.obs.columns)
    assert (table.obs["library_id"] == "SYN0").all()
    src = table.uns["stpredict_source"]
    assert src["technology"] == "HEST" and src["sample_id"] == "SYN0" and src["st_technology"] == "Visium"
    assert src["pixel_size_source"] == "pixel_size_um_estimated"
    assert src["inter_spot_dist_um"] == 100.0 and src["spot_diameter_um"] == 55.0
    assert src["metadata"]["organ"] == "Breast" and "subseries" not in src["metadata"]
    # the image: level 0 is the WSI; coarser levels are the TIFF's own pages (cropped), not recomputed
    levels = image_levels(sdata.images["he"])
    np.testing.assert_array_equal(np.asarray(levels[0].array), t["img"].transpose(2, 0, 1))
    h, w = levels[1].shape_yx
    np.testing.assert_array_equal(np.asarray(levels[1].array), t["levels"][1][:h, :w].transpose(2, 0, 1))
    assert t["levels"][1].shape[:2] == (h + 1, w)  # 1001 rows -> 501 in the TIFF, 500 in the model


def test_read_hest_pixel_size_options(hest_root):
    root, _ = hest_root
    emb = stp.pp.spots(stp.io.read_hest(root, sample_id="SYN0", pixel_size="embedded"))
    assert emb.microns_per_pixel == pytest.approx(EMBEDDED)
    assert emb.diameter_um == pytest.approx(55.0)  # the diameter in µm is the metadata's whatever the pixel size
    explicit = stp.io.read_hest(root, sample_id="SYN0", microns_per_pixel=1.5, spot_diameter_um=60)
    geo = stp.pp.spots(explicit)
    assert geo.microns_per_pixel == 1.5 and geo.diameter == pytest.approx(40.0)
    assert explicit.tables["table"].uns["stpredict_source"]["pixel_size_source"] == "explicit"


def test_read_hest_path_forms(hest_root, tmp_path):
    root, truth = hest_root
    for p in (root / "SYN1", root / "st" / "SYN1.h5ad", root / "wsis" / "SYN1.tif", root / "metadata" / "SYN1.json"):
        sdata = stp.io.read_hest(p)
        assert list(sdata.tables["table"].obs_names) == truth["SYN1"]["barcodes"]
    # a root holding one sample needs no id
    single = tmp_path / "one"
    for sub, suf in (("st", ".h5ad"), ("wsis", ".tif"), ("metadata", ".json")):
        (single / sub).mkdir(parents=True)
        (single / sub / f"SYN1{suf}").symlink_to(root / sub / f"SYN1{suf}")
    assert stp.io.read_hest(single).tables["table"].uns["stpredict_source"]["sample_id"] == "SYN1"


def test_read_hest_zarr_roundtrip(hest_root, tmp_path):
    from spatialdata import read_zarr

    root, _ = hest_root
    sdata = stp.io.read_hest(root, sample_id="SYN0")
    sdata.write(tmp_path / "s.zarr")
    back = read_zarr(tmp_path / "s.zarr")
    a, b = stp.pp.spots(sdata), stp.pp.spots(back)
    np.testing.assert_array_equal(a.centers, b.centers)
    assert a.microns_per_pixel_xy == b.microns_per_pixel_xy and a.diameter == b.diameter
    ta, tb = sdata.tables["table"], back.tables["table"]
    assert (ta.obs_names == tb.obs_names).all() and abs(ta.X - tb.X).sum() == 0
    assert tb.uns["stpredict_source"]["metadata"]["species"] == "Homo sapiens"
    np.testing.assert_array_equal(
        np.asarray(image_levels(back.images["he"])[-1].array), np.asarray(image_levels(sdata.images["he"])[-1].array)
    )


def test_read_hest_feeds_predict_and_cross_validate(hest_root):
    root, _ = hest_root
    s0, s1 = (stp.io.read_hest(root, sample_id=s) for s in ("SYN0", "SYN1"))
    stp.tl.predict(s0, model="ridge", n_genes=10, progress=False)
    t = s0.tables["table"]
    assert int(t.var["predicted"].sum()) == 10
    assert np.isfinite(t.layers["predicted"][:, t.var["predicted"].to_numpy()]).all()
    res = stp.tl.cross_validate([s0, s1], "ridge", n_genes=10, progress=False)
    assert set(res.folds["slide"]) == {"SYN0", "SYN1"}
    assert len(res.scores) == 20 and res.scores["pearson"].notna().any()


def test_to_hest_roundtrip_and_patches(slides, tmp_path):
    sdata = slides[0]
    geo = stp.pp.spots(sdata)
    out = stp.io.to_hest(sdata, tmp_path, sample_id="S0", metadata={"species": "Mus musculus"}, progress=False)
    assert set(out) == {"st", "metadata", "patches"} and not (tmp_path / "wsis").exists()
    meta = json.loads(out["metadata"].read_text())
    assert meta["pixel_size_um_estimated"] == MPP and meta["spot_diameter"] == pytest.approx(55.0)
    assert meta["inter_spot_dist"] == pytest.approx(100.0, rel=0.01)  # hexagonal lattice of 100 µm pitch
    assert meta["species"] == "Mus musculus" and meta["spots_under_tissue"] == geo.n_spots
    adata = ad.read_h5ad(out["st"])
    np.testing.assert_array_equal(adata.obsm["spatial"], geo.centers)
    assert adata.uns["spatial"]["ST"]["images"]["downscaled_fullres"].shape == (910, 1000, 3)
    # patches: exactly stp.pp.patches' windows, in table order, with HEST's keys and attributes
    ds = stp.pp.patches(sdata, size_um=112, patch_px=224)
    with h5py.File(out["patches"]) as f:
        img, coords, barcode = f["img"][:], f["coords"][:], f["barcode"][:]
        attrs = dict(f["img"].attrs)
        assert dict(f["coords"].attrs) == attrs
    assert img.shape == (geo.n_spots, 224, 224, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img, ds.extractor.read(np.arange(geo.n_spots)).transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(img[7], ds[7].transpose(1, 2, 0))
    assert barcode.shape == (geo.n_spots, 1)
    barcodes = barcode.flatten().astype(str).tolist()  # as the HEST benchmark decodes them
    assert barcodes == list(geo.obs_names)
    # the benchmark's expression lookup: adata[barcodes] gives each patch's counts
    np.testing.assert_array_equal(adata[barcodes].X.toarray(), sdata.tables["table"].X.toarray())
    np.testing.assert_array_equal(coords, np.floor(geo.centers - 56 / 2 + 0.5).astype(int))  # 112 µm = 56 px
    assert attrs["patch_size_target"] == 224 and attrs["patch_size_src"] == 56 and attrs["pixel_size"] == MPP
    assert attrs["downsample"] == pytest.approx(0.25)
    # no WSI written: read_hest says which file is missing
    with pytest.raises(FileNotFoundError, match="wsis/S0.tif"):
        stp.io.read_hest(tmp_path, sample_id="S0")


def test_to_hest_read_hest_roundtrip_with_wsi(hest_root, tmp_path):
    root, truth = hest_root
    sdata = stp.io.read_hest(root, sample_id="SYN1")
    out = stp.io.to_hest(sdata, tmp_path, sample_id="SYN1", write_wsi=True, progress=False)
    back = stp.io.read_hest(tmp_path, sample_id="SYN1")
    a, b = stp.pp.spots(sdata), stp.pp.spots(back)
    np.testing.assert_array_equal(b.centers, truth["SYN1"]["centers"])
    assert b.microns_per_pixel_xy == a.microns_per_pixel_xy == (MPP, MPP) and b.diameter_um == pytest.approx(55.0)
    ta, tb = sdata.tables["table"], back.tables["table"]
    assert (ta.obs_names == tb.obs_names).all()
    np.testing.assert_array_equal(tb.X.toarray(), truth["SYN1"]["counts"])
    np.testing.assert_array_equal(np.asarray(image_levels(back.images["he"])[0].array),
                                  truth["SYN1"]["img"].transpose(2, 0, 1))  # fmt: skip
    meta = json.loads(out["metadata"].read_text())
    assert meta["organ"] == "Breast" and meta["pixel_size_um_embedded"] == MPP  # source metadata carried over
    with tifffile.TiffFile(out["wsis"]) as tif:
        assert len(tif.series[0].levels) == len(image_levels(sdata.images["he"]))
        x = tif.pages[0].tags["XResolution"].value
        assert x[1] / x[0] * 1e4 == pytest.approx(MPP)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        stp.io.to_hest(sdata, tmp_path, sample_id="SYN1", progress=False)


def test_read_hest_warns_of_a_diameter_far_below_the_spacing(hest_root, tmp_path):
    """HEST's Visium HD metadata gives the 2 µm native bin while the table holds pooled bins."""
    import logging

    root, _ = hest_root
    (tmp_path / "metadata").mkdir()
    meta = json.loads((root / "metadata" / "SYN0.json").read_text())
    (tmp_path / "metadata" / "SYN0.json").write_text(json.dumps({**meta, "spot_diameter": 2.0}))
    for sub, suf in (("st", ".h5ad"), ("wsis", ".tif")):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / f"SYN0{suf}").symlink_to(root / sub / f"SYN0{suf}")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("stpredict")
    logger.addHandler(handler)
    try:
        sdata = stp.io.read_hest(tmp_path, sample_id="SYN0")
    finally:
        logger.removeHandler(handler)
    assert stp.pp.spots(sdata).diameter_um == pytest.approx(2.0)
    assert any("pass spot_diameter_um=" in r.getMessage() for r in records)


# -- bad input: clear errors, raised before any work ------------------------------------------------------------


@pytest.fixture
def copy_root(hest_root, tmp_path):
    """A writable copy of SYN0's files (the h5ad and tif linked, the metadata copied)."""
    root, _ = hest_root
    for sub, suf in (("st", ".h5ad"), ("wsis", ".tif"), ("metadata", ".json")):
        (tmp_path / sub).mkdir()
        src = root / sub / f"SYN0{suf}"
        dst = tmp_path / sub / f"SYN0{suf}"
        dst.write_bytes(src.read_bytes()) if sub == "metadata" else dst.symlink_to(src)
    return tmp_path


def test_read_hest_missing_file_is_named(copy_root):
    (copy_root / "wsis" / "SYN0.tif").unlink()
    (copy_root / "metadata" / "SYN0.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks wsis/SYN0.tif, metadata/SYN0.json"):
        stp.io.read_hest(copy_root, sample_id="SYN0")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        stp.io.read_hest(copy_root / "nope", sample_id="SYN0")


def test_read_hest_unknown_id_lists_ids(hest_root):
    root, _ = hest_root
    with pytest.raises(KeyError, match=r"No HEST sample 'TENX95'.*'SYN0', 'SYN1'"):
        stp.io.read_hest(root, sample_id="TENX95")
    with pytest.raises(ValueError, match=r"holds 2 HEST samples \('SYN0', 'SYN1'\): pass sample_id"):
        stp.io.read_hest(root)


def test_read_hest_no_pixel_size_says_how_to_pass_it(copy_root):
    meta_path = copy_root / "metadata" / "SYN0.json"
    meta = json.loads(meta_path.read_text())
    meta["pixel_size_um_estimated"] = None
    meta_path.write_text(json.dumps(meta))
    # the counts file is garbage: the error comes from the metadata, before anything else is read
    (copy_root / "st" / "SYN0.h5ad").unlink()
    (copy_root / "st" / "SYN0.h5ad").write_bytes(b"not an h5ad")
    with pytest.raises(
        ValueError, match=r"no usable 'pixel_size_um_estimated'.*pixel_size='embedded'.*microns_per_pixel="
    ):
        stp.io.read_hest(copy_root, sample_id="SYN0")
    del meta["pixel_size_um_embedded"], meta["spot_diameter"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"microns_per_pixel=\.\.\.\)") as e:
        stp.io.read_hest(copy_root, sample_id="SYN0")
    assert "embedded" not in str(e.value)
    with pytest.raises(ValueError, match=r"no usable 'spot_diameter'.*spot_diameter_um="):
        stp.io.read_hest(copy_root, sample_id="SYN0", microns_per_pixel=MPP)
    with pytest.raises(ValueError, match="pixel_size must be"):
        stp.io.read_hest(copy_root, sample_id="SYN0", pixel_size="guess")


def test_to_hest_bad_input(slides, tmp_path):
    sdata = slides[0]
    with pytest.raises(ValueError, match="sample_id must be"):
        stp.io.to_hest(sdata, tmp_path, sample_id="a/b")
    with pytest.raises(ValueError, match="patch_px"):
        stp.io.to_hest(sdata, tmp_path, sample_id="S", patch_px=0)
    from spatialdata import SpatialData

    no_table = SpatialData(images={"he": sdata.images["he"]}, shapes={"spots": sdata.shapes["spots"]})
    with pytest.raises(KeyError, match="needs the counts"):
        stp.io.to_hest(no_table, tmp_path, sample_id="S")
    assert not any(tmp_path.iterdir())  # nothing written by a refused call
