"""Accuracy of every registered predictor and baseline under the honest protocols, on real data.

Tasks (50 seurat_v3 genes chosen on each fold's training data, per-gene Pearson within each held-out slide):

- ``loso``: leave-one-section-out (her2st C2–C6: one patient, so cross-section, not cross-patient; mob MOB1–4);
- ``lopo``: leave-one-individual-out (mob only: MOB1–2 and MOB3–4 are two mice, from its ``metaData.csv``);
- ``hide50``: hide ``perm[: n // 2]`` of ``default_rng(0).permutation(n)`` within each slide;
- ``pool2``: pool 2×2 spots (array x // 2, y // 2) into pseudo-spots, fit on them, recover the original spots;
- ``pool2split``: the same with each spot's counts split binomially (``--count-split``, default 0.5): the pools
  sum one part, the spots are scored against the rest, so the truth's count noise is independent of the input's.

Writes ``benchmarks/results/accuracy.md`` (one table: task × method: mean PCC ± sd over folds, median and
quartiles over genes, MSE, fit and predict seconds), per-gene CSVs, and the table into ``docs/benchmarks.md``.

    python benchmarks/accuracy.py [--datasets her2st,mob] [--tasks loso,lopo,hide50,pool2,pool2split] [--methods ridge,mean,...]
                                  [--stain none,macenko,reinhard] [--feature-norm none,slide] [--stain-augment 0,2]
                                  [--condition none,measured,denoised] [--max-epochs N] [--time-budget SECONDS] [--out DIR]

``--stain``, ``--feature-norm`` and ``--stain-augment`` run every method once per combination of options (cross-slide tasks only: within one slide
the stain reference is the slide itself); rows name the variant, e.g. ``ridge [macenko+aug2]``.
``--handcrafted base+lbp+glcm`` computes the hand-crafted embeddings with those feature groups
(:class:`~stpredict.models.backbones.HandcraftedBackbone`'s ``features``; default ``base``), for every method that
consumes embeddings; rows name a non-default set, e.g. ``ridge [hc=base+lbp+macenko]``. One set per run (each
set's embeddings replace the previous ones in the slides' cache): compare sets with ``--merge``.
``--condition`` runs the pool2 task once per option; conditioned rows read e.g. ``ridge [conditioned]`` or
``ridge [denoised]`` (the mean
and the copy are skipped there: conditioned on the pools, both are the copy).
    python benchmarks/accuracy.py --merge DIR1,DIR2,...   # one table from runs split across processes
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

TASKS = {
    "loso": ("leave_one_section_out", {}),
    "lopo": ("leave_one_patient_out", {}),
    "hide50": ("hide_spots", {"fraction": 0.5}),
    "pool2": ("pool", {"pool": 2}),
    "pool2split": ("pool", {"pool": 2, "count_split": 0.5}),
}


def main() -> None:
    warnings.filterwarnings("ignore")
    import numpy as np
    import pandas as pd
    from _data import her2st, mob, mob_individuals

    import stpredict as stp

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="her2st,mob")
    p.add_argument("--tasks", default="loso,hide50,pool2")
    p.add_argument("--methods", default=None, help="comma-separated; default every registered predictor")
    p.add_argument("--max-epochs", type=int, default=None)
    p.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="seconds per method and task; slower methods are skipped afterwards",
    )
    p.add_argument(
        "--dense",
        choices=("auto", "on", "off"),
        default="auto",
        help="hand-crafted features from the slide's dense map (on), one window per spot (off), or the cheaper",
    )
    p.add_argument(
        "--handcrafted",
        default="base",
        help="the hand-crafted backbone's feature groups, '+'-joined (base, colour, lbp, glcm, nuclei)",
    )
    p.add_argument("--stain", default="none", help="comma-separated stain options to run (none,macenko,reinhard)")
    p.add_argument("--feature-norm", default="none", help="comma-separated feature_norm options (none,slide)")
    p.add_argument("--stain-augment", default="0", help="comma-separated re-stained copies per training slide (0,2)")
    p.add_argument(
        "--condition",
        default="none",
        help="comma-separated pool2 options (none,measured,denoised): 'measured' conditions each method's predictions "
        "on the pooled pseudo-spots, as superresolve conditions a grid on measured spots; 'denoised' on the pools "
        "denoised toward the prediction by their count noise",
    )
    p.add_argument(
        "--count-split",
        type=float,
        default=0.5,
        help="pool2split: the share of each spot's counts the pools sum (the rest is the truth)",
    )
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--no-docs", action="store_true")
    p.add_argument(
        "--merge",
        default=None,
        help="comma-separated output folders of earlier runs: build one table from their results (a later folder's "
        "row replaces an earlier one for the same dataset, task and method) instead of running anything",
    )
    args = p.parse_args()
    if args.merge:
        merge([Path(d) for d in args.merge.split(",")], args.out, docs=not args.no_docs)
        return

    dense = {"auto": None, "on": True, "off": False}[args.dense]
    hc_features = tuple(args.handcrafted.split("+"))
    backbone = stp.models.HandcraftedBackbone(features=hc_features)  # checked before any data is read
    commit = _commit()  # the code that runs, recorded before anything can change the checkout
    methods = args.methods.split(",") if args.methods else stp.models.list_predictors()
    loaders = {"her2st": her2st, "mob": mob}
    groups = {"mob": mob_individuals}
    variants = [
        (st, fn, int(k))
        for st in args.stain.split(",")
        for fn in args.feature_norm.split(",")
        for k in args.stain_augment.split(",")
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    rows, skipped, embed_s = [], {}, {}
    for ds in args.datasets.split(","):
        t0 = time.perf_counter()
        slides = loaders[ds]()
        print(f"{ds}: {len(slides)} slides read in {time.perf_counter() - t0:.0f} s", flush=True)
        # embeddings of the default backbone once per slide, reused by every method through the obsm cache
        t0 = time.perf_counter()
        for s_ in slides:
            stp.tl.embed(s_, backbone, progress=False, dense=dense)
        embed_s[ds] = time.perf_counter() - t0
        print(f"{ds}: handcrafted embeddings in {embed_s[ds]:.0f} s", flush=True)
        for task in args.tasks.split(","):
            protocol, kw = TASKS[task]
            if "count_split" in kw:
                kw = {**kw, "count_split": args.count_split}
            if protocol == "leave_one_patient_out":
                if ds not in groups:
                    print(f"  {ds} lopo: one individual only, skipped", flush=True)
                    continue
                kw = {"groups": groups[ds]()}
            cross = protocol in ("leave_one_section_out", "leave_one_patient_out")
            conds = args.condition.split(",") if protocol == "pool" else ["none"]
            runs = [(m, v, c) for m in methods for c in conds for v in variants]
            for m, (stain, fnorm, aug), cond in runs:
                cls = stp.models.get_predictor_class(m)
                if cross and cls.uses_slide_targets:
                    continue
                if m == "copy" and protocol != "pool":
                    continue
                plain = (stain, fnorm, aug) == ("none", "none", 0)
                if not plain and (not cross or m in ("mean", "neighbors", "copy")):
                    continue  # the options change what is read from the image, and only across slides
                if cond != "none" and m in ("mean", "copy"):
                    continue  # conditioned on the pools, both are the copy itself
                opts = [f"hc={args.handcrafted}"] if hc_features != ("base",) and cls.consumes == "embeddings" else []
                opts += [v for v in (stain, fnorm) if v != "none"] + ([f"aug{aug}"] if aug else [])
                opts += {"none": [], "measured": ["conditioned"], "denoised": ["denoised"]}[cond]
                label = m if not opts else f"{m} [{'+'.join(opts)}]"
                if label in skipped:
                    continue
                t1 = time.perf_counter()
                try:
                    res = stp.tl.cross_validate(
                        slides,
                        m,
                        protocol=protocol,
                        n_genes=50,
                        seed=0,
                        max_epochs=args.max_epochs,
                        progress=False,
                        dense=dense,
                        backbone=backbone if cls.consumes == "embeddings" else None,
                        stain=stain,
                        feature_norm=fnorm,
                        stain_augment=aug,
                        **({"condition": cond} if protocol == "pool" else {}),
                        **kw,
                    )
                except Exception as e:  # noqa: BLE001 - report and go on
                    print(f"  {ds} {task} {label}: FAILED {type(e).__name__}: {e}", flush=True)
                    continue
                wall = time.perf_counter() - t1
                s = res.summary()
                tag = label.replace(" [", "_").replace("]", "").replace("+", "_")
                res.scores.to_csv(args.out / f"pergene_{ds}_{task}_{tag}.csv", index=False)
                rows.append({"dataset": ds, "task": task, "method": label, **s, "wall_seconds": wall})
                print(
                    f"  {ds} {task:7s} {label:18s} PCC {s['pcc_mean']:.3f} ± {s['pcc_sd_folds']:.3f}  ({wall:.0f} s)",
                    flush=True,
                )
                if args.time_budget and wall > args.time_budget:
                    skipped[label] = wall
    df = pd.DataFrame(rows)
    df.to_csv(args.out / "accuracy.csv", index=False)
    (args.out / "run.txt").write_text(
        f"{commit or 'unknown'}\n{dt.date.today().isoformat()}\npython benchmarks/accuracy.py {' '.join(sys.argv[1:])}\n"
    )
    lines = [
        f"Run {dt.date.today().isoformat()}, commit `{commit or 'unknown'}`, `python benchmarks/accuracy.py {' '.join(sys.argv[1:])}`.",
        "Mean per-gene Pearson within each held-out slide, ± sd over folds; median [q25, q75] over (fold, gene); "
        "50 HVG (seurat_v3) chosen on each fold's training data; seconds summed over folds (2 CPU cores).",
        "",
        "| dataset | task | method | PCC mean ± sd | median [q25, q75] | MSE | fit s | predict s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(_row(r) + " |")
    lines.append("")
    lines.append(
        "Hand-crafted embeddings (shared by every method on that backbone, computed once per slide): "
        + ", ".join(f"{k} {v:.0f} s" for k, v in embed_s.items())
        + "; fit/predict seconds exclude them."
    )
    if skipped:
        lines.append("")
        lines.append(
            "Skipped after exceeding the time budget: " + ", ".join(f"{k} ({v:.0f} s)" for k, v in skipped.items())
        )
    table = "\n".join(lines)
    (args.out / "accuracy.md").write_text(table + "\n")
    print(table)
    if not args.no_docs:
        _write_docs(table)
    _ = np


def _row(r) -> str:
    """The cells of one result row shared by every table (without the closing bar)."""
    return (
        f"| {r['dataset']} | {r['task']} | {r['method']} | {r['pcc_mean']:.3f} ± {r['pcc_sd_folds']:.3f} | "
        f"{r['pcc_median']:.3f} [{r['pcc_q25']:.3f}, {r['pcc_q75']:.3f}] | {r['mse']:.3f} | "
        f"{r['fit_seconds']:.1f} | {r['predict_seconds']:.1f}"
    )


def _write_docs(table: str) -> None:
    """Replace everything after the results marker of ``docs/benchmarks.md`` with ``table``."""
    path = HERE.parent / "docs" / "benchmarks.md"
    if not path.exists():
        return
    text = path.read_text()
    marker = "<!-- results -->"
    head = text.split(marker)[0] if marker in text else text
    path.write_text(head + marker + "\n\n" + table + "\n")


def _commit() -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE, check=False
    ).stdout.strip()


def merge(folders: list[Path], out: Path, *, docs: bool) -> None:
    """One table from several runs' ``accuracy.csv`` (each folder's ``run.txt``: commit, date, command)."""
    import pandas as pd

    frames, legend = [], []
    for i, d in enumerate(folders):
        run = chr(ord("A") + i)
        info = (d / "run.txt").read_text().splitlines() if (d / "run.txt").exists() else ["unknown", "", ""]
        legend.append(f"- run {run}: commit `{info[0]}`, {info[1]}, `{info[2]}`")
        df = pd.read_csv(d / "accuracy.csv")
        df["run"] = run
        frames.append(df)
    df = pd.concat(frames).drop_duplicates(["dataset", "task", "method"], keep="last")
    order = {"loso": 0, "lopo": 1, "hide50": 2, "pool2": 3, "pool2split": 4}
    base = {"mean": 0, "neighbors": 1, "copy": 2, "ridge": 3, "ridge_neighbors": 4}
    df = df.sort_values(
        ["dataset", "task", "method"],
        key=lambda c: (
            c.map(order) if c.name == "task" else (c.map(lambda m: base.get(m, 9)) if c.name == "method" else c)
        ),
        kind="stable",
    )
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "accuracy.csv", index=False)
    lines = [
        "Merged from several runs of `benchmarks/accuracy.py` (each run measured its baselines beside its methods; "
        "a later run's row replaces an earlier one). Mean per-gene Pearson within each held-out slide, ± sd over "
        "folds; median [q25, q75] over (fold, gene); 50 HVG (seurat_v3) chosen on each fold's training data; "
        "seconds summed over folds (1 CPU thread per run, runs sharing a 2-core machine).",
        "",
        *legend,
        "",
        "| dataset | task | method | PCC mean ± sd | median [q25, q75] | MSE | fit s | predict s | run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for _, r in df.iterrows():
        lines.append(f"{_row(r)} | {r['run']} |")
    table = "\n".join(lines)
    (out / "accuracy.md").write_text(table + "\n")
    print(table)
    if docs:
        _write_docs(table)


if __name__ == "__main__":
    main()
