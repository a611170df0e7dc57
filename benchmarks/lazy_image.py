"""A huge lazy image: what ``stp.pp.spots`` (validation) and ``stp.tl.embed`` compute of it, in time and memory.

The slide is a ``--size``² RGB uint8 dask array whose chunks (``--chunk``² px) are generated on demand, each a
deterministic tissue-like texture seeded by its position (``dask.array.map_blocks``; no level-0 array is ever
held in memory). Every call of the generator is counted, so the benchmark knows which level-0 chunks each step
computed. ``--spots`` Visium-like spots (55 µm, 100 µm hexagonal pitch, 0.5 µm/px) sit in the middle of the slide,
with a small counts table. Each configuration runs in its own subprocess (peaks do not mix):

- ``from_arrays``: ``stp.io.from_arrays(image, coords, counts, 0.5, 55)`` with the dask image (what a user with
  a lazily opened slide calls): it builds the pyramid with ``Image2DModel.parse(..., scale_factors=...)``, whose
  coarse levels are computed lazily from level 0;
- ``parse``: the user builds the SpatialData directly: ``Image2DModel.parse(image, scale_factors=[2, ...])``
  (same chunks as the generator), ``ShapesModel``, ``TableModel``;
- ``stored``: a pyramid whose coarse levels do not derive from level 0 (as read from a zarr store or a pyramidal
  TIFF): each level has its own generator, and only level-0 chunks are counted;
- ``before`` (the baseline, in the same run): the ``from_arrays`` slide validated the way the image check did
  before (the coarsest level read whole, which on a lazily derived pyramid computes all of level 0); no
  embedding. ``--no-before`` skips it (it takes minutes at 50,000²).

Per step (build, validation = ``stp.pp.spots``, embedding = ``stp.tl.embed(sdata, "handcrafted")``) the table
gives the wall time, the peak RSS so far (``ru_maxrss``, and the same over the process after imports) and the
level-0 chunks computed (distinct, and computations counting repeats). "touched" is the number of level-0
chunks that what the handcrafted backbone reads around each spot overlaps (its 336 µm context of the 112 µm
window, read at 1 µm/px, i.e. from level 1); "need" is the number a chunk-wise reader must compute for what the
embedding reads (those windows, or the rectangle holding them when it computes a dense feature map, which it
does when spots are close together): the chunks of the read level it overlaps, with their level-0
dependencies culled from the dask graph (a coarse chunk of a lazily derived pyramid covers 2^level times its
side of level 0). Embedding should compute those and no more; validation samples 16 windows of 8 px (at most
4 chunks each, of the sampled level).

    python benchmarks/lazy_image.py                     # 50,000², 2,000 spots, chunks of 2,000 px (625 chunks)
    python benchmarks/lazy_image.py --quick             # 12,000², 150 spots, chunks of 1,000 px: seconds
    python benchmarks/lazy_image.py --size 20000 --configs from_arrays,stored --no-before

The table is printed and written to ``benchmarks/results/lazy_image.md``; the ratios against ``before`` last.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "lazy_image.md"
MPP = 0.5
SPOT_UM = 55.0
PITCH_UM = 100.0
WINDOW_UM = 112.0
CONFIGS = ("from_arrays", "parse", "stored", "before")

#: Level-0 chunk computations, by chunk position (the generator adds to it; a lock keeps threads honest).
CALLS: dict[tuple[int, int], int] = {}
#: Dask name of the level-0 generator of this process's slide.
GENERATOR: list[str] = []
_LOCK = threading.Lock()


def _texture(y0: int, x0: int, h: int, w: int, size: int, seed: int, step: int = 1) -> np.ndarray:
    """A deterministic H&E-like ``(3, h, w)`` uint8 tile at level-0 pixel ``(y0, x0)`` of a ``size``² slide.

    Pink stroma with purple nuclei inside an ellipse of tissue, near-white glass outside; ``step`` > 1 renders
    a coarse level (every ``step``-th level-0 pixel), so that levels agree without deriving from each other.
    """
    rng = np.random.default_rng([seed, y0, x0, step])
    yy = (y0 + step * np.arange(h, dtype=np.float32))[:, None]
    xx = (x0 + step * np.arange(w, dtype=np.float32))[None, :]
    c = size / 2
    tissue = ((yy - c) / (0.42 * size)) ** 2 + ((xx - c) / (0.45 * size)) ** 2 < 1
    cell = max(1, 16 // step)
    coarse = rng.random((h // cell + 1, w // cell + 1), dtype=np.float32)
    blobs = np.repeat(np.repeat(coarse, cell, axis=0), cell, axis=1)[:h, :w]
    nuclei = (blobs > 0.82) & tissue
    out = np.empty((3, h, w), dtype=np.uint8)
    grain = rng.integers(0, 12, size=(h, w), dtype=np.uint8)
    for i, (glass, stroma, nucleus) in enumerate(((238, 226, 88), (236, 170, 60), (240, 205, 140))):
        ch = np.where(tissue, stroma, glass).astype(np.uint8)
        ch[nuclei] = nucleus
        np.subtract(ch, grain, out=out[i], casting="unsafe")
    return out


def lazy_slide(size: int, chunk: int, seed: int = 0, step: int = 1, count: bool = True):
    """A ``(3, size // step, size // step)`` dask array of :func:`_texture` tiles, generated as read."""
    import dask.array as da

    n = size // step

    def block(block_info=None):
        info = block_info[None]
        (_, _), (ys, ye), (xs, xe) = info["array-location"]
        if count:
            with _LOCK:
                key = tuple(info["chunk-location"][1:])
                CALLS[key] = CALLS.get(key, 0) + 1
        return _texture(ys * step, xs * step, ye - ys, xe - xs, size, seed, step)

    chunks = ((3,), _axis_chunks(n, chunk), _axis_chunks(n, chunk))
    arr = da.map_blocks(block, dtype=np.uint8, chunks=chunks, meta=np.empty((0, 0, 0), np.uint8))
    if count:
        GENERATOR[:] = [arr.name]
    return arr


def _axis_chunks(n: int, chunk: int) -> tuple[int, ...]:
    return tuple(min(chunk, n - s) for s in range(0, n, chunk))


def spot_centres(size: int, n: int) -> np.ndarray:
    """``n`` centres (x, y level-0 px) on a Visium hexagonal lattice (100 µm pitch), centred on the slide."""
    pitch = PITCH_UM / MPP
    cols = int(np.ceil(np.sqrt(n * np.sqrt(3) / 2)))
    rows = int(np.ceil(n / cols))
    xy = []
    for r in range(rows):
        for q in range(cols):
            xy.append(((q + 0.5 * (r % 2)) * pitch, r * pitch * np.sqrt(3) / 2))
    xy = np.asarray(xy[:n])
    xy += size / 2 - (xy.max(axis=0) + xy.min(axis=0)) / 2
    if xy.min() < WINDOW_UM / MPP or xy.max() > size - WINDOW_UM / MPP:
        msg = f"{n} spots do not fit a {size}² px slide at {MPP} µm/px: pass a larger --size or fewer --spots."
        raise SystemExit(msg)
    return xy


def touched_chunks(xy: np.ndarray, chunk: int, size: int, read_um: float) -> set[tuple[int, int]]:
    """The level-0 chunks that windows of ``read_um`` around the spots overlap."""
    half = read_um / MPP / 2
    out = set()
    for x, y in xy:
        x0, x1 = int(max(0, np.floor(x - half))) // chunk, int(min(size - 1, np.ceil(x + half))) // chunk
        y0, y1 = int(max(0, np.floor(y - half))) // chunk, int(min(size - 1, np.ceil(y + half))) // chunk
        out.update((i, j) for i in range(y0, y1 + 1) for j in range(x0, x1 + 1))
    return out


def _read_um() -> float:
    """Side of what the handcrafted backbone reads around a spot: its context view of the 112 µm window."""
    from stpredict.models.backbones import get_backbone

    return float(get_backbone("handcrafted").input_spec(WINDOW_UM)[0])


def needed_chunks(sdata, xy: np.ndarray) -> tuple[set, int, str]:
    """Level-0 chunks that the embedding must compute, reading the level it reads chunk by chunk.

    The embedding reads either one window per spot (the 336 µm context of the 112 µm window, at 1 µm/px) or,
    when cheaper (``dense=None``, spots close together), a dense feature map over the cell-aligned rectangle
    that holds every window, with a 16 µm margin for the filters. The chunks of the read level that these
    rectangles overlap are culled from the level's dask graph and the level-0 generator's tasks among their
    dependencies listed (none when the level does not derive from level 0). Returns their positions, the read
    level and the path (``"windows"`` or ``"dense map"``).
    """
    from dask.optimization import cull

    from stpredict._image import image_levels
    from stpredict.models.backbones._cellmap import map_bounds
    from stpredict.pp._patches import PatchExtractor
    from stpredict.tl._dense import CELL_UM

    read_um = _read_um()
    ex = PatchExtractor(image_levels(sdata.images["he"]), xy, (MPP, MPP), size_um=read_um, patch_px=round(read_um))
    lvl = ex.levels[ex.level]
    h, w = lvl.shape_yx
    path = sdata.tables["table"].uns["stpredict"]["embeddings"]["X_handcrafted"].get("path", "windows")
    if path == "dense map":
        lo, hi = map_bounds(xy * MPP, read_um / 2, CELL_UM)
        (x0, y0), (x1, y1) = (lo - 16) / MPP, (hi + 16) / MPP  # level-0 px
        rects = [(x0 / lvl.factor_x, y0 / lvl.factor_y, x1 / lvl.factor_x, y1 / lvl.factor_y)]
    else:
        rects = [(x, y, x + ex.plan.win_x, y + ex.plan.win_y) for x, y in zip(ex._x0, ex._y0, strict=True)]
    keys = set()
    for x0, y0, x1, y1 in rects:
        ys = np.searchsorted(ex._chunks_y, [max(y0, 0), min(y1, h) - 1], side="right") - 1
        xs = np.searchsorted(ex._chunks_x, [max(x0, 0), min(x1, w) - 1], side="right") - 1
        keys.update((ky, kx) for ky in range(ys[0], ys[1] + 1) for kx in range(xs[0], xs[1] + 1))
    arr = ex._array
    dsk, _ = cull(dict(arr.__dask_graph__()), [(arr.name, 0, ky, kx) for ky, kx in keys])
    gen = {tuple(k[2:]) for k in dsk if isinstance(k, tuple) and GENERATOR and k[0] == GENERATOR[0]}
    return gen, ex.level, path


def _peak_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _counts(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.poisson(rng.gamma(2.0, 2.0, size=(1, 30)), size=(n, 30)).astype(np.int32)


def build(config: str, args: argparse.Namespace, xy: np.ndarray):
    """The SpatialData of ``config``, built the way a user would (nothing computed, if all goes well)."""
    import stpredict as stp

    img = lazy_slide(args.size, args.chunk, args.seed)
    counts = _counts(len(xy), args.seed)
    if config in ("from_arrays", "before"):
        return stp.io.from_arrays(img, xy, counts, MPP, SPOT_UM)
    import anndata as ad
    import pandas as pd
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity, Scale

    factors = []
    side = args.size
    while side // 2 >= 256:
        factors.append(2)
        side //= 2
    tf = {"global": Identity(), "micrometers": Scale([MPP, MPP], axes=("x", "y"))}
    image = Image2DModel.parse(
        img, dims=("c", "y", "x"), c_coords=["r", "g", "b"], scale_factors=factors, transformations=tf
    )
    if config == "stored":
        import xarray as xr

        for i in range(1, len(factors) + 1):
            name = f"scale{i}"
            var = next(iter(image[name].ds.data_vars))
            old = image[name].ds[var]
            step = 2**i
            assert old.shape[1:] == (args.size // step,) * 2, old.shape
            coarse = lazy_slide(args.size, args.chunk, args.seed, step=step, count=False)
            image[name] = xr.Dataset({var: old.copy(data=coarse)})
    n = len(xy)
    shapes = ShapesModel.parse(
        xy, geometry=0, radius=np.full(n, SPOT_UM / MPP / 2), index=np.arange(n), transformations=tf
    )
    obs = pd.DataFrame(
        {"region": pd.Categorical(["spots"] * n), "spot_id": np.arange(n)}, index=[f"s{i}" for i in range(n)]
    )
    adata = ad.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(counts.shape[1])]))
    table = TableModel.parse(adata, region="spots", region_key="region", instance_key="spot_id")
    return SpatialData(images={"he": image}, shapes={"spots": shapes}, tables={"table": table})


