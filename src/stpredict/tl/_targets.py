"""Targets and gene panels: counts normalised to 1e4 and log1p-transformed, panels chosen on training spots."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._logging import get_logger

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

__all__ = ["OUTPUT_SPACE", "TARGET_SUM", "NoGenesError", "preprocessing_record", "select_genes", "targets"]

logger = get_logger(__name__)

TARGET_SUM = 1e4
OUTPUT_SPACE = "log1p(normalize_total(1e4))"


def preprocessing_record(genes: Sequence[str], how: str) -> dict[str, Any]:
    """What the targets are, recorded with the predictor and in ``.uns``."""
    return {
        "normalize_total": TARGET_SUM,
        "log1p": True,
        "output_space": OUTPUT_SPACE,
        "gene_selection": how,
        "n_genes": len(genes),
    }


def counts_matrix(table: AnnData, layer: str | None) -> sp.csr_matrix:
    """Raw counts as CSR float64."""
    X = table.layers[layer] if layer else table.X
    return sp.csr_matrix(X, dtype=np.float64)


def targets(table: AnnData, rows: np.ndarray, genes: Sequence[str], layer: str | None) -> tuple[np.ndarray, ...]:
    """``(log1p, linear, library_size)`` of ``genes`` for table rows: normalize_total(1e4) over all genes."""
    X = counts_matrix(table, layer)[rows]
    lib = np.asarray(X.sum(1)).ravel()
    scale = np.divide(TARGET_SUM, lib, out=np.zeros_like(lib), where=lib > 0)
    idx = table.var_names.get_indexer(list(genes))
    lin = np.asarray(X[:, idx].todense()) * scale[:, None]
    return np.log1p(lin).astype(np.float32), lin.astype(np.float32), lib


def select_genes(
    tables: Sequence[tuple[AnnData, np.ndarray]],
    genes: Sequence[str] | int | None,
    *,
    layer: str | None = None,
    n_genes: int = 50,
) -> tuple[list[str], str]:
    """The gene panel: an explicit list, or the top ``n`` highly variable genes (seurat_v3) of the given rows.

    ``tables`` are ``(table, rows)`` pairs of the *training* spots only; with several slides the selection
    is batch-aware (``batch_key`` = slide) over the genes present in all of them. Only genes detected in at least
    ``max(3, 1%)`` of the spots are candidates.

    Parameters
    ----------
    tables
        ``(table, rows)`` of each training slide.
    genes
        A list of genes (``var_names``, Ensembl ids with or without version, or symbols of a ``var`` symbol
        column; returned as ``var_names``), a number of genes, or ``None`` (``n_genes``).
    layer
        Layer of raw counts (default ``X``).
    n_genes
        Number of genes when ``genes`` is ``None``.

    Returns
    -------
    ``(panel, how)``: the genes, and how they were chosen. When at most ``n`` genes are detected, all of them are
    taken (no ranking). When seurat_v3's loess fit fails (tiny panels: a few genes give it singular fits), the
    genes are ranked by dispersion (variance / mean of counts normalised to 1e4; the mean rank over slides with
    several) instead, with a logged warning; ``how`` names the method actually used.
    """
    import anndata as ad
    import scanpy as sc

    common = None
    for t, _ in tables:
        common = t.var_names if common is None else common.intersection(t.var_names, sort=False)
    if genes is not None and not isinstance(genes, int):
        genes = [str(g) for g in genes]
        if not genes:
            msg = "genes=[] asks for an empty panel: pass gene names, a number of genes, or None for n_genes."
            raise ValueError(msg)
        from .._genes import match_genes

        # symbols and versionless ids name genes too (resolved on the first table, among the shared genes)
        genes, missing = match_genes(tables[0][0].var, genes, common)
        if len(set(genes)) < len(genes):
            twice = sorted({g for g in genes if genes.count(g) > 1})
            msg = f"genes= names {twice} more than once (as an id and a symbol, or with and without a version)."
            raise ValueError(msg)
        if missing:
            from .._args import close_matches

            close = {g: close_matches(g, common) for g in missing[:5]}
            hint = "; ".join(f"{g!r}: did you mean {' or '.join(map(repr, c))}?" for g, c in close.items() if c)
            msg = (
                f"{len(missing)} requested genes are not measured in every training table (e.g. {missing[:5]}); "
                "a model cannot learn genes without measurements." + (f" Close matches: {hint}" if hint else "")
            )
            raise KeyError(msg)
        return genes, "given"
    n = int(genes) if isinstance(genes, int) else int(n_genes)
    if n < 1:
        msg = f"A panel of {n} genes was asked for (genes / n_genes): pass a positive number of genes or a list."
        raise ValueError(msg)
    parts = []
    for i, (t, rows) in enumerate(tables):
        X = counts_matrix(t, layer)[rows][:, t.var_names.get_indexer(common)]
        a = ad.AnnData(X=X, var=pd.DataFrame(index=common))
        a.obs["slide"] = str(i)
        parts.append(a)
    # spot names repeat across slides (Visium barcodes; the parts' default names always do): suffix the slide
    a = ad.concat(parts, index_unique="-") if len(parts) > 1 else parts[0]
    detected = np.asarray((a.X > 0).sum(0)).ravel()
    min_spots = max(3, int(0.01 * a.n_obs))
    a = a[:, detected >= min_spots].copy()
    if a.n_vars == 0:
        msg = (
            f"No gene is detected in at least {min_spots} of the {a.n_obs} training spots "
            f"({len(common)} genes shared by the training tables): no panel can be learned. Check that the "
            "counts layer is right (layer=...) and that the tables share gene names, or pass genes=[...]."
        )
        raise NoGenesError(msg)
    if a.n_vars <= n:
        return list(a.var_names), f"all {a.n_vars} detected genes"
    kw = {"batch_key": "slide"} if len(parts) > 1 else {}
    try:
        hvg = sc.pp.highly_variable_genes(a, flavor="seurat_v3", n_top_genes=n, inplace=False, **kw)
    except ValueError as e:  # skmisc's loess on a few genes: "There are other near singularities", "svddc failed"
        reason = e.args[0].decode(errors="replace") if e.args and isinstance(e.args[0], bytes) else str(e)
        logger.warning(
            "Highly variable genes (seurat_v3) failed on %d candidate genes (%s); ranking them by dispersion instead.",
            a.n_vars,
            reason,
        )
        return _top_dispersion(a, n, batch=len(parts) > 1), (
            f"top {n} of {a.n_vars} detected genes by dispersion (variance / mean of normalised counts) of the "
            "training spots (seurat_v3 failed)"
        )
    hvg.index = a.var_names
    rank_col = "highly_variable_rank"
    top = hvg[hvg["highly_variable"]].sort_values(rank_col) if rank_col in hvg else hvg[hvg["highly_variable"]]
    return list(top.index[:n]), f"top {n} highly variable genes (seurat_v3) of the training spots"


def _dispersion(X: sp.csr_matrix) -> np.ndarray:
    """Variance / mean of each gene's counts normalised to 1e4 (0 where the mean is 0)."""
    X = sp.csr_matrix(X, dtype=np.float64)
    lib = np.asarray(X.sum(1)).ravel()
    scale = np.divide(TARGET_SUM, lib, out=np.zeros_like(lib), where=lib > 0)
    Xn = sp.diags(scale) @ X
    mean = np.asarray(Xn.mean(0)).ravel()
    var = np.asarray(Xn.multiply(Xn).mean(0)).ravel() - mean**2
    return np.divide(var, mean, out=np.zeros_like(mean), where=mean > 0)


def _top_dispersion(a: AnnData, n: int, *, batch: bool) -> list[str]:
    """The ``n`` genes of highest dispersion; with slides, by mean within-slide rank (pooled dispersion breaks ties)."""
    pooled = _dispersion(a.X)
    if batch:
        slide = a.obs["slide"].to_numpy()
        ranks = [pd.Series(-_dispersion(a.X[slide == b])).rank(method="average").to_numpy() for b in np.unique(slide)]
        order = np.lexsort((-pooled, np.mean(ranks, axis=0)))
    else:
        order = np.argsort(-pooled, kind="stable")
    return list(a.var_names[order[:n]])


class NoGenesError(ValueError):
    """No gene of the training data is detected often enough to be learned."""
