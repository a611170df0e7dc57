"""The core of conditioning grids on measured spots: exact overlaps, the correction kernel, the solver.

Everything here is in µm and pure numpy/scipy. :func:`overlap_matrix` builds the sparse matrix of overlap areas
between measured spots (disks) and grid regions (disks or axis-aligned squares) from a KD-tree of candidates and
closed-form areas; :func:`correction_kernel` the smooth partition of unity over the spots that carries the
correction field into every region, gaps included; :func:`solve_conditioned` finds the non-negative exact
solution, :func:`solve_blended` the blend of its linear and Shepard forms (the learned weights are in
``_condition_gate``). The public entry point is
:func:`stpredict.pp.condition_on_spots`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from scipy.spatial import cKDTree

from .._logging import get_logger

__all__ = [
    "circle_circle_area",
    "circle_square_area",
    "correction_kernel",
    "solve_blended",
    "overlap_matrix",
    "rel_error",
    "solve_conditioned",
    "solve_spots",
]

logger = get_logger(__name__)

_SELF_MIN = 0.05  # a zero spot's own kernel weight below which a region does not bound its λ


def circle_circle_area(d: np.ndarray, r1: float, r2: float) -> np.ndarray:
    """Exact intersection area of two disks of radii ``r1``, ``r2`` whose centres are ``d`` apart."""
    d = np.asarray(d, dtype=float)
    out = np.zeros_like(d)
    small, big = min(r1, r2), max(r1, r2)
    inside = d <= big - small
    out[inside] = np.pi * small**2
    lens = (d > big - small) & (d < r1 + r2)
    dl = d[lens]
    a1 = r1**2 * np.arccos(np.clip((dl**2 + r1**2 - r2**2) / (2 * dl * r1), -1.0, 1.0))
    a2 = r2**2 * np.arccos(np.clip((dl**2 + r2**2 - r1**2) / (2 * dl * r2), -1.0, 1.0))
    k = 0.5 * np.sqrt(np.clip((-dl + r1 + r2) * (dl + r1 - r2) * (dl - r1 + r2) * (dl + r1 + r2), 0.0, None))
    out[lens] = a1 + a2 - k
    return out


def _quadrant(x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    """Area of the disk of radius ``r`` at the origin within ``{u <= x, v <= y}`` (closed form)."""
    x = np.clip(x, -r, r)
    y = np.clip(y, -r, r)

    def s(u: np.ndarray) -> np.ndarray:  # ∫ sqrt(r² - u²) du
        return 0.5 * (u * np.sqrt(np.clip(r * r - u * u, 0.0, None)) + r * r * np.arcsin(np.clip(u / r, -1.0, 1.0)))

    a = np.sqrt(np.clip(r * r - y * y, 0.0, None))  # |u| < a: the line v = y cuts the disk
    # ∫_{-r}^{x} [s(u) + clamp(y, -s(u), s(u))] du, split where |u| crosses a
    full = s(x) + np.pi * r * r / 4
    outer = (s(np.minimum(x, -a)) + np.pi * r * r / 4) + np.where(x > a, s(x) - s(a), 0.0)
    middle = np.clip(np.minimum(x, a) + a, 0.0, None)
    return full + np.sign(y) * outer + y * middle


def circle_square_area(dx: np.ndarray, dy: np.ndarray, r: float, side: float) -> np.ndarray:
    """Exact intersection area of a disk of radius ``r`` and axis-aligned squares of side ``side``.

    ``dx``, ``dy``: square centre minus disk centre.
    """
    h = side / 2
    x0, x1, y0, y1 = dx - h, dx + h, dy - h, dy + h
    area = _quadrant(x1, y1, r) - _quadrant(x0, y1, r) - _quadrant(x1, y0, r) + _quadrant(x0, y0, r)
    return np.clip(area, 0.0, min(np.pi * r * r, side * side))


def overlap_matrix(
    spot_centers: np.ndarray,
    spot_diameter: float,
    region_centers: np.ndarray,
    region_kind: Literal["circle", "square"],
    region_size: float,
    *,
    region_tree: cKDTree | None = None,
    rotation_deg: float = 0.0,
) -> sp.csr_matrix:
    """Sparse ``(n_spots, n_regions)`` matrix of overlap areas (µm²) between spot disks and regions.

    Candidates come from a KD-tree of region centres (all regions within the spot radius plus the region's
    circumradius); areas are exact (lens formula for disks, closed-form disk–rectangle integral for squares).
    Squares turned by ``rotation_deg`` (squares on a rotated bin lattice) overlap a disk as the axis-aligned
    square does in their own frame, so the centre offsets are turned back by that angle first.
    Entries below 1e-9 of the smaller shape's area are dropped.
    """
    r = spot_diameter / 2
    reach = region_size / 2 if region_kind == "circle" else region_size / np.sqrt(2)
    tree = cKDTree(region_centers) if region_tree is None else region_tree
    lists = tree.query_ball_point(spot_centers, r + reach + 1e-9, return_sorted=False)
    lengths = np.fromiter((len(v) for v in lists), dtype=np.int64, count=len(lists))
    cols = np.fromiter((j for v in lists for j in v), dtype=np.int64, count=int(lengths.sum()))
    rows = np.repeat(np.arange(len(spot_centers)), lengths)
    delta = region_centers[cols] - spot_centers[rows]
    if region_kind == "circle":
        area = circle_circle_area(np.hypot(delta[:, 0], delta[:, 1]), r, region_size / 2)
        smallest = np.pi * min(r, region_size / 2) ** 2
    else:
        if rotation_deg:
            t = np.radians(rotation_deg)
            rot = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])  # turns by -rotation_deg
            delta = delta @ rot.T
        area = circle_square_area(delta[:, 0], delta[:, 1], r, region_size)
        smallest = min(np.pi * r * r, region_size**2)
    keep = area > 1e-9 * smallest
    return sp.csr_matrix((area[keep], (rows[keep], cols[keep])), shape=(len(spot_centers), len(region_centers)))


def correction_kernel(
    region_centers: np.ndarray,
    spot_centers: np.ndarray,
    sigma: float,
    *,
    k: int = 8,
    degree: Literal[0, 1] = 1,
    ridge: float = 0.05,
    tree: cKDTree | None = None,
) -> sp.csr_matrix:
    """Smooth partition of unity ``(n_regions, n_spots)``: how much each spot's correction reaches each region.

    Weights ``exp(-d² / 2σ²)`` of the ``k`` nearest spots, minus the weight of the ``(k + 1)``-th nearest (so
    the kernel stays continuous where the set of nearest spots changes), computed relative to the nearest
    spot so regions far from every spot still get a well-defined row. ``degree=0``: Shepard weights (rows
    normalised; flat near each spot). Every row stores exactly ``min(k, n_spots)`` entries (some may be 0). ``degree=1`` (default): moving least squares with a linear basis, whose
    shape functions reproduce linear fields, so a correction field has no flat spot at the spots and keeps
    its gradient across their borders; ``ridge`` shrinks the local slope (relative to the weights' spread, in
    units of σ) so that it never extrapolates far beyond the outermost spots. Each row depends on its region
    alone, so the kernel of a block of regions is those rows of the whole grid's; ``tree``: a KD-tree of
    ``spot_centers`` built once for many blocks.
    """
    n_spots = len(spot_centers)
    kk = min(k + 1, n_spots)
    d, idx = (cKDTree(spot_centers) if tree is None else tree).query(region_centers, k=kk)
    d = d.reshape(len(region_centers), kk)
    idx = idx.reshape(len(region_centers), kk)
    d2 = d**2 - d[:, :1] ** 2
    w = np.exp(-d2 / (2 * sigma**2))
    if kk > 1 and n_spots > k:
        w = np.clip(w[:, :-1] - w[:, -1:], 0.0, None)
        idx = idx[:, :-1]
    total = w.sum(1)
    bad = total <= 1e-12  # ties of all k + 1 distances: give the nearest everything
    w[bad] = 0.0
    w[bad, 0] = 1.0
    w /= w.sum(1, keepdims=True)
    if degree == 1 and w.shape[1] >= 3:
        # ψ_k(x) = w_k (1, u_k, v_k) · M(x)⁻¹ e1, with (u_k, v_k) = (s_k − x)/σ and the weighted moments
        # M = Σ w_k (1, u_k, v_k)ᵀ(1, u_k, v_k) + ridge·diag(0, 1, 1); M⁻¹e1 from the cofactors (M symmetric)
        u = (spot_centers[idx, 0] - region_centers[:, :1]) / sigma
        v = (spot_centers[idx, 1] - region_centers[:, 1:]) / sigma
        wu, wv = w * u, w * v
        a = w.sum(1)
        b, c = wu.sum(1), wv.sum(1)
        dd = (wu * u).sum(1) + ridge
        e = (wu * v).sum(1)
        f = (wv * v).sum(1) + ridge
        c0, c1, c2 = dd * f - e * e, c * e - b * f, b * e - c * dd
        det = a * c0 + b * c1 + c * c2
        w = w * (c0[:, None] + c1[:, None] * u + c2[:, None] * v) / det[:, None]
    n, kc = w.shape
    indptr = np.arange(0, n * kc + 1, kc)
    # every row keeps exactly kc entries (zeros included), so callers can reshape data/indices to (n, kc)
    return sp.csr_matrix((w.ravel(), idx.ravel(), indptr), shape=(n, n_spots))


def rel_error(wg: np.ndarray, m: np.ndarray) -> np.ndarray:
    scale = m.mean(0, keepdims=True)
    denom = np.where(m > 0, m, np.where(scale > 0, scale, 1.0))
    return np.abs(wg - m) / denom


def _lu_solve(mat: sp.spmatrix, rhs: np.ndarray) -> np.ndarray:
    mat = sp.csc_matrix(mat)
    try:
        return spla.splu(mat).solve(rhs)
    except RuntimeError:  # exactly singular: regularise the diagonal a little
        eps = 1e-9 * max(float(abs(mat).max()), 1e-300)
        return spla.splu(sp.csc_matrix(mat + eps * sp.identity(mat.shape[0]))).solve(rhs)


def _solve(mat: sp.spmatrix, rhs: np.ndarray) -> np.ndarray:
    """Jacobi-preconditioned BiCGSTAB (the systems are diagonally dominant), sparse LU when it fails."""
    mat = sp.csr_matrix(mat)
    if not rhs.any():
        return np.zeros_like(rhs)
    diag = mat.diagonal()
    if np.all(diag > 0):
        x, info = spla.bicgstab(mat, rhs, M=sp.diags(1.0 / diag), rtol=1e-13, atol=0.0, maxiter=1000)
        if info == 0 and np.all(np.isfinite(x)):
            return x
    return _lu_solve(mat, rhs)


def solve_conditioned(
    w: sp.csr_matrix, phi: sp.csr_matrix, q: np.ndarray, m: np.ndarray, *, tol: float = 1e-7, max_iter: int = 30
) -> tuple[np.ndarray, int, int]:
    """Non-negative ``g = q ⊙ max(Φ λ, 0)`` (then proportionally fitted) with ``W g = m``, gene by gene.

    ``w``: ``(S, N)`` row-normalised overlaps (no empty row); ``phi``: ``(N, S)`` kernel from
    :func:`correction_kernel`; ``q``: ``(N, G)`` positive pattern; ``m``: ``(S, G)`` non-negative targets.
    The solve (:func:`solve_spots`) involves only the regions that overlap a spot; every other region is
    ``q ⊙ max(Φ λ, 0)`` of its own row. Returns ``g``, the number of constrained regions of positive spots
    where ``Φλ < 0`` had to be clipped, and the proportional-fitting sweeps that restored exactness there.
    """
    cols = np.unique(w.indices)
    lam, g_cols, n_clipped, n_ipf = solve_spots(
        sp.csr_matrix(w[:, cols]), sp.csr_matrix(phi[cols]), q[cols], m, tol=tol, max_iter=max_iter
    )
    g = q * np.maximum(phi @ lam, 0.0)
    g[cols] = g_cols
    return g, n_clipped, n_ipf


def solve_spots(
    wc: sp.csr_matrix, phic: sp.csr_matrix, qc: np.ndarray, m: np.ndarray, *, tol: float = 1e-7, max_iter: int = 30
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """The solve of :func:`solve_conditioned` on the regions that overlap a spot: ``(λ, g there, n_clipped, n_ipf)``.

    ``wc``: ``(S, C)`` row-normalised overlaps restricted to the ``C`` regions inside some spot (no empty row);
    ``phic``: ``(C, S)`` their rows of the kernel; ``qc``: ``(C, G)`` their pattern; ``m``: ``(S, G)``.
    ``λ`` is ``(S, G)``: a region outside every spot has ``g = q ⊙ max(Φλ, 0)`` from its own kernel row.

    Spots measured at 0 force every region they overlap to 0 (the only non-negative exact solution); their
    ``λ`` is set, alternately with the linear solve of the other spots, to the largest value keeping
    ``Φλ ≤ 0`` over their regions, so the field leaves them continuously. Proportional fitting then rescales
    the regions of spots where clipping ``Φλ < 0`` removed mass; it only touches regions inside spots.
    """
    n_spots, n_cols = wc.shape
    n_genes = qc.shape[1]
    kc = int(np.diff(phic.indptr).max())
    pidx, pw = phic.indices.reshape(-1, kc), phic.data.reshape(-1, kc)
    pair = wc.tocoo()
    pair_spot, pair_reg = pair.row, pair.col
    phi_self = (pw[pair_reg] * (pidx[pair_reg] == pair_spot[:, None])).sum(1)
    g = np.zeros((n_cols, n_genes))
    lams = np.zeros((n_spots, n_genes))
    n_clipped = 0
    for j in range(n_genes):
        qj, mj = qc[:, j], m[:, j]
        if not np.any(mj > 0):
            continue
        zero = mj <= 0
        forced = np.zeros(n_cols, dtype=bool)
        forced[pair_reg[zero[pair_spot]]] = True
        qf = qj * ~forced
        mat = sp.csr_matrix(sp.csr_matrix(wc.multiply(qf[None, :])) @ phic)
        pos = ~zero & (wc @ qf > 0)  # positive spots whose every region is forced to 0 cannot be met
        lam = np.zeros(n_spots)
        if pos.all():
            lam = _solve(mat, mj)
        else:
            m_pp, m_pz = mat[pos][:, pos], mat[pos][:, ~pos]
            sel = zero[pair_spot] & (phi_self > _SELF_MIN)
            s_spot, s_reg, s_self = pair_spot[sel], pair_reg[sel], phi_self[sel]
            for _ in range(max(2, max_iter // 6)):
                lam[pos] = _solve(m_pp, mj[pos] - m_pz @ lam[~pos])
                f = phic @ lam
                bound = -(f[s_reg] - s_self * lam[s_spot]) / s_self  # λ_i at which Φλ = 0 on that region
                new = np.full(n_spots, np.inf)
                np.minimum.at(new, s_spot, bound)
                new = np.where(np.isfinite(new), new, 0.0)
                change = np.abs(new[zero] - lam[zero]).max() if zero.any() else 0.0
                lam[zero] = new[zero]
                if change <= 1e-9 * max(np.abs(lam).max(), 1e-300):
                    break
            lam[pos] = _solve(m_pp, mj[pos] - m_pz @ lam[~pos])
        f_c = phic @ lam
        n_clipped += int(((f_c < 0) & ~forced).sum())
        out = qj * np.maximum(f_c, 0.0)
        out[forced] = 0.0
        g[:, j] = out
        lams[:, j] = lam
    # proportional fitting: rescale each spot's regions (shared regions by the weighted geometric mean of their
    # spots' factors) until W g = m; exact in one sweep where no region overlaps two spots, and a no-op where
    # the smooth solve above was exact (factors 1)
    area_share = sp.csr_matrix(wc.T)
    area_share = sp.csr_matrix(sp.diags(1.0 / np.maximum(np.asarray(area_share.sum(1)).ravel(), 1e-300)) @ area_share)
    member = sp.csr_matrix(wc.T, copy=True)
    member.data[:] = 1.0
    n_ipf = 0
    for _ in range(max_iter * 4):
        wg = wc @ g
        if rel_error(wg, m).max() <= tol:
            break
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(wg > 0, m / wg, 1.0)
            log_ratio = np.log(ratio)
        g = g * np.exp(area_share @ log_ratio)
        need = (wg <= 0) & (m > 0)  # every region of the spot is at 0: put the target back on the pattern
        if need.any():
            add = np.where(need, m / np.maximum(wc @ qc, 1e-300), 0.0)
            g = g + qc * (member @ add)
        n_ipf += 1
    return lams, g, n_clipped, n_ipf


def solve_blended(
    w: sp.csr_matrix,
    kernels: dict[int, sp.csr_matrix],
    q: np.ndarray,
    m: np.ndarray,
    blend: np.ndarray,
    *,
    tol: float = 1e-7,
    max_iter: int = 30,
) -> tuple[np.ndarray, int, int]:
    """``v · g₁ + (1 − v) · g₀`` per gene: the exact solutions with the linear and the Shepard kernel, blended.

    Both solutions satisfy ``W g = m`` and are non-negative, so every convex blend does too. ``kernels`` maps
    the degree (0, 1) to its :func:`correction_kernel`; only the degrees a gene needs are solved.
    """
    g = np.zeros((w.shape[1], q.shape[1]))
    n_clipped = n_ipf = 0
    for degree, share in ((1, blend), (0, 1.0 - blend)):
        cols = np.flatnonzero(share > 0)
        if not cols.size:
            continue
        gd, nc, ni = solve_conditioned(w, kernels[degree], q[:, cols], m[:, cols], tol=tol, max_iter=max_iter)
        g[:, cols] += share[cols] * gd
        n_clipped, n_ipf = n_clipped + nc, max(n_ipf, ni)
    return g, n_clipped, n_ipf
