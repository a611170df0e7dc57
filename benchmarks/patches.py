"""Patch-extraction benchmark: stpredict's PatchExtractor against squidpy's ``ImageContainer.generate_spot_crops``.

The task compared is the real one: a window of 112 µm around each spot, resampled to 224 px (0.5 µm/px).
Squidpy does it with ``spot_scale`` (window size) and ``scale`` (resampling, skimage, antialiased when shrinking).

Both methods read the same pixels: each slide is first materialised once into a SpatialData zarr store under
``--workdir`` (kept between runs; the 20,000² synthetic slide takes ~10 min to render the first time), and
every measurement runs in its own subprocess, which reports its throughput and its peak resident memory
(``ru_maxrss`` minus the baseline after imports). Squidpy gets the level-0 image in memory (what
``ImageContainer`` needs), ours reads it lazily through its chunk cache. her2st is measured twice: from its
zarr store, and as ``stp.io.read_st`` returns it (JPEG decoded into memory, for both methods).

    python benchmarks/patches.py                      # synthetic Visium-size slide + her2st C2 (~3 min)
    python benchmarks/patches.py --quick              # 8,000² synthetic slide
    python benchmarks/patches.py --memory-scaling     # also peak memory on a small vs the large synthetic slide
    python benchmarks/patches.py --n-spots 500        # squidpy crops 500 random spots only
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

import numpy as np

SIZE_UM = 112.0
PATCH_PX = 224
MPP_SYNTHETIC = 0.45
HER2ST_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "her2st" / "data"
HER2ST_SECTION = ("C2", "5714_HE_BT_C2.jpg")


def _rss_mb() -> float:
    """Peak resident memory of this process so far, MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------
# data: materialise each slide once into a zarr store
# ---------------------------------------------------------------------------------------------------------


def _store(workdir: Path, dataset: str) -> Path:
    return workdir / f"{dataset}.zarr"


def _parse_dataset(dataset: str) -> tuple[str, int | None]:
    if dataset.startswith("synthetic"):
        return "synthetic", int(dataset.split("-", 1)[1])
    return dataset, None


def prepare(dataset: str, workdir: Path) -> Path:
    """Write ``dataset`` (``synthetic-<size>`` or ``her2st``) to ``workdir`` once; return the store's path."""
    import dask
    import dask.array as da
    import spatialdata as sd

    import stpredict as stp
    from stpredict._image import image_levels, replace_levels

    path = _store(workdir, dataset)
    done = path.with_suffix(".done")
    if done.exists() and path.exists():
        return path
    kind, size = _parse_dataset(dataset)
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if kind == "synthetic":
        _log(f"[prepare] rendering the {size}² synthetic slide once into {path} (one-off, minutes) ...")
        sdata = stp.datasets.synthetic(image_size=size, microns_per_pixel=MPP_SYNTHETIC, n_genes=5, seed=0)
        tree = sdata.images["he"]
        names = sorted(tree.children, key=lambda n: int(n[5:]))
        raw = workdir / f"_{dataset}_level0.zarr"
        lv0 = image_levels(tree)[0].array
        with dask.config.set(scheduler="threads"):
            lv0.to_zarr(str(raw), overwrite=True)
        _log(f"[prepare]   level 0 rendered in {time.perf_counter() - t0:.0f} s")
        # the pyramid from level 0 by 2x2 box means (the procedural renderer would render each level again)
        prev = da.from_zarr(str(raw))
        arrays = {"scale0": prev}
        for name in names[1:]:
            old = next(iter(tree[name].ds.data_vars.values()))
            h, w = int(old.sizes["y"]), int(old.sizes["x"])
            s = da.coarsen(np.sum, prev.astype(np.uint16), {1: 2, 2: 2}, trim_excess=True)
            lvl = ((s + 2) // 4).astype(np.uint8)[:, :h, :w].rechunk((3, 512, 512))
            arrays[name] = lvl
            prev = lvl
        replace_levels(tree, arrays, chunks=512)
    else:
        d = HER2ST_DIR
        sec, jpg = HER2ST_SECTION
        sdata = stp.io.read_st(
            d / "ST-cnts" / f"{sec}.tsv.gz",
            d / "ST-spotfiles" / f"{sec}_selection.tsv",
            d / "ST-imgs" / "C" / sec / jpg,
        )
    if path.exists():
        import shutil

        shutil.rmtree(path)
    with dask.config.set(scheduler="threads"):
        sdata.write(path)
    if kind == "synthetic":
        import shutil

        shutil.rmtree(workdir / f"_{dataset}_level0.zarr", ignore_errors=True)
    sd.read_zarr(path)  # check that it reads back
    done.write_text("ok\n")
    _log(f"[prepare] {dataset}: written in {time.perf_counter() - t0:.0f} s")
    return path


# ---------------------------------------------------------------------------------------------------------
# children: one measurement per process (peak memory = ru_maxrss minus the baseline after imports)
# ---------------------------------------------------------------------------------------------------------


def _spot_subset(n_total: int, n_spots: int | None, seed: int = 0) -> np.ndarray:
    if n_spots is None or n_spots >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(seed).choice(n_total, n_spots, replace=False))