def measure(config: str, args: argparse.Namespace) -> dict:
    """One configuration, in this (fresh) process: per-step seconds, peak RSS and level-0 chunks computed."""
    import dask

    import stpredict as stp

    if args.threads:
        dask.config.set(num_workers=args.threads)
    xy = spot_centres(args.size, args.spots)
    base = _peak_mib()
    steps = []
    stop = threading.Event()
    sampled = [0.0]

    def sample() -> None:  # RSS now and then, for the peak within a step (ru_maxrss is cumulative)
        try:
            import psutil
        except ImportError:
            return
        proc = psutil.Process()
        while not stop.wait(0.05):
            sampled[0] = max(sampled[0], proc.memory_info().rss / 2**20)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()

    def step(name: str, fn):
        before = dict(CALLS)
        sampled[0] = 0.0
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
        new = {k: v - before.get(k, 0) for k, v in CALLS.items() if v > before.get(k, 0)}
        steps.append({
            "step": name,
            "seconds": seconds,
            "peak_mib": _peak_mib(),
            "step_rss_mib": sampled[0] or None,
            "chunks": len(new),
            "computations": sum(new.values()),
        })  # fmt: skip
        return out

    sdata = step("build", lambda: build(config, args, xy))
    if config == "before":

        def old_check():
            from stpredict._image import image_levels

            arr = image_levels(sdata.images["he"])[-1].array
            rgb = np.asarray(arr[:3].compute())  # what check_rgb read before: the coarsest level, whole
            assert rgb.min() < rgb.max()
            return stp.pp.spots(sdata, check_image=False)

        step("validation", old_check)
    else:
        step("validation", lambda: stp.pp.spots(sdata))
        sampled_chunks = set(CALLS)
        before_embed = dict(CALLS)
        step("embedding", lambda: stp.tl.embed(sdata, "handcrafted", progress=False))
        embedded = {k for k, v in CALLS.items() if v > before_embed.get(k, 0)}
        emb = sdata.tables["table"].obsm["X_handcrafted"]
        assert emb.shape[0] == len(xy)
        assert np.isfinite(emb).all()
    stop.set()
    n0 = int(np.ceil(args.size / args.chunk)) ** 2
    needed, level, path, beyond = None, None, None, None
    if config != "before":
        need, level, path = needed_chunks(sdata, xy)
        needed, beyond = len(need), len(embedded - need - sampled_chunks)
    return {
        "needed": needed,
        "beyond": beyond,
        "read_level": level,
        "path": path,
        "config": config,
        "steps": steps,
        "imports_mib": base,
        "level0_chunks": n0,
        "touched": len(touched_chunks(xy, args.chunk, args.size, _read_um())),
        "computed": len(CALLS),
        "computations": sum(CALLS.values()),
    }


