"""Super-resolution scored against real per-cell truth: a Xenium slide's cells pooled into Visium-like spots.

``python benchmarks/superres.py --real <Xenium outs> [--he-image he.ome.tif --alignment he_alignment.csv]
[--methods neighbors,copy,ridge] [--n-genes 50] [--max-epochs N] [--out benchmarks/results]``

The Xenium counterpart of the Visium HD mode (``benchmarks/_superres_real.py``), chosen by ``superres.py`` when
the folder holds ``experiment.xenium``. Protocol. The bundle is read with its post-Xenium H&E registered through
Xenium Explorer's alignment matrix (:func:`stpredict.io.read_xenium`; ``--he-image``/``--alignment``, or the
``*he_image.ome.tif`` and ``*he_imagealignment.csv`` inside the bundle); cells off the H&E are dropped by the
reader. The cells are pooled into 55 µm Visium-like spots on a 100 µm hexagonal lattice
(:func:`stpredict.pp.pool_to_spots` on the equal-area ``cell_circles``: a spot's counts are the sum of the cells
whose centroid lies in its disk), by the same code as the HD mode. These pooled spots are the only measurements
the methods see: each method is fitted once on them and predicts every cell of the segmentation
(``stp.tl.superresolve(..., grid="cells", shapes_key="cell_boundaries")``, the polygons; ``cell_circles`` when
the bundle has no boundaries), with ``condition="none"`` and ``condition="measured"``.

Truth of a cell: its own measured counts (the cell table of the bundle, matched by cell id), normalised to 1e4
over every gene of the panel and log1p-transformed — the prediction scale. Cells with no count, or not in the
table, are not scored. Score: Pearson per gene over the scored cells of the slide, then the mean and median over
genes, beside ``copy`` and ``neighbors``.

Output: printed and written to ``<out>/superres_real_xenium.{md,csv}`` (its own files, so a Visium HD result in
the same folder is kept), rows of the HD mode's format with ``layout`` ``xenium`` and ``grid`` ``cells``:
``n regions`` is the number of scored cells, ``n_grid`` the cells predicted.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from _superres_real import check_methods, fit_and_score, log_normalised, pool_visium, write_results

if TYPE_CHECKING:
    import pandas as pd

CIRCLES = "cell_circles"
BOUNDARIES = "cell_boundaries"
CELL_TABLE = "table"


def cell_truth(counts: Any, cell_ids: Any, predicted_ids: Any, columns: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Each predicted cell's own measured counts, on the prediction scale.

    Parameters
    ----------
    counts
        ``(n_cells, n_genes)`` raw counts of the measured cells (dense or sparse).
    cell_ids
        The measured cells' ids, in the rows' order.
    predicted_ids
        The ids of the predicted cells (the super-resolved table's ``obs_names``), in its rows' order.
    columns
        Genes (column indices) to return; ``None``: all. The library size is always every gene's.

    Returns
    -------
    ``(truth, ok)``: ``log1p`` of the counts normalised to 1e4 per cell, in ``predicted_ids``' order (zero for a
    cell that is not measured), and the cells to score (measured, with a non-zero total).
    """
    import pandas as pd
    import scipy.sparse as sp

    X = sp.csr_matrix(counts, dtype=np.float64)
    rows = pd.Index(np.asarray(cell_ids).astype(str)).get_indexer(np.asarray(predicted_ids).astype(str))
    has = rows >= 0
    n = len(rows)
    picked = X[rows[has]]
    total = np.zeros(n)
    total[has] = np.asarray(picked.sum(1)).ravel()
    cols = np.arange(X.shape[1]) if columns is None else np.asarray(columns)
    summed = np.zeros((n, len(cols)))
    summed[has] = picked[:, cols].toarray()
    return log_normalised(summed, total), has & (total > 0)


def run_xenium(
    path: Path,
    *,
    methods: list[str],
    he_image: Path | None = None,
    alignment: Path | None = None,
    n_genes: int = 50,
    max_epochs: int | None = None,
    out: Path | None = None,
    argv: list[str] | None = None,
) -> pd.DataFrame:
    """Run the benchmark on one Xenium output bundle; return the rows (see the module docstring).

    Parameters
    ----------
    path
        The Xenium output folder (holding ``experiment.xenium``).
    methods
        Registered predictor names (``neighbors``, ``copy``, ``ridge``, ``pixnet``, ``histosge``...).
    he_image, alignment
        The post-Xenium H&E and Xenium Explorer's alignment CSV (H&E pixels → Xenium pixels); ``None``: the
        ones inside the bundle, if any.
    n_genes
        Panel size of every method (the same panel for all: the first method's).
    max_epochs
        Training budget of iterative methods.
    out
        Folder for ``superres_real_xenium.{csv,md}``; ``None`` writes nothing.
    argv
        Command line, for the table's caption.

    Returns
    -------
    One row per (method, condition), grid ``"cells"``, columns ``_superres_real.COLUMNS``.
    """
    import stpredict as stp

    path = Path(path)
    check_methods(methods)
    t0 = time.perf_counter()
    sdata = stp.io.read_xenium(path, he_image=he_image, alignment=alignment, transcripts=False)
    if not sdata.images:
        msg = (
            f"The Xenium bundle {str(path)!r} has no H&E: pass --he-image <post-Xenium H&E> and --alignment "
            "<Xenium Explorer's alignment CSV>."
        )
        raise ValueError(msg)
    spots_key, table_key, spot_geo = pool_visium(stp, sdata, shapes_key=CIRCLES, table_key=CELL_TABLE)
    cells_key = BOUNDARIES if BOUNDARIES in sdata.shapes else CIRCLES
    source = sdata.tables[CELL_TABLE]
    gene_col = {g: i for i, g in enumerate(source.var_names)}
    print(
        f"{path}: {source.n_obs} cells pooled into {spot_geo.n_spots} Visium-like spots, {source.n_vars} genes, "
        f"image {spot_geo.image_key!r} at {spot_geo.microns_per_pixel:.3g} µm/px, predicting {cells_key!r} "
        f"(read and pooled in {time.perf_counter() - t0:.1f} s)",
        flush=True,
    )

    def truth_of(tab: Any, genes: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return cell_truth(source.X, source.obs_names, tab.obs_names, [gene_col[g] for g in genes])

    grids = [("cells", {"grid": "cells", "shapes_key": cells_key}, truth_of)]
    df, n_genes_used = fit_and_score(
        stp, sdata, layout="xenium", spots_key=spots_key, table_key=table_key, methods=methods, n_genes=n_genes,
        max_epochs=max_epochs, grids=grids,
    )  # fmt: skip
    caption = (
        f"Xenium `{path.name}`: {source.n_obs} cells pooled into {spot_geo.n_spots} Visium-like spots (55 µm, "
        f"100 µm hexagonal), {n_genes_used} genes; every cell of `{cells_key}` predicted. Per-gene Pearson against "
        "each cell's own measured counts (log1p of counts per 1e4), mean and median over genes; seconds of the fit "
        "and of `superresolve`."
    )
    write_results(df, caption, out, "superres_real_xenium", argv)
    return df
