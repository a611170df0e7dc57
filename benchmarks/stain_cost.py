"""Cost of stain normalisation: the same work with ``stain="none"`` and ``stain="macenko"``, in the same process.

Two paths, each run once per stain option (the options alternate, ``--repeats`` times; the fastest run is kept):

- ``demo``: ``stp.tl.fit(sdata, "ridge", stain=...)``, ``stp.tl.predict`` with that model and
  ``stp.tl.superresolve(grid="ps4")`` with it, on a fresh copy of the embedded demo ``stp.datasets.mob()``;
- ``cv``: ``stp.tl.cross_validate(slides, "ridge", protocol=..., stain=...)`` on the four mob sections of
  ``../shared/data`` (``loso``, and ``lopo`` with the two mice of ``metaData.csv``), or on her2st (``--cv-data``).

One untimed demo run comes first (imports). Kept stain estimates and fits (:func:`stpredict.tl._transfer.clear_stain_estimates`, ``stpredict.tl._reuse.clear_fits``) are
cleared before each run, so every run pays what a first call pays. Reported: wall and CPU seconds of each run, the
seconds spent embedding (``CVResult.params["embed_seconds"]``) and the ratio macenko / none; printed as a markdown
table. On a shared machine wall time is noisy: compare the CPU seconds too.

    python benchmarks/stain_cost.py                       # demo and mob loso/lopo, a few minutes on 2 cores
    python benchmarks/stain_cost.py --paths demo --repeats 3
    python benchmarks/stain_cost.py --paths cv --cv-data her2st --protocols loso
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

STAINS = ("none", "macenko")


def _fresh() -> None:
    from stpredict.tl import _transfer

    clear = getattr(_transfer, "clear_stain_estimates", None)  # absent before the estimates were kept
    if clear is not None:
        clear()
    from stpredict.tl._reuse import clear_fits

    clear_fits()


def demo_run(stain: str) -> dict:
    """fit + predict + superresolve(ps4) of ridge on a fresh demo slide; seconds of each step."""
    import stpredict as stp

    _fresh()
    sdata = stp.datasets.mob()
    out = {}
    w0, c0 = time.perf_counter(), time.process_time()
    t = time.perf_counter()
    model = stp.tl.fit(sdata, "ridge", stain=stain, progress=False)
    out["fit s"] = time.perf_counter() - t
    t = time.perf_counter()
    stp.tl.predict(sdata, model, progress=False)
    out["predict s"] = time.perf_counter() - t
    t = time.perf_counter()
    stp.tl.superresolve(sdata, model, grid="ps4", progress=False)
    out["superresolve s"] = time.perf_counter() - t
    out["wall s"], out["cpu s"] = time.perf_counter() - w0, time.process_time() - c0
    return out


def cv_run(stain: str, slides: list, protocol: str, groups: list | None) -> dict:
    """cross_validate of ridge; seconds, embedding seconds and mean PCC."""
    import stpredict as stp

    _fresh()
    w0, c0 = time.perf_counter(), time.process_time()
    res = stp.tl.cross_validate(slides, "ridge", protocol=protocol, groups=groups, stain=stain, progress=False)
    return {
        "wall s": time.perf_counter() - w0,
        "cpu s": time.process_time() - c0,
        "embed s": float(res.params["embed_seconds"]),
        "pcc": float(res.folds["pearson_mean"].mean()),
    }


def _best(runs: list[dict]) -> dict:
    return min(runs, key=lambda r: r["cpu s"])


def main(argv: list[str] | None = None) -> None:
    """Run the paths asked for and print one markdown table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--paths", default="demo,cv", help="comma-separated: demo, cv")
    ap.add_argument("--protocols", default="loso,lopo", help="cross_validate protocols (lopo: mob's two mice)")
    ap.add_argument("--cv-data", default="mob", choices=["mob", "her2st"])
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args(argv)
    import stpredict as stp

    stp.settings.progress = False
    rows = []
    paths = args.paths.split(",")
    if "demo" in paths:
        demo_run("none")  # warm-up, not timed: the first call pays the imports (torch, scanpy, ...)
        runs = {s: [] for s in STAINS}
        for r in range(args.repeats):
            for s in STAINS if r % 2 == 0 else STAINS[::-1]:
                runs[s].append(demo_run(s))
        rows.append(("demo fit+predict+superresolve", {s: _best(v) for s, v in runs.items()}))
    if "cv" in paths:
        import _data

        slides = _data.mob() if args.cv_data == "mob" else _data.her2st()
        for protocol in args.protocols.split(","):
            if protocol == "lopo" and args.cv_data != "mob":
                continue
            groups = _data.mob_individuals() if protocol == "lopo" else None
            runs = {s: [] for s in STAINS}
            for r in range(args.repeats):
                for s in STAINS if r % 2 == 0 else STAINS[::-1]:
                    runs[s].append(cv_run(s, slides, protocol, groups))
            rows.append((f"{args.cv_data} {protocol} ridge", {s: _best(v) for s, v in runs.items()}))
    print("| path | stain | wall s | cpu s | embed s | mean PCC | cpu macenko/none |")
    print("|---|---|---|---|---|---|---|")
    for name, by in rows:
        ratio = by["macenko"]["cpu s"] / by["none"]["cpu s"]
        for s in STAINS:
            r = by[s]
            emb = f"{r['embed s']:.1f}" if "embed s" in r else ""
            pcc = f"{r['pcc']:.4f}" if "pcc" in r else ""
            print(
                f"| {name} | {s} | {r['wall s']:.1f} | {r['cpu s']:.1f} | {emb} | {pcc} | "
                f"{f'{ratio:.2f}' if s == 'macenko' else ''} |"
            )


if __name__ == "__main__":
    main()
