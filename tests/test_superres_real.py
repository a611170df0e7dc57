"""``benchmarks/superres.py --real``: super-resolution of pooled Visium HD bins scored against the bins themselves."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _bench import load_benchmark
from _hd_fixture import write_visium_hd

import stpredict as stp


def test_aggregate_truth_sums_the_bins_of_each_square():
    real = load_benchmark("_superres_real")
    # 8 µm bins with centres 4, 12, 20, 28 µm along x and y; 16 µm squares from the origin
    g = np.arange(4.0, 32.0, 8.0)
    xy = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    counts = np.zeros((16, 3))
    counts[:, 0] = np.arange(16)
    counts[:, 1] = 1.0
    counts[:, 2] = 5.0
    squares = np.array([[8.0, 8.0], [24.0, 8.0], [8.0, 24.0], [24.0, 24.0], [40.0, 8.0]])
    truth, n_bins, covered = real.aggregate_truth(xy, counts, squares, 16.0)
    assert n_bins.tolist() == [4, 4, 4, 4, 0] and covered.tolist() == [True] * 4 + [False]
    # square 0 holds bins (x, y) in {4, 12}²: rows 0, 1, 4, 5 of the meshgrid
    summed = counts[[0, 1, 4, 5]].sum(0)
    np.testing.assert_allclose(truth[0], np.log1p(summed / summed.sum() * 1e4))
    # a subset of genes keeps every gene's library size
    sub, _, _ = real.aggregate_truth(xy, counts, squares, 16.0, [0])
    np.testing.assert_allclose(sub[:, 0], truth[:, 0])
    # squares with under 75 % of their bins are not scored (rows 13-15 dropped: 3 bins left in square 2, 2 in 3)
    _, n_bins, covered = real.aggregate_truth(xy[:13], counts[:13], squares, 16.0)
    assert n_bins[:4].tolist() == [4, 4, 3, 2] and covered[:4].tolist() == [True, True, True, False]


@pytest.mark.filterwarnings("ignore")
def test_real_mode_runs_end_to_end_on_a_visium_hd_folder(tmp_path):
    truth = write_visium_hd(
        tmp_path / "hd", bin_sizes=(8,), microns_per_pixel=1.0, image_size=(448, 448), extent_um=(400.0, 400.0),
        n_genes=4, depth=60.0, seed=0,
    )  # fmt: skip
    out = tmp_path / "results"
    methods = ["neighbors", "copy", "ridge"]
    load_benchmark("superres").main(
        [
            "--real",
            str(truth.outs),
            "--fullres-image",
            str(truth.fullres),
            "--methods",
            ",".join(methods),
            "--n-genes",
            "4",
            "--out",
            str(out),
        ]  # fmt: skip
    )
    df = pd.read_csv(out / "superres_real.csv")
    real = load_benchmark("_superres_real")
    assert list(df.columns) == real.COLUMNS
    # one row per (method, condition, grid)
    keys = set(zip(df["method"], df["condition"], df["grid"], strict=True))
    assert len(df) == len(keys) == len(methods) * 2 * 3
    assert keys == {(m, c, g) for m in methods for c in ("none", "measured") for g in ("bin8um", "bin16um", "bin32um")}
    assert np.isfinite(df["pcc_mean"]).all() and np.isfinite(df["pcc_median"]).all()
    assert ((df["pcc_mean"] >= -1) & (df["pcc_mean"] <= 1)).all()
    assert (df["n_genes"] == 4).all()
    # the same grid for every method and condition; coarser grids have fewer scored squares
    n = df.groupby("grid")["n_regions"].agg(["min", "max"])
    assert (n["min"] == n["max"]).all()
    assert n.loc["bin8um", "min"] > n.loc["bin16um", "min"] > n.loc["bin32um", "min"] >= 20
    # the 8 µm grid matches the bins one to one: every fully covered square holds exactly one bin
    assert n.loc["bin8um", "min"] <= truth.counts[8].shape[0]
    # the spatial baselines recover the slide's pattern at the coarse grid, image-only or conditioned
    coarse = df[df["grid"] == "bin32um"].set_index(["method", "condition"])["pcc_mean"]
    assert coarse.loc[("neighbors", "none")] > 0.2 and coarse.loc[("copy", "none")] > 0.2
    assert (coarse.xs("measured", level="condition") > 0.2).all()
    # conditioning on the measured spots does not lose what the image-only grid had
    measured, image_only = coarse.xs("measured", level="condition"), coarse.xs("none", level="condition")
    assert (measured >= image_only - 0.05).all()
    md = (out / "superres_real.md").read_text()
    assert "| method | condition | grid | mean PCC | median PCC | n regions | fit s | seconds |" in md
    assert md.count("\n| ") == len(df) + 1  # header + one line per row (the separator starts "|---")


def test_cell_truth_is_each_cells_own_counts():
    xen = load_benchmark("_superres_xenium")
    counts = np.array([[1.0, 3.0, 0.0], [0.0, 0.0, 0.0], [2.0, 2.0, 4.0]])
    ids = ["a-1", "b-1", "c-1"]
    # predicted in another order, one cell not measured (dropped off the H&E), one with no count
    truth, ok = xen.cell_truth(counts, ids, ["c-1", "x-1", "a-1", "b-1"], [0, 2])
    assert ok.tolist() == [True, False, True, False]
    np.testing.assert_allclose(truth[0], np.log1p(np.array([2.0, 4.0]) / 8.0 * 1e4))  # library size: every gene
    np.testing.assert_allclose(truth[2], np.log1p(np.array([1.0, 0.0]) / 4.0 * 1e4))
    assert (truth[[1, 3]] == 0).all()


@pytest.mark.filterwarnings("ignore")
def test_real_mode_runs_end_to_end_on_a_xenium_bundle(tmp_path):
    from xenium_fixture import write_xenium_fixture

    fx = write_xenium_fixture(
        tmp_path / "xenium", morphology_px=2000, spacing_um=12.0, he_px=560, he_mpp=1.0, n_genes=6, depth=200.0
    )
    out = tmp_path / "results"
    methods = ["neighbors", "copy", "ridge"]
    argv = ["--real", str(fx.path), "--he-image", str(fx.he_path), "--alignment", str(fx.alignment_path)]
    load_benchmark("superres").main([*argv, "--methods", ",".join(methods), "--n-genes", "6", "--out", str(out)])
    assert not (out / "superres_real.csv").exists()  # a Visium HD result in the same folder is not overwritten
    df = pd.read_csv(out / "superres_real_xenium.csv")
    assert list(df.columns) == load_benchmark("_superres_real").COLUMNS
    assert (df["layout"] == "xenium").all() and (df["grid"] == "cells").all()
    assert set(zip(df["method"], df["condition"], strict=True)) == {
        (m, c) for m in methods for c in ("none", "measured")
    }
    assert len(df) == 6
    # every cell polygon is predicted; the cells with counts on the H&E are scored, the same for every row
    n_measured = int((fx.counts.sum(1) > 0).sum())
    assert (df["n_grid"] == len(fx.cell_ids)).all()
    n_scored = df["n_regions"].iloc[0]
    assert (df["n_regions"] == n_scored).all() and 0.8 * n_measured <= n_scored <= n_measured
    assert (df["n_genes"] == 6).all()
    assert ((df["pcc_mean"] > -1) & (df["pcc_mean"] < 1)).all() and np.isfinite(df["pcc_median"]).all()
    # the neighbors row, recomputed from the fixture's own counts: each cell scored against its own
    pcc = df.set_index(["method", "condition"])["pcc_mean"]
    sdata = stp.io.read_xenium(fx.path, he_image=fx.he_path, alignment=fx.alignment_path, transcripts=False)
    stp.pp.pool_to_spots(sdata, shapes_key="cell_circles", table_key="table", key_added="ps")
    stp.tl.superresolve(
        sdata, "neighbors", grid="cells", shapes_key="cell_boundaries", spots_key="ps", table_key="ps_table",
        condition="none", key_added="cells", progress=False,
    )  # fmt: skip
    tab = sdata.tables["cells"]
    row = {c: i for i, c in enumerate(fx.cell_ids)}
    on_he = set(sdata.tables["table"].obs_names)
    scored = [k for k, c in enumerate(tab.obs_names) if c in on_he and fx.counts[row[c]].sum() > 0]
    assert len(scored) == df["n_regions"].iloc[0]
    own = fx.counts[[row[tab.obs_names[k]] for k in scored]].astype(float)
    truth = np.log1p(own / own.sum(1, keepdims=True) * 1e4)
    pred = np.asarray(tab[:, fx.genes].X)[scored]
    expected = np.mean([np.corrcoef(truth[:, j], pred[:, j])[0, 1] for j in range(len(fx.genes))])
    assert pcc.loc[("neighbors", "none")] == pytest.approx(expected, abs=1e-9)
    # the cells' expression follows the tissue: the spatial baselines find some of it from the pooled spots alone
    # (20 spots; the synthetic tissue varies much between neighbouring cells, so per-cell PCCs stay low)
    assert pcc.loc[("neighbors", "none")] > 0.1 and pcc.loc[("copy", "none")] > 0.05
    md = (out / "superres_real_xenium.md").read_text()
    assert (
        "Xenium" in md and "| method | condition | grid | mean PCC | median PCC | n regions | fit s | seconds |" in md
    )
    assert md.count("\n| ") == len(df) + 1
    # the H&E of a Xenium bundle is --he-image, not Visium HD's --fullres-image
    with pytest.raises(SystemExit, match="--he-image"):
        load_benchmark("superres").main(["--real", str(fx.path), "--fullres-image", str(fx.he_path)])


def _pooled_grid_truths(root, rotation_deg, origin_um):
    """A synthetic HD folder read and pooled as ``run_real`` does; per grid, the truth of neighbors' squares."""
    real = load_benchmark("_superres_real")
    fx = write_visium_hd(
        root, bin_sizes=(8,), microns_per_pixel=1.0, image_size=(352, 352), extent_um=(288.0, 288.0),
        origin_um=origin_um, n_genes=3, depth=40.0, seed=1, rotation_deg=rotation_deg,
    )  # fmt: skip
    sdata = stp.io.read_visium_hd(fx.outs, bin_size=8, fullres_image_file=fx.fullres)
    bins_key = next(k for k in sdata.shapes if k.endswith("square_008um"))
    spots_key, table_key, spot_geo = real.pool_visium(stp, sdata, shapes_key=bins_key, table_key="square_008um")
    bin_geo = stp.pp.spots(sdata, spots_key=bins_key, table_key="square_008um")
    mpp = np.asarray(spot_geo.microns_per_pixel_xy, float)
    bins_um = bin_geo.centers * mpp
    source = sdata.tables["square_008um"]
    counts = source[np.asarray(bin_geo.obs_names)].X
    # Space Ranger's (col, row) of every bin, in the order of bins_um
    colrow = fx.bins[8].loc[np.asarray(bin_geo.obs_names), ["col", "row"]].to_numpy()
    out = {}
    for side in (8, 16, 32):
        stp.tl.superresolve(
            sdata, "neighbors", grid=f"bin{side}um", spots_key=spots_key, table_key=table_key, condition="none",
            tissue=False, key_added="bench_real", progress=False,
        )  # fmt: skip
        tab = sdata.tables.pop("bench_real")
        truth, n_bins, ok = real.grid_truth(stp, sdata, tab, bins_um, counts, None, mpp, float(side))
        lattice = stp.pp.grid_lattice(sdata, str(tab.obs["region"].iloc[0]))
        centres_um = np.asarray(tab.obsm["spatial"], float) * mpp
        old = real.aggregate_truth(bins_um, counts, centres_um, float(side))  # image-axis cells, as before
        out[side] = {"truth": truth, "n_bins": n_bins, "ok": ok, "lattice": lattice, "centres_um": centres_um,
                     "old": old, "bins_um": bins_um, "colrow": colrow, "counts": counts}  # fmt: skip
    return out


