"""Super-resolution scored against real sub-spot truth: a Visium HD slide pooled into Visium-like spots.

``python benchmarks/superres.py --real <outs> [--fullres-image tissue.tif] [--methods neighbors,copy,ridge]
[--n-genes 50] [--max-epochs N] [--out benchmarks/results]``

Protocol. The Space Ranger HD ``outs`` folder is read at 8 µm bins (:func:`stpredict.io.read_visium_hd`); the bins
are pooled into 55 µm Visium-like spots on a 100 µm hexagonal lattice (:func:`stpredict.pp.pool_to_spots`: a
spot's counts are the sum of the bins whose centre lies in its disk). These pooled spots are the only
measurements the methods see: each method is fitted once on them (``stp.tl.fit``; ``copy`` and ``neighbors``
just keep them) and super-resolves them (``stp.tl.superresolve(..., spots_key=<pooled circles>,
table_key=<pooled table>)``) onto square bins of 8, 16 and 32 µm (``grid="bin8um"``, ``"bin16um"``,
``"bin32um"``: squares on the measured 8 µm bins' own lattice, rotated and offset in the image as Space Ranger
registered it — the pooled spots' source bins give ``superresolve`` that lattice — so an 8 µm square is a
measured bin and a 16 or 32 µm square groups 2 × 2 or 4 × 4 whole bins from bin ``(0, 0)``, as Space Ranger
nests its bins; inside the tissue detected once by :func:`stpredict.pp.tissue_mask` and within one spot spacing
of a spot), with ``condition="none"`` (image only) and ``condition="measured"`` (the grid pools back to the
measured spots).

Truth of a grid square: the counts of the measured 8 µm bins it nests — those whose centre falls in its cell of
the grid's lattice (:func:`stpredict.pp.grid_lattice`; half-open cells) — summed, normalised to 1e4 and
log1p-transformed, the prediction scale. Only squares covered by bins are scored: at least ``MIN_COVERAGE``
(75 %) of the ``(side / 8)²`` bins a full square holds, and a non-zero total. Score: Pearson per gene over the scored squares of the slide, then the mean and median over
genes (genes constant in the truth are dropped, see :mod:`stpredict.metrics`). ``copy`` (each square takes its
nearest spot's value) and ``neighbors`` (inverse-distance interpolation of the spots) are the baselines.

Output: printed and written to ``<out>/superres_real.md``, one row per (method, condition, grid), with
``<out>/superres_real.csv`` holding the same rows (columns ``layout, method, condition, grid, pcc_mean,
pcc_median, n_regions, n_grid, n_genes, fit_s, seconds``; ``layout`` is ``visium_hd``)::

    | method | condition | grid | mean PCC | median PCC | n regions | fit s | seconds |
    |---|---|---|---|---|---|---|---|
    | neighbors | none | bin8um | 0.412 | 0.430 | 1234 | 0.0 | 0.3 |

``n regions`` is the number of scored (covered) squares, ``n_grid`` the squares the grid holds, ``fit s`` the
method's fit on the pooled spots and ``seconds`` the ``superresolve`` call. The Xenium mode
(``benchmarks/_superres_xenium.py``) pools cells instead and writes rows of the same format.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable

    import pandas as pd

BIN_UM = 8
GRIDS = ("bin8um", "bin16um", "bin32um")
CONDITIONS = ("none", "measured")
MIN_COVERAGE = 0.75
COLUMNS = [
    "layout",
    "method",
    "condition",
    "grid",
    "pcc_mean",
    "pcc_median",
    "n_regions",
    "n_grid",
    "n_genes",
    "fit_s",
    "seconds",
]


def aggregate_truth(
    bin_centers_um: np.ndarray,
    bin_counts: Any,
    grid_centers_um: np.ndarray,
    side_um: float,
    columns: Any = None,
    bin_um: float = BIN_UM,
    min_coverage: float = MIN_COVERAGE,
    lattice: Any = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Measured bins aggregated to the grid's squares, on the prediction scale.

    Parameters
    ----------
    bin_centers_um
        ``(n_bins, 2)`` bin centres (x, y) in the image's µm (level-0 pixels times µm per pixel).
    bin_counts
        ``(n_bins, n_genes)`` raw counts (dense or sparse).
    grid_centers_um
        ``(n_squares, 2)`` centres of the grid's squares of side ``side_um``.
    side_um
        Side of the grid squares in µm (``lattice.side_um`` when ``lattice`` is given).
    columns
        Genes (column indices) to return; ``None``: all. Normalisation always uses every gene's counts (the
        library size), as the prediction targets do.
    bin_um
        Side of the measured bins in µm.
    min_coverage
        Fraction of the ``(side_um / bin_um)²`` bins of a full square needed to score it.
    lattice
        The grid's square lattice (:func:`stpredict.pp.grid_lattice`): a bin belongs to the square whose cell
        ``(i, j)`` of the lattice holds its centre, so on the measured bins' own (rotated) lattice a square is
        exactly the measured bins it nests (1, 4, 16 for 8, 16, 32 µm squares on 8 µm bins). ``None``: squares
        aligned with the image axes from its origin (``(i + 0.5) · side``).

    Returns
    -------
    ``(truth, n_bins, covered)``: ``log1p`` of the summed counts normalised to 1e4 per square, the number of
    bins whose centre falls in each square (half-open cells ``[i, i + 1) · side`` of the lattice), and the
    squares to score.
    """
    import scipy.sparse as sp

    X = sp.csr_matrix(bin_counts, dtype=np.float64)
    if lattice is None:
        cell = np.floor(np.asarray(bin_centers_um, float) / side_um).astype(np.int64)
        grid_cell = np.floor(np.asarray(grid_centers_um, float) / side_um).astype(np.int64)
    else:
        side_um = float(lattice.side_um)
        cell, grid_cell = lattice.cells(bin_centers_um), lattice.cells(grid_centers_um)
    lookup = {(int(i), int(j)): k for k, (i, j) in enumerate(grid_cell)}
    row = np.array([lookup.get((int(i), int(j)), -1) for i, j in cell], dtype=np.int64)
    inside = row >= 0
    n_sq = len(grid_cell)
    members = sp.csr_matrix(
        (np.ones(int(inside.sum())), (row[inside], np.flatnonzero(inside))), shape=(n_sq, X.shape[0])
    )
    total = np.asarray(members @ X.sum(1)).ravel()
    summed = np.asarray((members @ (X if columns is None else X[:, columns])).todense())
    n_bins = np.asarray(members.sum(1)).ravel().astype(np.int64)
    expected = (side_um / bin_um) ** 2
    covered = (n_bins >= np.ceil(min_coverage * expected - 1e-9)) & (total > 0)
    return log_normalised(summed, total), n_bins, covered