def _open(dataset: str, workdir: Path):
    """The slide: its zarr store read lazily, or (``her2st-memory``) the section as ``read_st`` returns it."""
    import spatialdata as sd

    import stpredict as stp

    if dataset == "her2st-memory":  # the JPEG decoded into memory, pyramid built with numpy
        d = HER2ST_DIR
        sec, jpg = HER2ST_SECTION
        return stp.io.read_st(
            d / "ST-cnts" / f"{sec}.tsv.gz",
            d / "ST-spotfiles" / f"{sec}_selection.tsv",
            d / "ST-imgs" / "C" / sec / jpg,
        )
    return sd.read_zarr(_store(workdir, dataset))


def child_ours(
    dataset: str, workdir: Path, n_spots: int | None, batch_size: int, threads: int, min_time: float
) -> dict:
    import dask

    import stpredict as stp
    import stpredict.pp._patches as pmod
    from stpredict._image import image_levels

    base = _rss_mb()
    if threads == 1:
        pmod.RESAMPLE_THREADS = 1
        dask.config.set(num_workers=1)
    t0 = time.perf_counter()
    sdata = _open(dataset, workdir)
    geo = stp.pp.spots(sdata)
    sub = _spot_subset(len(geo.centers), n_spots)
    levels = image_levels(sdata.images[geo.image_key])
    t_open = time.perf_counter() - t0

    def extractor():
        return stp.pp.PatchExtractor(
            levels, geo.centers[sub], geo.microns_per_pixel_xy, size_um=SIZE_UM, patch_px=PATCH_PX
        )

    t0 = time.perf_counter()
    ext = extractor()
    t_setup = t_open + time.perf_counter() - t0
    n = passes = 0
    t_extract = 0.0
    while passes == 0 or t_extract < min_time:
        if passes:
            ext = extractor()  # a cold chunk cache on every pass: each pass reads its chunks again
        t0 = time.perf_counter()
        for _idx, batch in ext.batches(batch_size):
            assert batch.shape[1:] == (3, PATCH_PX, PATCH_PX)
            assert batch.dtype == np.uint8
            n += len(batch)
        t_extract += time.perf_counter() - t0
        passes += 1
    plan = ext.plan
    return {
        "n": n,
        "n_spots": len(sub),
        "passes": passes,
        "n_total": len(geo.centers),
        "t_setup": t_setup,
        "t_extract": t_extract,
        "mem_mb": _rss_mb() - base,
        "base_mb": base,
        "plan": f"level {plan.level}, {plan.win_x}x{plan.win_y} px -> {PATCH_PX} px",
        "out_mpp": SIZE_UM / PATCH_PX,
        "image": list(levels[0].array.shape),
        "mpp": geo.microns_per_pixel,
    }


