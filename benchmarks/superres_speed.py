"""What whole-slide super-resolution costs, step by step: the dense feature map beside one window per region.

For synthetic Visium slides of 1, 3, 6.5 and 10 mm (the last holds ~5,000 spots, a full capture area's count) (0.5 µm/px, the generator's H&E written once to a zarr store
with its pyramid, read back lazily as a user's slide is), ``stp.tl.superresolve(sdata, "ridge", ...)`` with the
``handcrafted`` backbone is timed on each grid, in a fresh process per run so that its peak host memory is its
own. Every run prints the seconds of each step the verb records (``uns[...]["superresolve"]["step_seconds"]``:
tissue mask, grid, spot features, fit, grid features, predict, condition, output) plus writing the new elements
into the store with :func:`stpredict.io.write_back` (removed again after the run, so every run reads the same
store), the regions per second, and the peak resident memory. The
per-window reference (``dense=False``) runs beside the dense map (``dense=True``) in the same invocation, on the
sizes ``--windows-sizes`` allows (it takes an hour on a whole capture area); the ratios between them, and of
each size's time to the area ratio, are printed at the end.

    python benchmarks/superres_speed.py [--sizes 1,3,6.5,10] [--grids ps4,ps16,bin8,bin2] [--models ridge,pixnet]
                                        [--windows-sizes 1,3] [--windows-grids ps4,bin8] [--cache DIR]
                                        [--backbone handcrafted]

``--backbone`` takes any backbone name (timm models with random weights: nothing is downloaded; a
convolutional one, such as ``resnet18``, has a dense map too). A size of ``mob`` is the embedded mouse olfactory
bulb demo (``stp.datasets.mob()``, written to the cache as a store) instead of a synthetic slide.

Results: ``benchmarks/results/superres_speed.{csv,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
MPP = 0.5


def make_store(size_mm: float, cache: Path) -> Path:
    """A synthetic Visium slide of ``size_mm`` (NaN: the mob demo) as a zarr store (written once, then reused)."""
    import math

    import numpy as np

    import stpredict as stp
    from stpredict._image import image_levels, to_multiscale

    if math.isnan(size_mm):
        path = cache / "mob_demo.zarr"
        if not path.exists():
            stp.datasets.mob().write(path)
        return path
    path = cache / f"synthetic_{size_mm:g}mm.zarr"
    if path.exists():
        return path
    px = round(size_mm * 1000 / MPP)
    t0 = time.perf_counter()
    sdata = stp.datasets.synthetic(image_size=px, microns_per_pixel=MPP, layout="visium", n_genes=50, seed=0)
    # render level 0 once and build the pyramid from it (the generator's lazy levels would each render again)
    he = sdata.images["he"]
    level0 = np.asarray(image_levels(he)[0].array.compute())
    from spatialdata.transformations import get_transformation

    sdata.images["he"] = to_multiscale(level0, transformations=get_transformation(he, get_all=True), chunks=1024)
    del level0
    sdata.write(path)
    print(
        f"  wrote {path.name}: {px}² px, {sdata.tables['table'].n_obs} spots, {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    return path


def one_run(store: Path, model: str, grid: str, dense: bool, out: Path, backbone: str = "handcrafted") -> None:
    """Child process: one superresolve on the store, its step times and peak memory as JSON."""
    warnings.filterwarnings("ignore")
    import torch
    from spatialdata import read_zarr

    import stpredict as stp

    stp.settings.progress = False
    sdata = read_zarr(store)
    kw = {"bin_size": float(grid[3:])} if grid.startswith("bin") else {"grid": grid}
    if model == "ridge" and backbone != "handcrafted":
        torch.manual_seed(0)
        kw["backbone"] = stp.models.get_backbone(backbone, pretrained=False)
    key = f"bench_{model}_{grid}_{'dense' if dense else 'windows'}"
    t0 = time.perf_counter()
    stp.tl.superresolve(sdata, model, dense=dense, key_added=key, progress=False, **kw)
    total = time.perf_counter() - t0
    table = sdata.tables[key]
    rec = table.uns["stpredict"]["superresolve"]
    t1 = time.perf_counter()
    shapes_key = str(table.obs["region"].iloc[0])
    stp.io.write_back(sdata, [shapes_key, key])
    write = time.perf_counter() - t1
    steps = {k: float(v) for k, v in dict(rec["step_seconds"]).items()}
    peak_mb = _peak_mb()
    # leave the store as this run found it: read_zarr loads every table and shapes element, so a later run would
    # otherwise hold this one's outputs (hundreds of MB for 8 µm bins) and report them in its peak memory
    sdata.delete_element_from_disk([key, shapes_key])
    row = {
        "model": model,
        "grid": grid,
        "path": "dense" if dense else "windows",
        "n_spots": int(sdata.tables["table"].n_obs),
        "n_regions": int(table.n_obs),
        "superresolve_s": total,
        "write_s": write,
        **{f"{k}_s": v for k, v in steps.items()},
        "regions_per_second": table.n_obs / total,
        "peak_mb": peak_mb,
    }
    out.write_text(json.dumps(row))


def _peak_mb() -> float:
    """This process's peak resident memory: ``VmHWM`` (reset at exec, unlike ``ru_maxrss``, which a child
    inherits from the parent that forked it), else ``ru_maxrss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1,3,6.5,10", help="slide sides in mm (10 mm: ~5,000 spots)")
    p.add_argument("--grids", default="ps4,ps16,bin8,bin2")
    p.add_argument("--models", default="ridge,pixnet", help="models other than ridge run on --other-grids only")
    p.add_argument("--other-grids", default="bin8", help="grids of the models other than ridge (their own maps)")
    p.add_argument("--windows-sizes", default="1,3", help="sizes on which the per-window reference also runs")
    p.add_argument("--windows-grids", default="ps4,bin8", help="grids on which the per-window reference runs")
    p.add_argument("--max-bin2-mm", type=float, default=3.0, help="largest slide for 2 µm bins (memory)")
    p.add_argument("--cache", type=Path, default=HERE / "results" / "speed_cache")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--backbone", default="handcrafted", help="ridge's backbone (timm names: random weights)")
    p.add_argument("--one", nargs=5, metavar=("STORE", "MODEL", "GRID", "DENSE", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        store, model, grid, dense, out = args.one
        one_run(Path(store), model, grid, dense == "1", Path(out), args.backbone)
        return

    import pandas as pd

    args.cache.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    sizes = [float("nan") if s == "mob" else float(s) for s in args.sizes.split(",")]
    windows_sizes = {s for s in args.windows_sizes.split(",") if s}
    rows = []
    for size in sizes:
        store = make_store(size, args.cache)
        for model in args.models.split(","):
            for grid in args.grids.split(","):
                if grid == "bin2" and size > args.max_bin2_mm:
                    continue
                if model != "ridge" and grid not in args.other_grids.split(","):
                    continue
                label = "mob" if size != size else f"{size:g}"
                ref = label in windows_sizes and model == "ridge" and grid in args.windows_grids.split(",")
                paths = [True] + ([False] if ref else [])
                for dense in paths:
                    res = args.cache / "row.json"
                    res.unlink(missing_ok=True)
                    cmd = [sys.executable, __file__, "--one", str(store), model, grid, "1" if dense else "0", str(res),
                           "--backbone", args.backbone]  # fmt: skip
                    proc = subprocess.run(
                        cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
                    )
                    if proc.returncode != 0 or not res.exists():
                        print(f"  {label} mm {model} {grid}: FAILED\n{proc.stderr[-2000:]}", flush=True)
                        continue
                    row = {"size_mm": size, **json.loads(res.read_text())}
                    rows.append(row)
                    print(
                        f"  {label} mm {model:6s} {grid:5s} {row['path']:7s} {row['n_regions']:>9,} regions "
                        f"{row['superresolve_s']:7.1f} s (+ write {row['write_s']:.1f} s)  "
                        f"{row['regions_per_second']:,.0f}/s  peak {row['peak_mb']:,.0f} MB  "
                        + " ".join(f"{k[:-2]} {row[k]:.1f}" for k in row if k.endswith("_s") and k not in
                                   ("superresolve_s", "write_s", "regions_per_second")),
                        flush=True,
                    )  # fmt: skip
    df = pd.DataFrame(rows)
    df.to_csv(args.out / "superres_speed.csv", index=False)
    lines = _report(df, args.backbone)
    (args.out / "superres_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _report(df, backbone: str = "handcrafted") -> list[str]:
    """Markdown: the steps table, dense/windows ratios and the scaling with area (size NaN: the mob demo)."""
    step_cols = [c for c in df.columns if c.endswith("_s") and c not in ("superresolve_s", "write_s")]
    lines = [
        f"`python benchmarks/superres_speed.py`, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU cores; seconds; "
        f"ridge's backbone {backbone}.",
        "",
        "| mm | model | grid | path | spots | regions | total s | " + " | ".join(c[:-2] for c in step_cols)
        + " | write s | regions/s | peak MB |",
        "|" + "---|" * (10 + len(step_cols)),
    ]  # fmt: skip
    for _, r in df.iterrows():
        steps = " | ".join("" if pd_isna(r.get(c)) else f"{r[c]:.1f}" for c in step_cols)
        lines.append(
            f"| {_size(r.size_mm)} | {r.model} | {r.grid} | {r.path} | {r.n_spots:,} | {r.n_regions:,} | "
            f"{r.superresolve_s:.1f} | {steps} | {r.write_s:.1f} | {r.regions_per_second:,.0f} | {r.peak_mb:,.0f} |"
        )
    lines += ["", "Per-window / dense time (same slide, grid and run):", ""]
    for (size, grid), g in df[df.model == "ridge"].groupby(["size_mm", "grid"], dropna=False):
        d, w = g[g.path == "dense"], g[g.path == "windows"]
        if len(d) and len(w):
            lines.append(
                f"- {_size(size)} mm {grid}: {w.superresolve_s.iloc[0] / d.superresolve_s.iloc[0]:.1f}× "
                f"(features: {(w.spot_features_s.iloc[0] + w.grid_features_s.iloc[0]) / max(d.spot_features_s.iloc[0] + d.grid_features_s.iloc[0], 1e-9):.1f}×)"
            )
    lines += ["", "Growth with area (dense path; a linear cost gives a time ratio equal to the area ratio):", ""]
    dd = df[(df.path == "dense") & df.size_mm.notna()]
    for (model, grid), g in dd.groupby(["model", "grid"]):
        g = g.sort_values("size_mm")
        for (_, a), (_, b) in zip(g.iloc[:-1].iterrows(), g.iloc[1:].iterrows(), strict=True):
            area = (b.size_mm / a.size_mm) ** 2
            t = b.superresolve_s / a.superresolve_s
            lines.append(
                f"- {model} {grid} {a.size_mm:g} → {b.size_mm:g} mm: time × {t:.2f}, area × {area:.2f} "
                f"(ratio {t / area:.2f})"
            )
    return lines


def _size(size: float) -> str:
    return "mob demo" if size != size else f"{size:g}"


def pd_isna(v) -> bool:
    import pandas as pd

    return v is None or bool(pd.isna(v))


if __name__ == "__main__":
    main()
