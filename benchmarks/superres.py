"""Super-resolution against known truth: every method on several synthetic slides, several bin sizes.

The synthetic generator (``stp.datasets.synthetic``) knows expression at every point, so super-resolved
predictions can be scored against the truth of each region — which no real dataset here allows. For each
seed (a new tissue, gene programmes and count noise), each method is fitted on all measured spots of the slide
and predicts

- ``spots``: the measured spots themselves (in-sample for fitted models: the ceiling of each method);
- ``ps4``: pseudo-spots at half the spot spacing (circles of half the spot diameter);
- ``binNum``: square bins of each ``--bins`` size, over the tissue.

Scores per region set: mean per-gene Pearson against the truth of the same regions (log1p of the truth's
normalised rates, the prediction scale), and SSIM of the maps rasterised at the region pitch. Baselines:
``neighbors`` (inverse-distance interpolation of measured spots, the spatial-interpolation baseline; bicubic
upsampling is in the diffusion tests), ``copy`` (each region takes its nearest measured spot) and ``ridge`` on
hand-crafted features. Every grid is conditioned on the measured spots (``superresolve``'s default,
``condition="measured"``) and scored twice from the same call: conditioned, and its ``layers["image_only"]``
(rows tagged ``[image-only]``). Results are printed as a
markdown table (mean ± sd over seeds) and written to ``benchmarks/results/superres.{csv,md}``.

    python benchmarks/superres.py [--seeds 0,1,2] [--methods neighbors,copy,ridge,histosge,pixnet,diffusion]
                                  [--bins 25,50] [--image-size 1200] [--n-genes 8] [--max-epochs N]

With ``--real <Visium HD outs folder>`` (``[--fullres-image tissue.tif] [--methods neighbors,copy,ridge]
[--n-genes 50]``) the truth is real instead: the 8 µm bins are pooled into Visium-like spots, the methods
super-resolve those onto 8/16/32 µm bins, and each bin is scored against the measured bins it covers; see
``benchmarks/_superres_real.py`` and ``benchmarks/results/superres_real.{csv,md}``. With ``--real <Xenium
bundle>`` (a folder holding ``experiment.xenium``; ``[--he-image he.ome.tif --alignment alignment.csv]``) the
cells are pooled instead, every cell is predicted and scored against its own counts; see
``benchmarks/_superres_xenium.py`` and ``benchmarks/results/superres_real_xenium.{csv,md}``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TAGS = {"image-only": "*", "denoised": "~"}  # marks of the variants in the progress lines
BASELINES = ("neighbors", "copy", "ridge", "ridge [image-only]", "neighbors [image-only]", "copy [image-only]")


def truth_log(truth, centers_um: np.ndarray, size_um: float, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Truth of regions on the prediction scale (log1p of rates normalised to 1e4) and which have tissue."""
    lam = truth.mean_rates(centers_um, size_um, kind)
    ok = lam.sum(1) > 0
    return np.log1p(lam / np.maximum(lam.sum(1, keepdims=True), 1e-12) * 1e4), ok


def score(stp, centers_um, pitch_um, truth, pred, ok) -> tuple[float, float]:
    """Mean per-gene PCC and SSIM of rasterised maps, over regions with tissue."""
    pcc = float(np.nanmean(stp.metrics.pearson_per_gene(truth[ok], pred[ok])))
    c = centers_um[ok]
    t_map = stp.metrics.rasterize(c, truth[ok], pitch_um)
    p_map = stp.metrics.rasterize(c, pred[ok], pitch_um)
    ssim = float(np.nanmean(stp.metrics.map_ssim(t_map, p_map)))
    return pcc, ssim