def _squidpy_geometry(geo) -> tuple[int, float, float]:
    """Radius, ``spot_scale`` and ``scale`` that make squidpy cut SIZE_UM and output PATCH_PX."""
    r = round((SIZE_UM / geo.microns_per_pixel - 1) / 2)  # squidpy crops are 2r+1 px wide
    half = geo.diameter // 2  # squidpy: radius = int(round(diameter // 2 * spot_scale))
    spot_scale = r / half
    for eps in (0.0, 1e-9, -1e-9):
        if int(round(half * (spot_scale + eps))) == r:
            spot_scale += eps
            break
    else:
        raise AssertionError("cannot express the radius through spot_scale")
    scale = PATCH_PX / (2 * r + 1)  # skimage.rescale: output round(scale * (2r+1)) = PATCH_PX
    return r, spot_scale, scale


def child_squidpy(
    dataset: str, workdir: Path, n_spots: int | None, n_check: int, png: Path | None, min_time: float
) -> dict:
    import anndata as ad
    import dask.array as da
    import squidpy as sq

    import stpredict as stp
    from stpredict._image import image_levels

    base = _rss_mb()
    t0 = time.perf_counter()
    sdata = _open(dataset, workdir)
    geo = stp.pp.spots(sdata)
    t_open = time.perf_counter() - t0
    sub = _spot_subset(len(geo.centers), n_spots)
    r, spot_scale, scale = _squidpy_geometry(geo)
    adata = ad.AnnData(obs={"spot": np.arange(len(geo.centers))})
    adata.obs_names = [f"s{i}" for i in range(adata.n_obs)]
    adata.obsm["spatial"] = geo.centers.copy()  # x, y in level-0 pixels
    adata.uns["spatial"] = {"lib": {"scalefactors": {"spot_diameter_fullres": float(geo.diameter)}}}
    kw = {"spot_scale": spot_scale, "scale": scale, "as_array": "image", "squeeze": True}

    # what users do: the level-0 image as an in-memory (y, x, c) array in an ImageContainer. The kindest
    # setting for squidpy's memory: the chunks are stored straight into one preallocated array (no transient
    # second copy), and copy=False so that squidpy does not copy it again
    t0 = time.perf_counter()
    lvl0 = image_levels(sdata.images[geo.image_key])[0].array
    img = np.empty((lvl0.shape[1], lvl0.shape[2], lvl0.shape[0]), dtype=lvl0.dtype)
    da.store(lvl0.transpose(1, 2, 0), img, lock=False)
    ic = sq.im.ImageContainer(img, layer="image", lazy=False, copy=False)
    del img
    t_container = time.perf_counter() - t0

    n = passes = 0
    t_extract = 0.0
    while passes == 0 or t_extract < min_time:
        t0 = time.perf_counter()
        for crop in ic.generate_spot_crops(adata, obs_names=adata.obs_names[sub], **kw):
            assert crop.shape == (PATCH_PX, PATCH_PX, 3), crop.shape
            assert crop.dtype == np.uint8
            n += 1
        t_extract += time.perf_counter() - t0
        passes += 1
    mem = _rss_mb() - base

    # agreement with ours on the same spots (after the measurement: it does not count in the peak)
    ext = stp.pp.PatchExtractor(
        image_levels(sdata.images[geo.image_key]),
        geo.centers,
        geo.microns_per_pixel_xy,
        size_um=SIZE_UM,
        patch_px=PATCH_PX,
    )
    inside = sub[ext.padded_fraction[sub] == 0]
    check = inside[np.linspace(0, len(inside) - 1, min(n_check, len(inside))).astype(int)]
    ours = ext.read(check).astype(float).transpose(0, 2, 3, 1)
    theirs = np.stack(list(ic.generate_spot_crops(adata, obs_names=adata.obs_names[check], **kw))).astype(float)
    mad = np.abs(ours - theirs).mean(axis=(1, 2, 3))
    # reference scale: the same comparison between each patch and the next spot's squidpy crop
    mad_other = np.abs(ours - np.roll(theirs, 1, axis=0)).mean(axis=(1, 2, 3))
    corr = [float(np.corrcoef(a.ravel(), b.ravel())[0, 1]) for a, b in zip(ours, theirs, strict=True)]
    if png is not None:
        from PIL import Image

        k = min(4, len(check))
        diff = np.clip(np.abs(ours[:k] - theirs[:k]) * 4, 0, 255)
        rows = [np.concatenate([ours[i], theirs[i], 255 - diff[i]], axis=1) for i in range(k)]
        Image.fromarray(np.concatenate(rows, axis=0).astype(np.uint8)).save(png)
    return {
        "n": n,
        "n_spots": len(sub),
        "passes": passes,
        "n_total": len(geo.centers),
        "t_setup": t_open + t_container,
        "t_container": t_container,
        "t_extract": t_extract,
        "mem_mb": mem,
        "base_mb": base,
        "plan": f"{2 * r + 1}x{2 * r + 1} px, spot_scale={spot_scale:.4f}, scale={scale:.4f}",
        "out_mpp": (2 * r + 1) * geo.microns_per_pixel / PATCH_PX,
        "check_n": len(check),
        "check_mad": float(mad.mean()),
        "check_mad_max": float(mad.max()),
        "check_bias": float((ours - theirs).mean()),
        "check_mad_other": float(mad_other.mean()),
        "check_corr": float(np.mean(corr)),
        "png": str(png) if png else None,
    }