def grid_truth(
    stp: Any, sdata: Any, tab: Any, bins_um: np.ndarray, counts: Any, columns: Any, mpp: Any, side_um: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The truth of the squares of a super-resolved table ``tab``: :func:`aggregate_truth` on the grid's lattice.

    The lattice is the grid's own (:func:`stpredict.pp.grid_lattice` of the shapes ``tab`` annotates): the measured
    bins' when ``superresolve`` laid the squares on it, so each square's truth is the bins it nests; the image
    axes otherwise. ``mpp``: µm per level-0 pixel (x, y) of the image ``tab.obsm["spatial"]`` is in.
    """
    centers_um = np.asarray(tab.obsm["spatial"], float) * np.asarray(mpp, float)
    lattice = stp.pp.grid_lattice(sdata, str(tab.obs["region"].iloc[0]))
    return aggregate_truth(bins_um, counts, centers_um, side_um, columns, lattice=lattice)


def log_normalised(counts: np.ndarray, total: np.ndarray) -> np.ndarray:
    """``log1p(counts / total · 1e4)`` per row: the prediction scale (``total`` is the row's library size)."""
    return np.log1p(np.asarray(counts, np.float64) / np.maximum(np.asarray(total, np.float64), 1e-12)[:, None] * 1e4)


def score_grid(stp: Any, truth: np.ndarray, pred: np.ndarray, ok: np.ndarray) -> tuple[float, float, int]:
    """Mean and median over genes of the per-gene Pearson over the scored squares, and the genes scored."""
    if ok.sum() < 3:
        return float("nan"), float("nan"), 0
    r = stp.metrics.pearson_per_gene(truth[ok], pred[ok])
    r = r[np.isfinite(r)]
    if not len(r):
        return float("nan"), float("nan"), 0
    return float(r.mean()), float(np.median(r)), int(len(r))


def run_real(
    path: Path,
    *,
    methods: list[str],
    fullres_image: Path | None = None,
    n_genes: int = 50,
    max_epochs: int | None = None,
    out: Path | None = None,
    argv: list[str] | None = None,
) -> pd.DataFrame:
    """Run the benchmark on one Visium HD ``outs`` folder; return the rows (see the module docstring).

    Parameters
    ----------
    path
        Space Ranger HD ``outs`` folder holding ``binned_outputs/square_008um``.
    methods
        Registered predictor names (``neighbors``, ``copy``, ``ridge``, ``pixnet``, ``histosge``...).
    fullres_image
        The full-resolution H&E given to Space Ranger; ``None`` uses the hires image.
    n_genes
        Panel size of every method (the same panel for all: the first method's).
    max_epochs
        Training budget of iterative methods.
    out
        Folder for ``superres_real.{csv,md}``; ``None`` writes nothing.
    argv
        Command line, for the table's caption.

    Returns
    -------
    One row per (method, condition, grid), columns ``COLUMNS``.
    """
    import stpredict as stp

    path = Path(path)
    check_methods(methods)
    sdata = stp.io.read_visium_hd(path, bin_size=BIN_UM, fullres_image_file=fullres_image)
    bins_table = f"square_{BIN_UM:03d}um"
    bins_shapes = next(k for k in sdata.shapes if k.endswith(bins_table))
    spots_key, table_key, spot_geo = pool_visium(stp, sdata, shapes_key=bins_shapes, table_key=bins_table)
    # the measured bins in the image's µm, in the frame the grids are laid in
    bin_geo = stp.pp.spots(sdata, spots_key=bins_shapes, table_key=bins_table)
    if bin_geo.image_key != spot_geo.image_key:
        msg = f"Bins and pooled spots resolve different images ({bin_geo.image_key!r}, {spot_geo.image_key!r})."
        raise RuntimeError(msg)
    mpp = np.asarray(spot_geo.microns_per_pixel_xy, float)
    bins_um = bin_geo.centers * mpp
    source = sdata.tables[bins_table]
    counts = source[np.asarray(bin_geo.obs_names)].X  # rows in the order of the bins' centres, every gene
    gene_col = {g: i for i, g in enumerate(source.var_names)}
    print(
        f"{path}: {bin_geo.n_spots} bins of {BIN_UM} µm pooled into {spot_geo.n_spots} Visium-like spots, "
        f"{source.n_vars} genes, image {spot_geo.image_key!r} at {mpp.mean():.3g} µm/px",
        flush=True,
    )
    # detected once, the same for every call (superresolve would detect it again each time)
    tissue = stp.pp.tissue_mask(sdata, image_key=spot_geo.image_key, microns_per_pixel=spot_geo.microns_per_pixel)

    def truth_of(tab: Any, genes: list[str], side: float) -> tuple[np.ndarray, np.ndarray]:
        truth, _, ok = grid_truth(stp, sdata, tab, bins_um, counts, [gene_col[g] for g in genes], mpp, side)
        return truth, ok

    grids = [(g, {"grid": g, "tissue": tissue}, functools.partial(truth_of, side=float(g[3:-2]))) for g in GRIDS]
    df, n_genes_used = fit_and_score(
        stp, sdata, layout="visium_hd", spots_key=spots_key, table_key=table_key, methods=methods, n_genes=n_genes,
        max_epochs=max_epochs, grids=grids,
    )  # fmt: skip
    caption = (
        f"Visium HD `{path.name}` 8 µm bins pooled into {spot_geo.n_spots} Visium-like spots (55 µm, 100 µm "
        f"hexagonal), {n_genes_used} genes. Per-gene Pearson against the measured 8 µm bins aggregated to each grid "
        "square (log1p of counts per 1e4; squares ≥ 75 % covered by bins), mean and median over genes; seconds of "
        "the fit and of `superresolve`."
    )
    write_results(df, caption, out, "superres_real", argv)
    return df


def check_methods(methods: list[str]) -> None:
    """Refuse an empty method list before any reading."""
    if not methods:
        msg = "--methods is empty: give at least one method, e.g. neighbors,copy,ridge."
        raise ValueError(msg)


def pool_visium(stp: Any, sdata: Any, *, shapes_key: str, table_key: str) -> tuple[str, str, Any]:
    """Pool the regions of ``shapes_key`` into Visium-like spots (:func:`stpredict.pp.pool_to_spots`, in place).

    Returns the pooled circles' key, their table's key and their :class:`~stpredict.pp.SpotGeometry`.
    """
    stp.pp.pool_to_spots(sdata, layout="visium", shapes_key=shapes_key, table_key=table_key)
    spots_key = f"{shapes_key}_pooled_visium"
    pooled_table = f"{spots_key}_table"
    return spots_key, pooled_table, stp.pp.spots(sdata, spots_key=spots_key, table_key=pooled_table)


def fit_and_score(
    stp: Any,
    sdata: Any,
    *,
    layout: str,
    spots_key: str,
    table_key: str,
    methods: list[str],
    n_genes: int,
    max_epochs: int | None,
    grids: list[tuple[str, dict, Callable[[Any, list[str]], tuple[np.ndarray, np.ndarray]]]],
) -> tuple[pd.DataFrame, int]:
    """Fit each method on the pooled spots and score its super-resolved regions; the rows and the panel size.

    Parameters
    ----------
    stp
        The ``stpredict`` module.
    sdata
        The SpatialData holding the pooled spots (``spots_key``, ``table_key``) and the H&E.
    layout
        The ``layout`` column of the rows (``"visium_hd"``, ``"xenium"``).
    spots_key, table_key
        The pooled spots and their table: the only measurements the methods see.
    methods, n_genes, max_epochs
        As :func:`run_real`; the panel is the first method's, used by every other.
    grids
        ``(grid, superresolve keyword arguments, truth_of)`` per region set; ``truth_of(table, genes)`` gives the
        truth of the super-resolved table's rows on the prediction scale and the rows to score.

    Returns
    -------
    One row per (method, condition, grid), columns ``COLUMNS``; and the number of genes of the panel.
    """
    import pandas as pd

    genes: list[str] | None = None
    rows = []
    for method in methods:
        t0 = time.perf_counter()
        model = stp.tl.fit(
            sdata, method, genes=genes, n_genes=n_genes, spots_key=spots_key, table_key=table_key,
            max_epochs=max_epochs, seed=0,
        )  # fmt: skip
        fit_s = time.perf_counter() - t0
        genes = list(model.genes) if genes is None else genes
        for grid, kwargs, truth_of in grids:
            for condition in CONDITIONS:
                t1 = time.perf_counter()
                stp.tl.superresolve(
                    sdata, model, spots_key=spots_key, table_key=table_key, condition=condition, seed=0,
                    key_added="bench_real", **kwargs,
                )  # fmt: skip
                seconds = time.perf_counter() - t1
                tab = sdata.tables["bench_real"]
                pred = np.asarray(tab[:, genes].X, dtype=np.float64)
                truth, ok = truth_of(tab, genes)
                mean, median, n_scored = score_grid(stp, truth, pred, ok)
                rows.append({"layout": layout, "method": method, "condition": condition, "grid": grid,
                             "pcc_mean": mean, "pcc_median": median, "n_regions": int(ok.sum()),
                             "n_grid": int(len(tab)), "n_genes": n_scored, "fit_s": fit_s,
                             "seconds": seconds})  # fmt: skip
                print(f"  {method:10s} {condition:8s} {grid:8s} PCC {mean:.3f} ({int(ok.sum())} regions)", flush=True)
                del sdata.tables["bench_real"]
    return pd.DataFrame(rows, columns=COLUMNS), len(genes or [])


def write_results(df: pd.DataFrame, caption: str, out: Path | None, stem: str, argv: list[str] | None) -> str:
    """Print the markdown table and write ``<out>/<stem>.{csv,md}`` (nothing when ``out`` is ``None``)."""
    table = to_markdown(df, caption, argv)
    print(table)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        df.to_csv(out / f"{stem}.csv", index=False)
        (out / f"{stem}.md").write_text(table + "\n")
    return table


def to_markdown(df: pd.DataFrame, caption: str, argv: list[str] | None) -> str:
    """The results as the markdown table of the module docstring, after the commit, the command and ``caption``."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, check=False
    ).stdout.strip()
    cmd = " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"Commit `{commit}`, `python benchmarks/superres.py {cmd}`: {caption}",
        "",
        "| method | condition | grid | mean PCC | median PCC | n regions | fit s | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in df.itertuples():
        lines.append(
            f"| {r.method} | {r.condition} | {r.grid} | {r.pcc_mean:.3f} | {r.pcc_median:.3f} | {r.n_regions} | "
            f"{r.fit_s:.1f} | {r.seconds:.1f} |"
        )
    return "\n".join(lines)