def run_real_mode(args: argparse.Namespace, argv: list[str] | None) -> None:
    """``--real``: the Xenium mode for a folder holding ``experiment.xenium``, the Visium HD mode otherwise."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    methods = (args.methods or "neighbors,copy,ridge").split(",")
    common = {"methods": methods, "n_genes": args.n_genes or 50, "max_epochs": args.max_epochs, "out": args.out}
    if (args.real / "experiment.xenium").is_file():
        from _superres_xenium import run_xenium

        if args.fullres_image is not None:
            msg = f"{args.real} is a Xenium bundle: give its H&E as --he-image (with --alignment), not --fullres-image."
            raise SystemExit(msg)
        run_xenium(args.real, he_image=args.he_image, alignment=args.alignment, argv=argv, **common)
    else:
        from _superres_real import run_real

        if args.he_image is not None or args.alignment is not None:
            msg = f"{args.real} is not a Xenium bundle (no experiment.xenium): --he-image and --alignment are Xenium's."
            raise SystemExit(msg)
        run_real(args.real, fullres_image=args.fullres_image, argv=argv, **common)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark (``argv``: the command line, default ``sys.argv[1:]``)."""
    warnings.filterwarnings("ignore")
    import pandas as pd

    import stpredict as stp

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument(
        "--methods",
        default=None,
        help="default neighbors,copy,ridge,histosge,pixnet,diffusion (with --real: neighbors,copy,ridge)",
    )
    p.add_argument("--bins", default="25,50")
    p.add_argument("--image-size", type=int, default=1200)
    p.add_argument("--n-genes", type=int, default=None, help="default 8 (with --real: 50)")
    p.add_argument("--max-epochs", type=int, default=None, help="training budget of every iterative method")
    p.add_argument(
        "--denoised",
        action="store_true",
        help="also score condition='denoised' (the measured spots denoised toward the prediction), rows '[denoised]'",
    )
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument(
        "--real",
        type=Path,
        default=None,
        help="Visium HD outs folder (scored against its 8 µm bins) or Xenium bundle (scored per cell)",
    )
    p.add_argument("--fullres-image", type=Path, default=None, help="with --real <Visium HD>: the full-resolution H&E")
    p.add_argument("--he-image", type=Path, default=None, help="with --real <Xenium>: the post-Xenium H&E")
    p.add_argument("--alignment", type=Path, default=None, help="with --he-image: Xenium Explorer's alignment CSV")
    args = p.parse_args(argv)
    stp.settings.progress = False
    if args.real is not None:
        run_real_mode(args, argv)
        return
    if args.fullres_image or args.he_image or args.alignment:
        p.error("--fullres-image, --he-image and --alignment go with --real")
    args.methods = args.methods or "neighbors,copy,ridge,histosge,pixnet,diffusion"
    args.n_genes = args.n_genes or 8
    args.out.mkdir(parents=True, exist_ok=True)

    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        sdata = stp.datasets.synthetic(image_size=args.image_size, n_genes=args.n_genes, seed=seed)
        genes = list(sdata.tables["table"].var_names)
        truth = stp.datasets.synthetic_truth(sdata)
        geo = stp.pp.spots(sdata)
        mpp = geo.microns_per_pixel
        spot_um = geo.diameter_um
        pitch_spots = float(
            np.median(np.sort(np.linalg.norm(geo.centers[:, None] - geo.centers[None], axis=-1), 1)[:, 1])
        )
        print(f"seed {seed}: {geo.n_spots} spots, {len(genes)} genes", flush=True)
        for method in args.methods.split(","):
            t0 = time.perf_counter()
            model = stp.tl.fit(sdata, method, genes=genes, max_epochs=args.max_epochs, seed=0)
            fit_s = time.perf_counter() - t0
            grids = [("ps4", {"grid": "ps4"})] + [(f"bin{b}um", {"bin_size": float(b)}) for b in args.bins.split(",")]
            # the measured spots (in-sample: the method's ceiling on this slide)
            t1 = time.perf_counter()
            stp.tl.predict(sdata, model, genes=genes, key_added="bench")
            tab = sdata.tables["table"]
            pred = np.asarray(tab[:, genes].layers["bench"])
            c_um = geo.centers * mpp
            t_s, ok = truth_log(truth, c_um, spot_um, "circle")
            pcc, ssim = score(stp, c_um, pitch_spots * mpp, t_s, pred, ok)
            rows.append({"seed": seed, "method": method, "regions": "spots", "pcc": pcc, "ssim": ssim,
                         "n": int(ok.sum()), "fit_s": fit_s, "predict_s": time.perf_counter() - t1})  # fmt: skip
            for name, kw in grids:
                t1 = time.perf_counter()
                stp.tl.superresolve(sdata, model, genes=genes, seed=0, **kw)
                key = f"{model.name}_{geo.spots_key}_{name}"
                t = sdata.tables[key]
                pred = np.asarray(t[:, genes].X)
                c_um = np.asarray(t.obsm["spatial"]) * mpp
                if name == "ps4":
                    size, kind, pitch = spot_um / 2, "circle", pitch_spots * mpp / 2
                else:
                    size, kind, pitch = float(name[3:-2]), "square", float(name[3:-2])
                tt, ok = truth_log(truth, c_um, size, kind)
                pred_s = time.perf_counter() - t1
                # the grid is conditioned on the measured spots (the default); its image-only layer is the same
                # prediction before that step, scored beside it from the same call
                variants = [(method, pred)]
                if "image_only" in t.layers:
                    variants.append((f"{method} [image-only]", np.asarray(t[:, genes].layers["image_only"])))
                if args.denoised:
                    stp.tl.superresolve(sdata, model, genes=genes, seed=0, condition="denoised", **kw)
                    variants.append((f"{method} [denoised]", np.asarray(sdata.tables[key][:, genes].X)))
                for label, values in variants:
                    pcc, ssim = score(stp, c_um, pitch, tt, values, ok)
                    rows.append({"seed": seed, "method": label, "regions": name, "pcc": pcc, "ssim": ssim,
                                 "n": int(ok.sum()), "fit_s": fit_s, "predict_s": pred_s})  # fmt: skip
                del sdata.tables[key], sdata.shapes[f"{geo.spots_key}_{name}"]
            done = [r for r in rows if r["seed"] == seed and r["method"].split(" [")[0] == method]
            print(
                f"  {method:10s} fit {fit_s:5.0f} s  "
                + "  ".join(
                    f"{r['regions']}{TAGS.get(r['method'][len(method) + 2 : -1], '')} {r['pcc']:.3f}/{r['ssim']:.3f}"
                    for r in done
                ),
                flush=True,
            )
    df = pd.DataFrame(rows)
    df.to_csv(args.out / "superres.csv", index=False)
    agg = df.groupby(["regions", "method"], sort=False).agg(
        pcc=("pcc", "mean"), pcc_sd=("pcc", "std"), ssim=("ssim", "mean"), ssim_sd=("ssim", "std"),
        fit_s=("fit_s", "mean"), predict_s=("predict_s", "mean"),
    )  # fmt: skip
    # wins against the best baseline, seed by seed
    base = df[df["method"].isin(BASELINES)].groupby(["seed", "regions"])["pcc"].max()
    wins = {
        (reg, m): int(sum(g.set_index("seed")["pcc"] > base.xs(reg, level="regions").reindex(g["seed"]).to_numpy()))
        for (reg, m), g in df.groupby(["regions", "method"])
    }
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE, check=False
    ).stdout.strip()
    n_seeds = df["seed"].nunique()
    lines = [
        f"Commit `{commit}`, `python benchmarks/superres.py {' '.join(sys.argv[1:])}`: synthetic {args.image_size}² px "
        f"(1 µm/px, Visium layout), {args.n_genes} genes, {n_seeds} seeds. Mean ± sd over seeds of the mean per-gene "
        "Pearson and SSIM against the truth of the same regions; 'beats' = seeds where the method's PCC is above "
        "the best of the baselines (neighbors, copy, ridge, each conditioned on the measured spots, and image-only "
        "ridge) present in the run; rows without a tag are conditioned on the measured spots (superresolve's "
        "default), '[image-only]' rows are the same call's layers['image_only']; seconds per seed.",
        "",
        "| regions | method | PCC | SSIM | beats baselines | fit s | predict s |",
        "|---|---|---|---|---|---|---|",
    ]
    for (reg, m), r in agg.iterrows():
        beat = "—" if m in BASELINES else f"{wins[(reg, m)]}/{n_seeds}"
        lines.append(
            f"| {reg} | {m} | {r['pcc']:.3f} ± {r['pcc_sd']:.3f} | {r['ssim']:.3f} ± {r['ssim_sd']:.3f} | {beat} | "
            f"{r['fit_s']:.0f} | {r['predict_s']:.0f} |"
        )
    table = "\n".join(lines)
    (args.out / "superres.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