def _run_child(config: str, args: argparse.Namespace, argv: list[str]) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--_child", config]
    import stpredict

    # the child imports the same stpredict as this process (a source tree, not an installed copy)
    path = [str(Path(stpredict.__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": os.pathsep.join(p for p in path if p)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not line:
        msg = f"{config} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
        raise RuntimeError(msg)
    return json.loads(line[-1][7:])


def table(results: list[dict], args: argparse.Namespace) -> str:
    """The results as a markdown table, one row per configuration and step."""
    rows = [
        "| config | step | seconds | peak RSS MiB (over imports) | step's sampled RSS MiB | level-0 chunks computed "
        "(computations) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        for s in r["steps"]:
            sampled = f"{s['step_rss_mib']:.0f}" if s.get("step_rss_mib") else "–"
            rows.append(
                f"| {r['config']} | {s['step']} | {s['seconds']:.2f} | {s['peak_mib']:.0f} "
                f"({s['peak_mib'] - r['imports_mib']:.0f}) | {sampled} | {s['chunks']} ({s['computations']}) |"
            )
        total = sum(s["seconds"] for s in r["steps"])
        rows.append(
            f"| {r['config']} | **total** | {total:.2f} | {max(s['peak_mib'] for s in r['steps']):.0f} | | "
            f"**{r['computed']} of {r['level0_chunks']}** ({r['computations']}); windows touch {r['touched']}"
            + (
                f", need {r['needed']} ({r['path']}, level {r['read_level']}); embedding computed {r['beyond']} "
                "more (not sampled by validation)"
                if r["needed"] is not None
                else ""
            )
            + " |"
        )
    return "\n".join(rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=50_000, help="side of level 0 in px (default 50,000)")
    ap.add_argument("--spots", type=int, default=2_000, help="number of spots (default 2,000)")
    ap.add_argument("--chunk", type=int, default=2_000, help="side of the generated chunks (default 2,000)")
    ap.add_argument("--configs", default="from_arrays,parse,stored,before", help=f"any of {','.join(CONFIGS)}")
    ap.add_argument("--no-before", action="store_true", help="skip the baseline (the old image check)")
    ap.add_argument("--quick", action="store_true", help="12,000² px, 150 spots, chunks of 1,000 px (seconds)")
    ap.add_argument("--threads", type=int, default=None, help="dask threads (default: dask's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per configuration")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.size, args.spots, args.chunk = 12_000, 150, 1_000
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the benchmark (each configuration in a subprocess); returns the results."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args._child:
        print("RESULT " + json.dumps(measure(args._child, args)), flush=True)
        return []
    configs = [c for c in args.configs.split(",") if c and not (args.no_before and c == "before")]
    bad = sorted(set(configs) - set(CONFIGS))
    if bad:
        raise SystemExit(f"unknown --configs {bad}; choose from {', '.join(CONFIGS)}")
    spot_centres(args.size, args.spots)  # fits, or says so now
    results = []
    for config in configs:
        t0 = time.perf_counter()
        results.append(_run_child(config, args, argv))
        print(f"{config}: {time.perf_counter() - t0:.1f} s  {json.dumps(results[-1])}", file=sys.stderr, flush=True)
    head = (
        f"{args.size:,}² px RGB uint8 lazy image (chunks of {args.chunk} px), {args.spots:,} spots; "
        f"{dt.date.today()}, {os.cpu_count()} cores"
    )
    text = f"{head}\n\n{table(results, args)}\n"
    by = {r["config"]: r for r in results}
    if "before" in by:
        old = by["before"]["steps"][1]
        lines = []
        for r in results:
            if r["config"] != "before":
                new = r["steps"][1]
                lines.append(
                    f"- {r['config']}: validation {new['seconds']:.2f} s / {old['seconds']:.1f} s before "
                    f"(×{new['seconds'] / old['seconds']:.4f}); level-0 chunks {new['chunks']} / {old['chunks']}"
                )
        text += "\nAgainst the old image check (same run):\n" + "\n".join(lines) + "\n"
    print(text)
    if not args.quick:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return results


if __name__ == "__main__":
    main()
