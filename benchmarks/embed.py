"""Embedding throughput: end-to-end (read + transform + backbone) against the backbone alone, in the same run.

End-to-end is the package's own path, ``stpredict.tl._embedding_loop.compute_embeddings`` (what ``stp.tl.embed`` calls
for the spots of a slide): a ``PatchExtractor`` reads 112 µm windows lazily from the slide's zarr store (or its
image in memory), batches go through a DataLoader when ``--num-workers`` > 0, and ``TorchBackbone.embed``
normalises them on the device and runs the network (bf16/fp16 autocast and channels_last on CUDA, as
``stpredict.settings`` says) under ``inference_mode``. The baseline is the same backbone module on random tensors
made beforehand on the device, of the same batch sizes, shape, dtype and memory format, under the same
``inference_mode`` and autocast: what the network alone can do. The ratio end-to-end / backbone alone is the
figure (goal >= 0.9 on a GPU). A third rate, read + transform alone (``PatchExtractor.batches`` and
``TorchBackbone.preprocess`` in the main process, no network), says where the rest of the time goes.

Backbones are timm models built with random weights (``pretrained=False``: no downloads; weights do not change
the speed). Warm-up batches are run first and not timed; on CUDA every timing ends with
``torch.cuda.synchronize``. With ``--repeats`` > 1 the measurements are repeated (in reverse order every
other time) and the best of each is kept.

The synthetic slide (``stp.datasets.synthetic``, Visium layout, 0.5 µm/px by default: 112 µm windows are
224 px at level 0, no resampling) is sized to hold ``--n-patches`` spots and materialised once into a zarr store
under ``--workdir`` (kept between runs), so that no procedural rendering is timed. her2st (C2 by default:
187 ST spots at ~0.69 µm/px, windows resampled 163 -> 224 px) is read by ``stp.io.read_st`` (JPEG decoded into
memory); its spots are repeated to reach ``--n-patches``.

    python benchmarks/embed.py --device cpu --n-patches 64 --batch-size 16   # a few minutes on 2 cores
    python benchmarks/embed.py --device cuda                                  # 4,096 patches, workers 0 and 8
    python benchmarks/embed.py --device cuda --models resnet50,vit_base_patch16_224 --slide her2st

The table is printed and written to ``benchmarks/results/embed.md`` (one section per device and slide; a run
replaces its own section). The ratios are printed last.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

SIZE_UM = 112.0
VISIUM_PITCH_UM = 100.0
RESULTS = HERE / "results" / "embed.md"
MODELS = "resnet50,vit_small_patch16_224"  # or vit_base_patch16_224, vit_large_patch16_224, any timm name


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _fmt_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


# ---------------------------------------------------------------------------------------------------------
# slides
# ---------------------------------------------------------------------------------------------------------


def _synthetic_size(n_patches: int, mpp: float) -> int:
    """Side (px, a multiple of 512) of a synthetic Visium slide with at least ``n_patches`` spots on tissue."""
    import stpredict as stp

    # about 40 % of the lattice lies on the procedural tissue: start there, grow until enough spots
    area_um2 = n_patches * VISIUM_PITCH_UM**2 * math.sqrt(3) / 2 / 0.4
    size = 512 * math.ceil((math.sqrt(area_um2) / mpp + 2 * SIZE_UM / mpp) / 512)
    while True:
        sdata = stp.datasets.synthetic(image_size=size, microns_per_pixel=mpp, n_genes=5, seed=0)  # lazy: cheap
        if sdata.tables["table"].n_obs >= n_patches:
            return size
        size += 512 * max(1, round(size * 0.05 / 512))


def prepare_synthetic(size: int, mpp: float, workdir: Path) -> Path:
    """Render the synthetic slide once into ``workdir`` (level 0 rendered, coarser levels by 2x2 means)."""
    import dask
    import dask.array as da
    import spatialdata as sd

    import stpredict as stp
    from stpredict._image import image_levels, replace_levels

    name = f"synthetic-{size}-{mpp:g}"
    path = workdir / f"{name}.zarr"
    done = path.with_suffix(".done")
    if done.exists() and path.exists():
        return path
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    _log(f"[prepare] rendering the {size}² synthetic slide ({mpp:g} µm/px) once into {path} ...")
    sdata = stp.datasets.synthetic(image_size=size, microns_per_pixel=mpp, n_genes=5, seed=0)
    tree = sdata.images["he"]
    names = sorted(tree.children, key=lambda n: int(n[5:]))
    raw = workdir / f"_{name}_level0.zarr"
    with dask.config.set(scheduler="threads"):
        image_levels(tree)[0].array.to_zarr(str(raw), overwrite=True)
    # the pyramid from level 0 (the procedural renderer would render each level again, supersampled)
    prev = da.from_zarr(str(raw))
    arrays = {"scale0": prev}
    for lvl_name in names[1:]:
        old = next(iter(tree[lvl_name].ds.data_vars.values()))
        h, w = int(old.sizes["y"]), int(old.sizes["x"])
        s = da.coarsen(np.sum, prev.astype(np.uint16), {1: 2, 2: 2}, trim_excess=True)
        lvl = ((s + 2) // 4).astype(np.uint8)[:, :h, :w].rechunk((3, 512, 512))
        arrays[lvl_name] = lvl
        prev = lvl
    replace_levels(tree, arrays, chunks=512)
    if path.exists():
        import shutil

        shutil.rmtree(path)
    with dask.config.set(scheduler="threads"):
        sdata.write(path)
    import shutil

    shutil.rmtree(raw, ignore_errors=True)
    sd.read_zarr(path)  # check that it reads back
    done.write_text("ok\n")
    _log(f"[prepare] written in {time.perf_counter() - t0:.0f} s")
    return path


def load_slide(args: argparse.Namespace, n_patches: int) -> dict:
    """Levels, ``n_patches`` window centres (spots in row order, repeated if the slide has fewer) and a label."""
    import stpredict as stp
    from stpredict._image import image_levels

    if args.slide == "synthetic":
        import spatialdata as sd

        size = args.image_size or _synthetic_size(n_patches, args.mpp)
        path = prepare_synthetic(size, args.mpp, args.workdir)
        sdata = sd.read_zarr(path)
        label = f"synthetic Visium {size}² px (zarr)"
    else:
        import _data

        sdata = _data.her2st((args.her2st_section,))[0]
        label = f"her2st {args.her2st_section} (in memory, read_st)"
    geo = stp.pp.spots(sdata)
    levels = image_levels(sdata.images[geo.image_key])
    c = geo.centers
    order = np.lexsort((c[:, 0], c[:, 1]))  # row order: neighbouring spots, as a whole slide reads them
    reps = math.ceil(n_patches / len(order))
    centers = c[np.tile(order, reps)[:n_patches]]
    return {
        "levels": levels,
        "centers": centers,
        "mpp_xy": geo.microns_per_pixel_xy,
        "label": f"{label}, {geo.microns_per_pixel:.3f} µm/px",
        "n_spots": len(c),
        "reps": reps,
    }


# ---------------------------------------------------------------------------------------------------------
# measurements
# ---------------------------------------------------------------------------------------------------------


def _sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_backbone(bb, dev, n: int, bs: int, warmup: int) -> float:
    """Patches/s of the backbone alone on pre-made input tensors (same shapes and settings as ``embed``)."""
    import torch

    from stpredict.models._device import autocast

    g = torch.Generator().manual_seed(0)
    x = torch.randn(bs, 3, bb.patch_px, bb.patch_px, generator=g).to(dev)
    if dev.type == "cuda":  # what TorchBackbone.preprocess hands the network
        x = x.contiguous(memory_format=torch.channels_last)
    sizes = [min(bs, n - s) for s in range(0, n, bs)]
    with torch.inference_mode(), autocast(dev):
        for _ in range(warmup):
            bb._forward(x)
        _sync(dev)
        t0 = time.perf_counter()
        for b in sizes:
            out = bb._forward(x[:b])
        _sync(dev)
        t = time.perf_counter() - t0
    assert out.shape == (sizes[-1], bb.dim)
    return n / t


def time_read(slide: dict, bb, dev, bs: int, warmup: int) -> float:
    """Patches/s of read + transform alone: ``PatchExtractor.batches`` and ``preprocess`` on the device."""
    import torch

    from stpredict.pp._patches import PatchExtractor

    read_um, patch_px = bb.input_spec(SIZE_UM)

    def extractor(centers):
        return PatchExtractor(slide["levels"], centers, slide["mpp_xy"], size_um=read_um, patch_px=patch_px)

    centers = slide["centers"]
    with torch.inference_mode():
        for _, batch in extractor(centers[: warmup * bs]).batches(bs):
            bb.preprocess(batch, dev)
        _sync(dev)
        t0 = time.perf_counter()
        ext = extractor(centers)  # a cold chunk cache, as in compute_embeddings
        for _, batch in ext.batches(bs):
            x = bb.preprocess(batch, dev)
        _sync(dev)
        t = time.perf_counter() - t0
    assert x.shape[1:] == (3, bb.patch_px, bb.patch_px)
    slide["plan"] = ext.plan
    return len(centers) / t


def time_e2e(slide: dict, bb, dev, bs: int, nw: int, warmup: int) -> float:
    """Patches/s of ``compute_embeddings`` (what ``stp.tl.embed`` runs), reading the slide each call."""
    from stpredict.tl._embedding_loop import compute_embeddings

    kw = {"patch_size_um": SIZE_UM, "device": dev, "batch_size": bs, "num_workers": nw, "progress": False}
    centers = slide["centers"]
    if warmup:
        compute_embeddings(slide["levels"], centers[: warmup * bs], slide["mpp_xy"], bb, **kw)
    _sync(dev)
    t0 = time.perf_counter()
    emb = compute_embeddings(slide["levels"], centers, slide["mpp_xy"], bb, **kw)
    _sync(dev)
    t = time.perf_counter() - t0
    assert emb.shape == (len(centers), bb.dim)
    assert np.isfinite(emb).all()
    return len(centers) / t


def measure(key: str, slide: dict, bb, dev, n: int, bs: int, warmup: int) -> float:
    """``backbone``, ``read`` or ``e2e<workers>``: patches/s."""
    if key == "backbone":
        return time_backbone(bb, dev, n, bs, warmup)
    if key == "read":
        return time_read(slide, bb, dev, bs, warmup)
    return time_e2e(slide, bb, dev, bs, int(key[3:]), warmup)


# ---------------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------------


def _device_name(dev) -> str:
    import torch

    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)}, {os.cpu_count()} CPU cores"
    return f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def _precision(dev) -> str:
    import torch

    from stpredict import settings

    if dev.type == "cuda" and settings.autocast:
        dtype = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return f"{dtype} autocast, channels_last"
    if dev.type == "cuda":
        return "fp32, channels_last"
    return "fp32"


def write_section(path: Path, key: str, body: str) -> None:
    """Replace (or add) the section ``key`` of the results file, keeping the other devices' sections."""
    mark = "<!-- embed.py: {} -->"
    sections: dict[str, str] = {}
    if path.exists():
        parts = re.split(r"^<!-- embed\.py: (.+?) -->\n", path.read_text(), flags=re.MULTILINE)
        sections = {k: v.strip() + "\n" for k, v in zip(parts[1::2], parts[2::2], strict=True)}
    sections[key] = body.strip() + "\n"
    head = (
        "# Embedding throughput (`benchmarks/embed.py`)\n\n"
        "End-to-end `compute_embeddings` (read + transform + backbone) against the backbone alone on pre-made\n"
        "tensors, same run. One section per device and slide; each run replaces its own.\n\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(head + "\n".join(f"{mark.format(k)}\n{v}" for k, v in sorted(sections.items())))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, auto (default)")
    p.add_argument("--models", default=MODELS, help=f"comma-separated timm names (default {MODELS})")
    p.add_argument("--n-patches", type=int, default=None, help="patches per timed pass (default 4096; 128 on CPU)")
    p.add_argument("--batch-size", type=int, default=None, help="default: stpredict.settings.batch_size")
    p.add_argument(
        "--num-workers",
        default=None,
        help="comma-separated DataLoader workers of the end-to-end path, one row each (default 0; '0,8' on CUDA)",
    )
    p.add_argument("--warmup", type=int, default=None, help="untimed batches first (default 3; 1 on CPU)")
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="repeat the measurements (order reversed every other time), keep the best",
    )
    p.add_argument("--slide", choices=["synthetic", "her2st"], default="synthetic")
    p.add_argument("--image-size", type=int, default=None, help="synthetic slide side in px (default: fits n-patches)")
    p.add_argument("--mpp", type=float, default=0.5, help="µm/px of the synthetic slide (default 0.5)")
    p.add_argument("--her2st-section", default="C2", help="her2st section (C2..C6)")
    p.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "stpredict_bench_embed")
    p.add_argument(
        "--out", type=Path, default=RESULTS, help=f"results file (default {RESULTS.relative_to(HERE.parent)})"
    )
    args = p.parse_args()

    import timm
    import torch

    import stpredict as stp
    from stpredict.models._device import resolve_device
    from stpredict.models.backbones import get_backbone

    t_start = time.perf_counter()
    load_start = os.getloadavg()[0]
    dev = resolve_device(args.device)
    on_gpu = dev.type == "cuda"
    n = args.n_patches or (4096 if on_gpu else 128)
    bs = args.batch_size or stp.settings.batch_size
    warmup = args.warmup if args.warmup is not None else (3 if on_gpu else 1)
    workers_arg = args.num_workers or (f"0,{min(8, max(1, (os.cpu_count() or 2) - 2))}" if on_gpu else "0")
    workers = [int(w) for w in workers_arg.split(",") if w.strip()]
    models = [m.strip() for m in args.models.split(",") if m.strip()]

    slide = load_slide(args, n)
    _log(f"[slide] {slide['label']}: {slide['n_spots']} spots, {n} patches (x{slide['reps']} repeats of the spots)")
    rows = []
    for name in models:
        bb = get_backbone(name, pretrained=False).to(dev)
        best: dict[str, float] = {}
        for r in range(args.repeats):
            keys = ["backbone", "read", *(f"e2e{nw}" for nw in workers)]
            if r % 2:  # alternate the order between repeats
                keys = keys[::-1]
            rates = {k: measure(k, slide, bb, dev, n, bs, warmup) for k in keys}
            _log(f"[{name}] repeat {r + 1}: " + ", ".join(f"{k} {v:.1f}/s" for k, v in rates.items()))
            best = {k: max(v, best.get(k, 0.0)) for k, v in rates.items()}
        plan = slide["plan"]
        read = f"{plan.win_x}x{plan.win_y} px (level {plan.level}) -> {bb.patch_px} px"
        for nw in workers:
            rows.append(
                {
                    "model": name,
                    "dim": bb.dim,
                    "read": read,
                    "workers": nw,
                    "backbone": best["backbone"],
                    "read_rate": best["read"],
                    "e2e": best[f"e2e{nw}"],
                }  # fmt: skip
            )
        del bb
        if on_gpu:
            torch.cuda.empty_cache()

    # ---- report
    load_end = os.getloadavg()[0]
    lines = [
        f"## {dev.type.upper()}, {args.slide}: {_device_name(dev)}",
        "",
        f"{dt.date.today().isoformat()}; {slide['label']} ({slide['n_spots']} spots; {n} patches = spots x"
        f"{slide['reps']}); {SIZE_UM:g} µm windows; {_precision(dev)}; batch {bs}; {warmup} warm-up batches;"
        f" best of {args.repeats}; torch {torch.__version__}, timm {timm.__version__}, random weights.",
        f"1-min load average {load_start:.1f} at the start, {load_end:.1f} at the end"
        + (" (a shared machine: timings are noisy)." if not on_gpu else "."),
        "",
        _fmt_row(
            [
                "model",
                "read",
                "workers",
                "backbone alone (patches/s)",
                "read + transform (patches/s)",
                "end-to-end (patches/s)",
                "ratio end-to-end / backbone",
            ]
        ),  # fmt: skip
        _fmt_row(["---"] * 7),
    ]
    for x in rows:
        lines.append(
            _fmt_row(
                [
                    f"{x['model']} ({x['dim']})",
                    x["read"],
                    str(x["workers"]),
                    f"{x['backbone']:.1f}",
                    f"{x['read_rate']:.1f}",
                    f"{x['e2e']:.1f}",
                    f"{x['e2e'] / x['backbone']:.2f}",
                ]
            )  # fmt: skip
        )
    lines += [
        "",
        "backbone alone: the module on random tensors already on the device (same batches, shape, autocast and",
        "memory format). read + transform: PatchExtractor.batches + TorchBackbone.preprocess in the main process.",
        "end-to-end: compute_embeddings, as stp.tl.embed runs it; workers = its DataLoader num_workers.",
    ]
    body = "\n".join(lines)
    print()
    print(body)
    key = f"{dev.type}-{args.slide}"
    write_section(args.out, key, body)
    print()
    print(f"(written to {args.out}, section {key!r}; benchmark wall time {time.perf_counter() - t_start:.0f} s)")
    print()
    print(f"### Ratios (end-to-end / backbone alone; goal >= 0.9 on a GPU), {dev.type}")
    print()
    for x in rows:
        print(f"{x['model']}, {x['workers']} workers: {x['e2e'] / x['backbone']:.2f} "
              f"({x['e2e']:.1f} vs {x['backbone']:.1f} patches/s)")  # fmt: skip


if __name__ == "__main__":
    warnings.filterwarnings("ignore")
    main()
