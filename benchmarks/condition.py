"""Timing of ``stp.pp.condition_on_spots`` at Visium-HD-like scale: ~660k 8 µm bins under 5,000 Visium spots.

Synthetic geometry (no image): a hexagonal lattice of 55 µm spots at 100 µm pitch (~7 × 6 mm), square bins of
8 µm covering it, 50 genes with a textured image-like pattern and gamma-distributed measurements (a fifth of
them zero, as in sparse count data). Baseline measured in the same run: nearest-spot copy (KD-tree query of
every bin plus indexing), the cheapest thing a caller could do instead. Prints the timings, their ratio,
the achieved consistency error and the peak memory.

    python benchmarks/condition.py [--bins 8] [--spots 5000] [--genes 50] [--repeat 1] [--gate learn]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
from scipy.spatial import cKDTree


def geometry(n_spots: int, bin_um: float, pitch: float = 100.0) -> tuple[np.ndarray, np.ndarray]:
    cols = int(np.ceil(np.sqrt(n_spots * 2 / np.sqrt(3))))
    rows = int(np.ceil(n_spots / cols))
    j, i = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    spots = np.column_stack([(i * pitch + pitch / 2 * (j % 2)).ravel(), (j * pitch * np.sqrt(3) / 2).ravel()])
    spots = spots[:n_spots] + 60.0
    hi = spots.max(0) + 60.0
    xs, ys = np.arange(bin_um / 2, hi[0], bin_um), np.arange(bin_um / 2, hi[1], bin_um)
    bx, by = np.meshgrid(xs, ys)
    return spots, np.column_stack([bx.ravel(), by.ravel()])


def main() -> None:
    from stpredict.pp import condition_on_spots

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bins", type=float, default=8.0)
    p.add_argument("--spots", type=int, default=5000)
    p.add_argument("--genes", type=int, default=50)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--gate", default="learn")
    a = p.parse_args()
    rng = np.random.default_rng(0)
    spots, bins = geometry(a.spots, a.bins)
    g = a.genes
    # image-like pattern: smooth field × cell-scale texture, per gene
    k = rng.normal(0, 2 * np.pi / 300, (g, 2))
    smooth = 1.5 + np.cos(bins @ k.T + rng.uniform(0, 6.3, g))
    texture = 1.0 + 0.6 * np.cos(bins[:, :1] / 5.3 + rng.uniform(0, 6.3, g)) * np.cos(bins[:, 1:] / 7.1)
    pred = smooth * texture * rng.lognormal(0, 1, g)
    measured = rng.gamma(2.0, 1.0, (len(spots), g)) * (rng.random((len(spots), g)) > 0.2)
    gate = a.gate if a.gate == "learn" else float(a.gate)
    print(f"{len(bins):,} bins of {a.bins:g} µm, {len(spots):,} spots, {g} genes, gate={gate}")

    t_copy, c_copy = [], []
    for _ in range(a.repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        _, near = cKDTree(spots).query(bins)
        copy = measured[near]
        t_copy.append(time.perf_counter() - t0)
        c_copy.append(time.process_time() - c0)
    del copy
    t_cond, c_cond = [], []
    for _ in range(a.repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        res = condition_on_spots(
            pred, bins, spots, measured, region_kind="square", region_size_um=a.bins, spot_diameter_um=55.0, gate=gate
        )
        t_cond.append(time.perf_counter() - t0)
        c_cond.append(time.process_time() - c0)
    tc, tb = min(t_cond), min(t_copy)
    cc, cb = min(c_cond), min(c_copy)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"nearest-spot copy (baseline): {tb:.2f} s wall, {cb:.2f} s CPU")
    print(
        f"condition_on_spots:           {tc:.2f} s wall, {cc:.2f} s CPU  (ratio ×{tc / tb:.1f} wall, ×{cc / cb:.1f} CPU)"
    )
    print(
        f"consistency: max rel. error {res.max_rel_error:.1e}, mean {res.mean_rel_error:.1e}; "
        f"clipped entries {res.n_clipped}, IPF sweeps {res.n_ipf}; median w {np.median(res.weights):.2f}; "
        f"min value {res.values.min():.3g}; peak RSS {peak:.0f} MiB"
    )


if __name__ == "__main__":
    main()
