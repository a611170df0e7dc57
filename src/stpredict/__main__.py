"""The command line, ``python -m stpredict demo``: the main job on the embedded mouse olfactory bulb section."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any


def domains(adata: Any, *, seed: int = 0) -> None:
    """Leiden domains of a grid's expression, in ``adata.obs["leiden"]`` (PCA, kNN graph, Leiden).

    The kNN graph is scanpy's exact one (``transformer="sklearn"``), the one scanpy takes by itself below 8,192
    observations. Above, scanpy 1.11.5 switches to pynndescent, whose 0.7 release returns a ``csr_array`` that
    scanpy then fails on (``'csr_array' object has no attribute 'getnnz'``): a µm-bin grid of a whole slide
    (``--grid bin10um`` on the demo slide: 75,483 bins) would end the demo there.
    """
    import scanpy as sc

    sc.pp.pca(adata, n_comps=min(20, adata.n_vars - 1))
    sc.pp.neighbors(adata, use_rep="X_pca", transformer="sklearn")
    sc.tl.leiden(adata, resolution=0.5, flavor="igraph", n_iterations=2, directed=False, random_state=seed)


def demo(out: Path, model: str = "ridge", grid: str = "ps4", n_genes: int = 50, seed: int = 0) -> int:
    """Predict → super-resolve → spatial domains on ``stp.datasets.mob()``; write zarr, PNGs and a summary."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=SyntaxWarning)
    warnings.filterwarnings("ignore", message=".*autosharding.*")
    import matplotlib as mpl

    mpl.use("Agg")
    import squidpy as sq

    import stpredict as stp

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    sdata = stp.datasets.mob()
    stp.tl.predict(sdata, model, n_genes=n_genes, seed=seed, progress=False)
    scores = stp.tl.evaluate(sdata)
    stp.tl.superresolve(sdata, model, grid=grid, n_genes=n_genes, seed=seed, progress=False)
    key = f"{model}_spots_{grid}"
    g = sdata.tables[key]
    sq.gr.spatial_neighbors_knn(g, n_neighs=6) if hasattr(sq.gr, "spatial_neighbors_knn") else sq.gr.spatial_neighbors(
        g
    )
    domains(g, seed=seed)
    marker = scores["pearson"].idxmax()
    fig = stp.pl.predicted_vs_measured(sdata, [marker], grid_table=key)
    fig.savefig(out / "marker_measured_vs_predicted.png", dpi=110)
    fig2 = stp.pl.grid_values(sdata, key, "leiden", title=f"spatial domains on {grid} (leiden)")
    fig2.savefig(out / "domains.png", dpi=110, bbox_inches="tight")
    zarr_path = out / "mob_stpredict.zarr"
    sdata.write(zarr_path, overwrite=True)
    s = scores.attrs["summary"]
    cond = g.uns["stpredict"]["superresolve"]["condition"]
    lines = [
        f"stpredict {stp.__version__} demo: mouse olfactory bulb (MOB1), model {model!r}, grid {grid!r}",
        f"spots {sdata.tables['table'].n_obs}, genes {len(scores)} ({sdata.tables['table'].uns['stpredict']['predicted']['gene_selection']})",
        f"out-of-fold per-gene Pearson: mean {s['mean']:.3f}, median {s['median']:.3f}, "
        f"IQR {s['q25']:.3f}-{s['q75']:.3f} over {s['n_genes']} genes",
        "best genes: " + ", ".join(f"{gname} {r:.2f}" for gname, r in scores["pearson"].nlargest(5).items()),
        f"{grid}: {g.n_obs} regions, {g.obs['leiden'].nunique()} leiden domains",
        f"{grid} conditioned on the measured spots: pooled back over each spot it gives the spot (max relative "
        f"error {cond['max_rel_error']:.1e}); median per-gene image weight {cond['weight_median']:.2f} "
        "(layers['image_only']: the unconditioned prediction, beside it in the PNG)",
        f"wrote {zarr_path}, {out / 'marker_measured_vs_predicted.png'}, {out / 'domains.png'}",
        f"time {time.perf_counter() - t0:.1f} s",
    ]
    (out / "summary.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


_DESCRIPTION = """\
stpredict: predict spatial gene expression from H&E histology.

The demo runs the main job on the embedded mouse olfactory bulb section (MOB1, STutility, MIT):
out-of-fold per-spot predictions scored per gene, super-resolution onto a denser grid (ps4:
4x pseudo-spots) and spatial domains with squidpy + leiden. It writes a zarr store, two PNGs
and summary.txt into the output folder."""

_EPILOG = """\
example:
  python -m stpredict demo --out stpredict_demo
  python -m stpredict demo --model mean --grid ps16 --n-genes 20"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m stpredict",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    d = sub.add_parser(
        "demo",
        help="predict, super-resolve and find domains on the embedded demo slide",
        description=_DESCRIPTION.split("\n\n", 1)[1],
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument("--out", type=Path, default=Path("stpredict_demo"), help="output folder (default: %(default)s)")
    d.add_argument("--model", default="ridge", help="registered predictor name (default: %(default)s)")
    d.add_argument(
        "--grid", default="ps4", help="super-resolution grid: ps4, ps16 or binNum, e.g. bin16um (default: %(default)s)"
    )
    d.add_argument("--n-genes", type=int, default=50, help="highly variable genes to predict (default: %(default)s)")
    d.add_argument("--seed", type=int, default=0, help="seed of every random step (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        return demo(args.out, model=args.model, grid=args.grid, n_genes=args.n_genes, seed=args.seed)
    return 1


if __name__ == "__main__":
    sys.exit(main())
