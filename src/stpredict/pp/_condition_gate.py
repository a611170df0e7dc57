"""The learned weights of conditioning, one pooling octave up: the image's share and the kernel's degree.

Both are learned on the slide itself, without truth below the spot scale: 2×2 blocks of measured spots are
conditioned on their means and scored against the spots, as the grid is conditioned on the spots and would be
scored against finer truth. Estimates are James–Stein shrunk toward a default (image share 0, the seamless
linear kernel) unless the evidence is clear.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from .._logging import get_logger
from ._condition_core import correction_kernel, solve_blended, solve_conditioned

__all__ = ["check_weights", "learn_degree", "learn_gate", "resolve_weights"]

logger = get_logger(__name__)


def _blocks(xy: np.ndarray, pitch: float) -> np.ndarray:
    """Block label of each spot: 2×2 cells of its lattice (square cells of two pitches off a lattice)."""
    from ._grid import fit_lattice

    try:
        key = np.floor_divide(fit_lattice(xy).coords, 2)
    except ValueError:
        key = np.floor((xy - xy.min(0)) / (2 * pitch)).astype(np.int64)
    return np.unique(key, axis=0, return_inverse=True)[1].ravel()


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(0)
    b = b - b.mean(0)
    den = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(0) / den, np.nan)


def _octave(spot_xy: np.ndarray, pitch: float, smoothing: float) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """One pooling octave up: ``(W_blocks, block centroids, spots in multi-spot blocks)``."""
    labels = _blocks(spot_xy, pitch)
    n_blocks = int(labels.max()) + 1
    counts = np.bincount(labels, minlength=n_blocks)
    n_spots = len(spot_xy)
    wb = sp.csr_matrix((1.0 / counts[labels], (labels, np.arange(n_spots))), shape=(n_blocks, n_spots))
    return wb, wb @ spot_xy, counts[labels] > 1


def _shrunk_slope(r_true: np.ndarray, r_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slope of ``r_true`` on ``r_pred`` through the origin, its squared t, and the James–Stein factor."""
    ss = np.maximum((r_pred**2).sum(0), 1e-300)
    slope = (r_true * r_pred).sum(0) / ss
    resid = ((r_true - slope * r_pred) ** 2).sum(0) / max(len(r_true) - 1, 1)
    t2 = slope**2 * ss / np.maximum(resid, 1e-300)
    return slope, t2, np.clip(1.0 - 1.0 / np.maximum(t2, 1e-300), 0.0, 1.0)


def learn_degree(
    spot_xy: np.ndarray, measured: np.ndarray, *, pitch: float, smoothing: float, tol: float
) -> tuple[np.ndarray, dict[str, Any]]:
    """Per-gene share ``v`` of the linear (smooth) kernel against the Shepard (flat-in-each-spot) one.

    One pooling octave up, as :func:`learn_gate`: a flat pattern conditioned on the 2×2 block means with each
    kernel, scored against the measured spots on log1p. ``v`` is the least-squares blend of the two
    interpolations, shrunk toward the smooth default 1 by positive-part James–Stein on the departure
    ``1 − v``: a slide whose expression is not smooth between spots (tissue that changes at the spot scale)
    gets the flatter interpolation, a smooth one keeps the seamless linear field.
    """
    wb, centroid, multi = _octave(spot_xy, pitch, smoothing)
    n_genes = measured.shape[1]
    if multi.sum() < 5:
        return np.ones(n_genes), {"n_blocks": 0}
    mb = wb @ measured
    flat = np.broadcast_to(np.maximum(measured.mean(0), 1e-12), measured.shape)
    sols = {}
    for degree in (0, 1):
        phi = correction_kernel(spot_xy, centroid, smoothing * 2 * pitch, degree=degree)
        sols[degree] = np.log1p(solve_conditioned(wb, phi, flat, mb, tol=tol)[0][multi])
    lm = np.log1p(measured[multi])
    # departure from the smooth default: r = lm − l1 regressed on d = l0 − l1 (slope = 1 − v)
    d = sols[0] - sols[1]
    slope, t2, js = _shrunk_slope(lm - sols[1], d)
    v = 1.0 - np.clip(slope, 0.0, 1.0) * js
    v[(d**2).sum(0) <= 1e-24] = 1.0
    return np.clip(v, 0.0, 1.0), {"n_blocks": int(wb.shape[0]), "slope": 1.0 - slope, "t2": t2}


