"""Map scores: super-resolved maps against a high-resolution truth (rasterize, Pearson, SSIM)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ._per_gene import _as_2d, pearson_per_gene

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["map_pearson", "map_ssim", "rasterize"]


def rasterize(centers: Any, values: Any, bin_size: float, *, origin: Sequence[float] | None = None) -> np.ndarray:
    """Place values of points on a regular grid of ``bin_size`` (same units as ``centers``).

    Parameters
    ----------
    centers
        ``(n, 2)`` point positions, x then y.
    values
        ``(n, n_genes)`` or ``(n,)`` values of the points.
    bin_size
        Side of a grid cell.
    origin
        ``(x, y)`` corner of cell ``(0, 0)``; default: half a cell before the smallest coordinates, which
        centres a lattice of pitch ``bin_size`` in its cells. Every point must lie at or after it.

    Returns
    -------
    ``(n_genes, h, w)`` with the mean of the points falling in each cell and NaN in empty cells.

    Raises
    ------
    ValueError
        If a point lies left of or above an explicit ``origin`` (it has no cell).
    """
    c = np.asarray(centers, dtype=float)
    v = _as_2d(values)
    o = c.min(0) - bin_size / 2 if origin is None else np.asarray(origin, dtype=float)
    ij = np.floor((c - o) / bin_size).astype(int)
    before = (ij < 0).any(1)
    if before.any():
        msg = (
            f"{int(before.sum())} of {len(c)} points lie left of or above origin {tuple(o.tolist())} "
            f"(e.g. {tuple(c[before][0].tolist())}): they have no cell. Pass an origin at or before the smallest "
            "coordinates, or origin=None."
        )
        raise ValueError(msg)
    w, h = ij.max(0) + 1
    flat = ij[:, 1] * w + ij[:, 0]
    cnt = np.bincount(flat, minlength=h * w).astype(float)
    out = np.full((v.shape[1], h * w), np.nan)
    for g in range(v.shape[1]):
        s = np.bincount(flat, weights=v[:, g], minlength=h * w)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[g] = np.where(cnt > 0, s / cnt, np.nan)
    return out.reshape(v.shape[1], h, w)


def _check_maps(true_maps: Any, pred_maps: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(t, p, defined)`` with ``defined[g]`` the cells where both maps of gene ``g`` are defined."""
    t, p = np.asarray(true_maps, float), np.asarray(pred_maps, float)
    if t.shape != p.shape or t.ndim != 3:
        msg = f"true_maps {t.shape} and pred_maps {p.shape} must have the same shape (n_genes, h, w)."
        raise ValueError(msg)
    return t, p, ~(np.isnan(t) | np.isnan(p))


def map_pearson(true_maps: Any, pred_maps: Any) -> np.ndarray:
    """Per-gene Pearson over the cells of ``(genes, h, w)`` maps where both are defined.

    Each gene is scored over its own defined cells (a gene without prediction, all NaN, does not remove cells
    of the others); a gene with no defined cell is NaN. Same NaN/0 conventions as :func:`pearson_per_gene`.

    Parameters
    ----------
    true_maps, pred_maps
        ``(n_genes, h, w)`` maps on the same grid (e.g. from :func:`rasterize`); NaN marks undefined cells.

    Returns
    -------
    ``(n_genes,)`` Pearson correlations.
    """
    t, p, defined = _check_maps(true_maps, pred_maps)
    out = np.full(t.shape[0], np.nan)
    # genes sharing a mask (the usual case: one tissue mask) are scored together
    groups: dict[bytes, list[int]] = {}
    for g in range(t.shape[0]):
        if defined[g].any():
            groups.setdefault(np.packbits(defined[g]).tobytes(), []).append(g)
    for genes in groups.values():
        m = defined[genes[0]]
        out[genes] = pearson_per_gene(t[genes][:, m].T, p[genes][:, m].T)
    return out


def map_ssim(true_maps: Any, pred_maps: Any, *, win_size: int = 7) -> np.ndarray:
    """Per-gene SSIM of ``(genes, h, w)`` maps (skimage), data range from the truth.

    Cells where either map of a gene is undefined (NaN) get that map's mean over the gene's defined cells; a gene
    with no defined cell, a constant truth, or maps thinner than 3 cells is NaN.

    Parameters
    ----------
    true_maps, pred_maps
        ``(n_genes, h, w)`` maps on the same grid (e.g. from :func:`rasterize`); NaN marks undefined cells.
    win_size
        Side of skimage's sliding window (odd; shrunk to fit small maps).

    Returns
    -------
    ``(n_genes,)`` SSIM values.
    """
    from skimage.metrics import structural_similarity

    t, p, defined = _check_maps(true_maps, pred_maps)
    out = np.full(t.shape[0], np.nan)
    ws = min(win_size, *(d if d % 2 else d - 1 for d in t.shape[1:]))
    if ws < 3:
        return out
    for g in range(t.shape[0]):
        m = defined[g]
        if not m.any():
            continue
        tg = np.where(m, t[g], t[g][m].mean())
        pg = np.where(m, p[g], p[g][m].mean())
        rng = float(tg.max() - tg.min())
        if rng <= 0:
            continue
        out[g] = structural_similarity(tg, pg, data_range=rng, win_size=ws)
    return out