@pytest.mark.filterwarnings("ignore")
def test_truth_squares_nest_the_measured_bins_of_a_rotated_slide(tmp_path):
    import scipy.sparse as sp

    real = load_benchmark("_superres_real")
    res = _pooled_grid_truths(tmp_path / "rotated", 0.4, (16.0, 16.0))
    for side, k in ((8, 1), (16, 2), (32, 4)):
        r = res[side]
        lat = r["lattice"]
        assert lat.rotation_deg == pytest.approx(0.4, abs=1e-6) and lat.side_um == side  # the bins' own lattice
        # each square's cell of the lattice, and the cell Space Ranger's nesting gives each bin: (col, row) // k
        square = {tuple(c): i for i, c in enumerate(lat.cells(r["centres_um"]).tolist())}
        nested = [square.get(tuple(c), -1) for c in (r["colrow"] // k).tolist()]
        assert min(nested) >= 0  # every measured bin is in a predicted square
        want = np.bincount(nested, minlength=len(square))
        np.testing.assert_array_equal(r["n_bins"], want)  # the truth's members are exactly the nested bins
        assert r["n_bins"].max() == k * k and (r["n_bins"] == k * k).sum() * k * k >= 0.6 * len(nested)
        # the truth of a square is its nested bins' counts, summed and normalised
        members = sp.csr_matrix((np.ones(len(nested)), (nested, np.arange(len(nested)))), (len(square), len(nested)))
        summed = np.asarray((members @ sp.csr_matrix(r["counts"])).todense())
        full = np.flatnonzero(r["n_bins"] == k * k)
        np.testing.assert_allclose(r["truth"][full], real.log_normalised(summed, summed.sum(1))[full], rtol=1e-12)
        # the 8 µm squares are the measured bins themselves
        if k == 1:
            own = np.full(len(square), -1)
            own[nested] = np.arange(len(nested))
            np.testing.assert_allclose(r["centres_um"][full], r["bins_um"][own[full]], atol=1e-6)
    # image-axis cells (the truth before) do not nest the rotated 32 µm squares
    assert not np.array_equal(res[32]["old"][1], res[32]["n_bins"])


@pytest.mark.filterwarnings("ignore")
def test_an_unrotated_slide_keeps_the_image_axis_truth(tmp_path):
    res = _pooled_grid_truths(tmp_path / "straight", 0.0, (32.0, 32.0))
    for side in (8, 16, 32):
        r = res[side]
        assert r["lattice"].rotation_deg == 0.0
        np.testing.assert_allclose(r["centres_um"] % side, side / 2, atol=1e-6)  # the image's N µm squares
        for new, old in zip((r["truth"], r["n_bins"], r["ok"]), r["old"], strict=True):
            np.testing.assert_array_equal(new, old)  # the same truth as the image-axis cells gave
