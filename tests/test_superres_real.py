"""``benchmarks/superres.py --real``: super-resolution of pooled Visium HD bins scored against the bins themselves."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _bench import load_benchmark
from _hd_fixture import write_visium_hd


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