def learn_gate(
    spot_xy: np.ndarray,
    measured: np.ndarray,
    pattern: np.ndarray,
    *,
    pitch: float,
    smoothing: float,
    tol: float,
    blend: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Per-gene image share ``w`` from one pooling octave up: 2×2 blocks of spots → the spots themselves.

    Both the image pattern at the spots and a flat pattern are conditioned on the block means (with the
    kernel blend ``blend`` of :func:`learn_degree`, default the linear kernel); on log1p, the refinement the
    image adds over the flat interpolation (``r_pred``) is regressed through the origin on the true
    refinement (``r_true = measured − flat``), and the slope is shrunk by positive-part James–Stein,
    ``w = clip(slope · max(0, 1 − 1/t²), 0, 1)``, so a gene whose image pattern does not clearly help gets 0.
    """
    wb, centroid, multi = _octave(spot_xy, pitch, smoothing)
    n_genes = measured.shape[1]
    blend = np.ones(n_genes) if blend is None else np.asarray(blend, dtype=float)
    mb = wb @ measured
    scale = pattern.mean(0)
    scale = np.where(scale > 0, scale, 1.0)
    q_img = np.maximum(pattern, 1e-6 * scale)
    kernels = {
        d: correction_kernel(spot_xy, centroid, smoothing * 2 * pitch, degree=d)
        for d in (0, 1)
        if ((blend > 0) if d == 1 else (blend < 1)).any()
    }
    c_img, *_ = solve_blended(wb, kernels, q_img, mb, blend, tol=tol)
    c_flat, *_ = solve_blended(wb, kernels, np.broadcast_to(scale, pattern.shape), mb, blend, tol=tol)
    info: dict[str, Any] = {"n_blocks": int((np.bincount(_blocks(spot_xy, pitch)) > 1).sum())}
    if multi.sum() < 5:
        logger.warning("condition: fewer than 5 spots in multi-spot blocks; the image share is set to 0.")
        zero = np.zeros(n_genes)
        info.update(slope=zero, t2=zero, pcc_image=zero * np.nan, pcc_flat=zero * np.nan)
        return zero, info
    lm, li, lf = np.log1p(measured[multi]), np.log1p(c_img[multi]), np.log1p(c_flat[multi])
    r_true, r_pred = lm - lf, li - lf
    slope, t2, js = _shrunk_slope(r_true, r_pred)
    weight = np.clip(slope * js, 0.0, 1.0)
    weight[(r_pred**2).sum(0) <= 1e-24] = 0.0  # the image adds nothing (flat or all-zero pattern)
    info.update(slope=slope, t2=t2, pcc_image=_pearson(li, lm), pcc_flat=_pearson(lf, lm))
    return weight, info


def check_weights(value: Any, name: str, n_genes: int) -> np.ndarray | None:
    """``None`` for ``"learn"``, else the ``(n_genes,)`` weights in [0, 1]; raises before any work otherwise."""
    if isinstance(value, str):
        if value != "learn":
            msg = f"{name} must be 'learn', a number or an array of weights in [0, 1], got {value!r}."
            raise ValueError(msg)
        return None
    out = np.broadcast_to(np.asarray(value, dtype=float), (n_genes,)).copy()
    if not np.all((out >= 0) & (out <= 1)):
        msg = f"{name} weights must lie in [0, 1]."
        raise ValueError(msg)
    return out


def resolve_weights(
    gate: np.ndarray | None,
    degree: np.ndarray | None,
    spot_xy: np.ndarray,
    measured: np.ndarray,
    pattern: np.ndarray,
    *,
    pitch: float,
    smoothing: float,
    tol: float,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any], dict[str, Any]]:
    """``(image share, kernel blend, gate diagnostics, degree diagnostics)``: given (checked) or learned.

    ``None`` learns the weight (:func:`learn_degree` first, then :func:`learn_gate` with that blend); fewer
    than 8 constrained spots learn nothing: the linear kernel, and image share 0.
    """
    n_genes = measured.shape[1]
    few = len(spot_xy) < 8
    degree_info: dict[str, Any] = {}
    if degree is None:
        if few:
            degree = np.ones(n_genes)
        else:
            degree, degree_info = learn_degree(spot_xy, measured, pitch=pitch, smoothing=smoothing, tol=tol)
    gate_info: dict[str, Any] = {}
    if gate is None:
        if few:
            logger.warning("condition: fewer than 8 constrained spots; the image share is set to 0.")
            gate = np.zeros(n_genes)
        else:
            gate, gate_info = learn_gate(
                spot_xy, measured, pattern, pitch=pitch, smoothing=smoothing, tol=tol, blend=degree
            )
    return gate, degree, gate_info, degree_info
