"""Cohort embedding: ``stp.tl.embed_cohort`` on a Dask ``LocalCluster`` against the same cohort serially, same run.

Eight synthetic slides (``stp.datasets.synthetic``, Visium layout, different seeds) are materialised once into
zarr stores under ``--workdir`` (kept between runs, so no rendering is timed). Each measurement works on fresh
copies of those stores (no cached features), in its own subprocess:

- ``serial``: ``embed_cohort(stores)`` in one process, default threads (what a user's loop gets: torch and
  Dask's chunk reads use every core already);
- ``serial_1thread``: the same with one thread (torch, BLAS, Dask synchronous), as each worker runs;
- ``cluster``: ``embed_cohort(stores, client=Client(LocalCluster(n_workers, threads_per_worker=1)))``; the
  cluster is started before the clock (its start-up is reported apart); the workers' first imports of
  stpredict happen inside the timed run, as they would for a user;
- ``rerun``: the same call again on the same stores, which now hold the features (every slide ``cached``);
- ``warm``: the same cluster on fresh copies: the workers have imported everything (a long cohort's case).

- ``cross_validate``: leave-one-section-out over the same stores (their features cached by then) with
  ``--cv-model``, serially in the ``serial`` process and with ``client=`` on the warm cluster (one task per fold).

Peak memory is ``ru_maxrss`` of the process (serial) and of each worker (cluster). Ratios are printed last:
speed-up serial / cluster, cold and warm (goal >= 1.6 with 2 workers on 2 cores), serial 1 thread / warm
cluster (how well the workers share the cores) and rerun / first run (goal < 5 %).

    python benchmarks/cohort.py                      # 8 slides of 3,000² px at 0.5 µm/px, ~3 min on 2 cores
    python benchmarks/cohort.py --image-size 1500 --n-slides 4
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _peak_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _make_stores(args: argparse.Namespace) -> list[Path]:
    import stpredict as stp

    root = Path(args.workdir) / f"pristine_{args.image_size}_{args.microns_per_pixel}"
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(args.n_slides):
        p = root / f"slide{i}.zarr"
        if not (p / "zarr.json").exists():
            shutil.rmtree(p, ignore_errors=True)
            sd = stp.datasets.synthetic(
                image_size=args.image_size, microns_per_pixel=args.microns_per_pixel, n_genes=20, seed=i
            )
            sd.write(p)
        out.append(p)
    return out


def _copies(pristine: list[Path], where: Path) -> list[str]:
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    out = []
    for p in pristine:
        shutil.copytree(p, where / p.name)
        out.append(str(where / p.name))
    return out


def _measure(mode: str, stores: list[str], args: argparse.Namespace) -> dict:
    """Run in a subprocess: one mode, timings and peak memory as JSON."""
    import stpredict as stp

    out: dict = {"mode": mode}
    base = _peak_mib()
    if mode.startswith("serial"):
        if mode == "serial_1thread":
            import dask
            import torch

            torch.set_num_threads(1)
            dask.config.set(scheduler="synchronous")
        t0 = time.perf_counter()
        st = stp.tl.embed_cohort(stores, args.backbone, progress=False)
        out["seconds"] = time.perf_counter() - t0
        out["peak_mib"] = _peak_mib()
        out["peak_mib_over_imports"] = out["peak_mib"] - base
        if mode == "serial":
            out["cv_seconds"], out["cv_pcc"] = _cross_validate(stores, args, None)
    else:
        from distributed import Client, LocalCluster

        t0 = time.perf_counter()
        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, dashboard_address=":0")
        client = Client(cluster)
        out["cluster_start_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        st = stp.tl.embed_cohort(stores, args.backbone, client=client, progress=False)
        out["seconds"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = stp.tl.embed_cohort(stores, args.backbone, client=client, progress=False)
        out["rerun_seconds"] = time.perf_counter() - t0
        out["rerun_status"] = again["status"].value_counts().to_dict()
        t0 = time.perf_counter()
        warm = stp.tl.embed_cohort(args.warm_stores, args.backbone, client=client, progress=False)
        out["warm_seconds"] = time.perf_counter() - t0
        out["warm_status"] = warm["status"].value_counts().to_dict()
        out["cv_seconds"], out["cv_pcc"] = _cross_validate(args.warm_stores, args, client)
        out["worker_peak_mib"] = sorted(client.run(_peak_mib).values())
        client.close()
        cluster.close()
    out["status"] = st["status"].value_counts().to_dict()
    out["n_spots"] = int(st["n_spots"].sum())
    out["slide_seconds"] = [round(s, 2) for s in st["seconds"]]
    return out


def _cross_validate(stores: list[str], args: argparse.Namespace, client) -> tuple[float, float]:
    """Seconds and mean PCC of ``cross_validate(stores, --cv-model, protocol="loso")``, here or on ``client``."""
    import stpredict as stp

    t0 = time.perf_counter()
    res = stp.tl.cross_validate(
        stores, args.cv_model, protocol="loso", max_epochs=args.cv_epochs, client=client, progress=False
    )
    return time.perf_counter() - t0, res.summary()["pcc_mean"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-slides", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=3000)
    ap.add_argument("--microns-per-pixel", type=float, default=0.5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--backbone", default="handcrafted")
    ap.add_argument("--cv-model", default="ridge", help="model of the cross_validate timing")
    ap.add_argument("--cv-epochs", type=int, default=None, help="its max_epochs (iterative models)")
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "stpredict_bench_cohort"))
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        mode, stores, args.warm_stores = json.loads(args._child)
        print("RESULT " + json.dumps(_measure(mode, stores, args)))
        return
    t0 = time.perf_counter()
    pristine = _make_stores(args)
    print(f"{args.n_slides} stores of {args.image_size}² px ready in {time.perf_counter() - t0:.1f} s", flush=True)
    results = {}
    for mode in ("serial", "serial_1thread", "cluster"):
        stores = _copies(pristine, Path(args.workdir) / f"run_{mode}")
        warm = _copies(pristine, Path(args.workdir) / "run_warm") if mode == "cluster" else []
        argv = [sys.executable, __file__, *sys.argv[1:], "--_child", json.dumps([mode, stores, warm])]
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        if mode == "serial_1thread":
            env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        proc = subprocess.run(argv, capture_output=True, text=True, env=env)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not line:
            sys.exit(f"{mode} failed:\n{proc.stderr[-4000:]}")
        results[mode] = json.loads(line[0][7:])
        print(json.dumps(results[mode]), flush=True)
    s, s1, c = results["serial"], results["serial_1thread"], results["cluster"]
    print()
    print("| run | seconds | slides | peak MiB |")
    print("| --- | --- | --- | --- |")
    print(f"| serial (1 process, default threads) | {s['seconds']:.1f} | {s['status']} | {s['peak_mib']:.0f} |")
    print(f"| serial, 1 thread (as each worker runs) | {s1['seconds']:.1f} | {s1['status']} | {s1['peak_mib']:.0f} |")
    workers = " / ".join(f"{m:.0f}" for m in c["worker_peak_mib"])
    print(f"| LocalCluster {args.workers}×1 thread | {c['seconds']:.1f} | {c['status']} | {workers} (per worker) |")
    print(f"| same cluster, fresh copies (workers warm) | {c['warm_seconds']:.1f} | {c['warm_status']} | |")
    print(f"| rerun, all cached | {c['rerun_seconds']:.2f} | {c['rerun_status']} | |")
    print(f"\ncluster start-up (not in the timings): {c['cluster_start_s']:.1f} s; spots: {s['n_spots']}")
    print(f"speed-up serial / cluster: {s['seconds'] / c['seconds']:.2f} (goal >= 1.6)")
    print(f"speed-up serial / warm cluster: {s['seconds'] / c['warm_seconds']:.2f}")
    print(
        f"speed-up serial 1 thread / warm cluster: {s1['seconds'] / c['warm_seconds']:.2f} (how the workers share the cores)"
    )
    print(f"rerun / first cluster run: {100 * c['rerun_seconds'] / c['seconds']:.1f} % (goal < 5 %)")
    print(
        f"cross_validate loso ({args.cv_model}, {args.n_slides} folds, features cached): serial {s['cv_seconds']:.1f} s, "
        f"client {c['cv_seconds']:.1f} s, speed-up {s['cv_seconds'] / c['cv_seconds']:.2f}; "
        f"mean PCC {s['cv_pcc']:.4f} / {c['cv_pcc']:.4f}"
    )


if __name__ == "__main__":
    main()