def _run_child(args: argparse.Namespace, method: str, dataset: str, **extra) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--dataset", dataset, "--workdir", str(args.workdir)]
    cmd += ["--batch-size", str(args.batch_size), "--min-time", str(args.min_time)]
    for k, v in extra.items():
        if v is not None:
            cmd += [f"--{k.replace('_', '-')}", str(v)]
    _log(f"[run] {' '.join(cmd[1:])}")
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    if res.returncode != 0 or not lines:
        sys.stderr.write(res.stderr[-4000:])
        msg = f"child {method} {dataset} failed (rc={res.returncode})"
        raise RuntimeError(msg)
    return json.loads(lines[-1][7:])


# ---------------------------------------------------------------------------------------------------------
# parent: run, tabulate, ratios last
# ---------------------------------------------------------------------------------------------------------


def _rate(x: dict) -> float:
    """Patches (crops) per second of extraction."""
    return x["n"] / x["t_extract"]


def _e2e(x: dict) -> float:
    """Patches per second for all spots of the slide, setup included (setup per slide, extraction per spot)."""
    return x["n_total"] / (x["t_setup"] + x["n_total"] / _rate(x))


def _fmt_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="synthetic,her2st", help="comma-separated: synthetic, her2st")
    p.add_argument("--quick", action="store_true", help="a smaller synthetic slide (8,000² px instead of 20,000²)")
    p.add_argument("--synthetic-size", type=int, default=None, help="side of the synthetic slide in px")
    p.add_argument(
        "--n-spots",
        type=int,
        default=None,
        help="crop only this many random spots with squidpy (throughput is per crop); default: all spots",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--min-time", type=float, default=2.0, help="repeat passes over the spots for at least this (s)")
    p.add_argument(
        "--her2st-source",
        choices=["zarr", "memory", "both"],
        default="both",
        help="her2st read from its zarr store, or decoded into memory by stp.io.read_st (as both methods use it)",
    )
    p.add_argument("--n-check", type=int, default=16, help="spots compared between squidpy and ours")
    p.add_argument("--memory-scaling", action="store_true", help="also peak memory on a small synthetic slide")
    p.add_argument(
        "--small-size", type=int, default=None, help="side of the small slide for --memory-scaling (default 8000)"
    )
    p.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "stpredict_bench_patches")
    p.add_argument("--prepare-only", default=None, help="comma-separated datasets to materialise, then exit")
    # internal: one measurement in a child process
    p.add_argument("--child", choices=["ours", "squidpy"], help=argparse.SUPPRESS)
    p.add_argument("--dataset", help=argparse.SUPPRESS)
    p.add_argument("--spots", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--png", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.child:
        if args.child == "ours":
            out = child_ours(args.dataset, args.workdir, args.spots, args.batch_size, args.threads, args.min_time)
        else:
            out = child_squidpy(args.dataset, args.workdir, args.spots, args.n_check, args.png, args.min_time)
        print("RESULT " + json.dumps(out), flush=True)
        return
    if args.prepare_only:
        for ds in args.prepare_only.split(","):
            prepare(ds, args.workdir)
        return

    t_start = time.perf_counter()
    load_start = os.getloadavg()[0]
    size = args.synthetic_size or (8000 if args.quick else 20000)
    her2st = {"zarr": ["her2st"], "memory": ["her2st-memory"], "both": ["her2st", "her2st-memory"]}
    names = {"synthetic": [f"synthetic-{size}"], "her2st": her2st[args.her2st_source]}
    datasets = [n for d in args.datasets.split(",") if d.strip() for n in names[d.strip()]]
    for ds in datasets:
        if ds != "her2st-memory":
            prepare(ds, args.workdir)
    results: dict[str, dict[str, dict]] = {}
    for ds in datasets:
        r: dict[str, dict] = {}
        r["ours"] = _run_child(args, "ours", ds)
        r["ours_1t"] = _run_child(args, "ours", ds, threads=1)
        n_sq = min(args.n_spots or r["ours"]["n_total"], r["ours"]["n_total"])
        if n_sq < r["ours"]["n_total"]:
            r["ours_sub"] = _run_child(args, "ours", ds, spots=n_sq)
        r["squidpy"] = _run_child(
            args, "squidpy", ds, spots=n_sq, n_check=args.n_check, png=args.workdir / f"check_{ds}.png"
        )
        results[ds] = r
    scaling = None
    if args.memory_scaling:
        small = f"synthetic-{args.small_size or (8000 if size > 8000 else size // 2)}"
        large = names["synthetic"][0]
        prepare(small, args.workdir)
        prepare(large, args.workdir)
        scaling = {}
        for ds in (small, large):
            if ds in results:
                scaling[ds] = {"ours": results[ds]["ours"], "squidpy": results[ds]["squidpy"]}
            else:
                scaling[ds] = {
                    "ours": _run_child(args, "ours", ds),
                    "squidpy": _run_child(args, "squidpy", ds, spots=min(args.n_spots or 100, 100), n_check=2),
                }

    # ---- report
    print()
    print(
        f"## Patch extraction: {SIZE_UM:g} µm windows -> {PATCH_PX} px ({SIZE_UM / PATCH_PX:g} µm/px), "
        f"{os.cpu_count()} CPU cores, batch {args.batch_size}"
    )
    print(
        f"(1-min load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end: timings of a shared"
    )
    print(" machine are noisy; squidpy crops single-threaded, stpredict decodes and resamples on a few threads)")
    print()
    hdr = ["dataset", "method", "spots", "read plan", "out µm/px", "setup s", "(container s)", "extract s", "patches/s",
           "end-to-end patches/s", "peak MiB"]  # fmt: skip
    print(_fmt_row(hdr))
    print(_fmt_row(["---"] * len(hdr)))
    for ds, r in results.items():
        o = r["ours"]
        shape = "x".join(str(v) for v in o["image"][1:])
        label = f"{ds} ({shape} px, {o['mpp']:.3f} µm/px)"
        if ds == "her2st-memory":
            label += " (image decoded in memory by read_st, for both)"
        for key, name in [("ours", "stpredict"), ("ours_1t", "stpredict, 1 thread"),
                          ("ours_sub", "stpredict, squidpy's spots"), ("squidpy", "squidpy generate_spot_crops")]:  # fmt: skip
            if key not in r:
                continue
            x = r[key]
            setup, rate, e2e = x["t_setup"], _rate(x), _e2e(x)
            print(_fmt_row([label, name, f"{x['n_spots']}/{x['n_total']} x{x['passes']}", x["plan"], f"{x['out_mpp']:.4f}",
                            f"{setup:.2f}", f"{x['t_container']:.2f}" if "t_container" in x else "",
                            f"{x['t_extract']:.2f}", f"{rate:.1f}", f"{e2e:.1f}",
                            f"{x['mem_mb']:.0f}"]))  # fmt: skip
    print()
    print("setup: open the slide (zarr store; read_st for her2st-memory) and its spots, then ours: the read plan;")
    print("       squidpy: load level 0 into memory and build the ImageContainer ('container s', part of setup).")
    print("spots: spots used / spots on the slide x passes over them (repeated, cold cache, for >= --min-time s).")
    print("end-to-end: all spots of the slide, setup included (squidpy's crop time extrapolated from its spots).")
    print("peak MiB: ru_maxrss of the child process minus its baseline after imports.")
    print()
    print("### Agreement: squidpy crop vs ours, same spots (uint8 levels, RGB)")
    print()
    print(_fmt_row(["dataset", "spots", "squidpy crop shape", "mean |diff|", "max per-spot mean |diff|",
                    "mean diff (ours - squidpy)", "mean |diff| vs another spot", "pixel corr", "images"]))  # fmt: skip
    print(_fmt_row(["---"] * 9))
    for ds, r in results.items():
        s = r["squidpy"]
        print(_fmt_row([ds, str(s["check_n"]), f"{PATCH_PX}x{PATCH_PX}x3", f"{s['check_mad']:.2f}",
                        f"{s['check_mad_max']:.2f}", f"{s['check_bias']:+.2f}", f"{s['check_mad_other']:.2f}",
                        f"{s['check_corr']:.3f}", s["png"] or ""]))  # fmt: skip
    if scaling:
        print()
        print("### Peak memory vs slide size (MiB above the baseline after imports)")
        print()
        print(_fmt_row(["slide", "level-0 MiB", "stpredict", "squidpy"]))
        print(_fmt_row(["---"] * 4))
        for ds, r in scaling.items():
            c, h, w = r["ours"]["image"]
            print(_fmt_row([ds, f"{c * h * w / 2**20:.0f}", f"{r['ours']['mem_mb']:.0f}",
                            f"{r['squidpy']['mem_mb']:.0f}"]))  # fmt: skip
        (a, ra), (b, rb) = scaling.items()
        area = np.prod(rb["ours"]["image"]) / np.prod(ra["ours"]["image"])
        print()
        print(f"{b} / {a}: slide area x{area:.1f}, stpredict memory x{rb['ours']['mem_mb'] / ra['ours']['mem_mb']:.2f}, "
              f"squidpy memory x{rb['squidpy']['mem_mb'] / ra['squidpy']['mem_mb']:.2f}")  # fmt: skip
    print()
    print(f"(benchmark wall time {time.perf_counter() - t_start:.0f} s, data preparation excluded)")
    print()
    print("### Ratios (stpredict / squidpy)")
    print()
    for ds, r in results.items():
        o, s = r["ours"], r["squidpy"]
        extra = f"1 thread x{_rate(r['ours_1t']) / _rate(s):.1f}"
        if "ours_sub" in r:
            extra += f"; on squidpy's {s['n_spots']} spots x{_rate(r['ours_sub']) / _rate(s):.1f}"
        extra += f"; end-to-end x{_e2e(o) / _e2e(s):.1f}"
        print(f"{ds}: throughput x{_rate(o) / _rate(s):.1f} ({extra}), "
              f"peak memory x{o['mem_mb'] / s['mem_mb']:.2f} ({o['mem_mb']:.0f} vs {s['mem_mb']:.0f} MiB)")  # fmt: skip


if __name__ == "__main__":
    warnings.filterwarnings("ignore")
    main()
