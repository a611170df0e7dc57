"""Conditioning in two parts: the spot-level solve, done once, and the regions' values, block by block.

:func:`plan_condition` does all that involves the whole grid — the overlaps, the per-gene scale (a sum over
the regions), the learned weights, and the solve of the correction coefficients ``λ`` (one per spot and gene)
with the polished values of the regions that overlap a spot — and returns a :class:`ConditionPlan`.
:meth:`ConditionPlan.values` then gives the conditioned values (and std) of any block of regions from that
block's prediction alone: a region outside every spot is ``q ⊙ max(Φλ, 0)`` of its own kernel row, a region
inside one takes its value from the solve. A grid of any size is so conditioned with memory bounded by one
block (:data:`CHUNK_ELEMENTS`), with the result of conditioning it in one piece.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree

from .._logging import get_logger
from ._condition_core import correction_kernel, overlap_matrix, rel_error, solve_spots
from ._condition_gate import check_weights, resolve_weights
from ._denoise import denoise_measured

if TYPE_CHECKING:
    from collections.abc import Iterator

    from numpy.typing import ArrayLike

__all__ = ["CHUNK_ELEMENTS", "ConditionPlan", "RegionSource", "check_array", "condition_summary", "plan_condition"]

logger = get_logger(__name__)

#: region × gene values per block (2²¹: 16 MB per float64 array; a block holds a few such arrays at once)
CHUNK_ELEMENTS = 2**21


def check_array(name: str, a: ArrayLike, shape: tuple[int | None, ...], *, nonneg: bool) -> np.ndarray:
    """``a`` as float64 with the given shape (``None``: any), finite and, with ``nonneg``, ``>= 0``; raises."""
    a = np.asarray(a, dtype=float)
    _check_shape(name, a.shape, shape)
    _check_values(name, int((~np.isfinite(a)).sum()), int((a < 0).sum()) if nonneg else 0, a.min() if a.size else 0)
    return a


def _check_shape(name: str, got: tuple[int, ...], shape: tuple[int | None, ...]) -> None:
    if len(got) != len(shape) or any(s is not None and s != t for s, t in zip(shape, got, strict=True)):
        want = "(" + ", ".join("n" if s is None else str(s) for s in shape) + ")"
        msg = f"{name} has shape {got}, expected {want}."
        raise ValueError(msg)


def _check_values(name: str, n_bad: int, n_neg: int, lowest: float) -> None:
    if n_bad:
        msg = f"{name} holds {n_bad} NaN or infinite values."
        raise ValueError(msg)
    if n_neg:
        msg = (
            f"{name} holds {n_neg} negative values (min {lowest:.3g}): conditioning works on "
            "non-negative linear normalised expression (expm1 of log1p values); clip or convert it first."
        )
        raise ValueError(msg)


class RegionSource:
    """A grid prediction read by blocks of regions, as linear float64 values (and std).

    Parameters
    ----------
    pred
        ``(n_regions, n_genes)`` prediction, any float dtype (not copied).
    std
        Optional ``(n_regions, n_genes)`` standard deviation.
    log1p
        ``pred`` and ``std`` are on the log1p scale: a block is ``clip(expm1(pred), 0)`` and ``std · (1 + value)``.
    """

    def __init__(self, pred: ArrayLike, std: ArrayLike | None = None, *, log1p: bool = False) -> None:
        self.pred = pred if isinstance(pred, np.ndarray) else np.asarray(pred, dtype=float)
        self.std = None if std is None else (std if isinstance(std, np.ndarray) else np.asarray(std, dtype=float))
        self.log1p = log1p

    def block(self, rows: slice | np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Linear values of ``rows`` and their std (``None`` without one), float64."""
        p = np.asarray(self.pred[rows], dtype=float)
        s = None if self.std is None else np.asarray(self.std[rows], dtype=float)
        if self.log1p:
            p = np.clip(np.expm1(p), 0.0, None)
            s = None if s is None else s * (1.0 + p)
        return p, s

    def scan(self, n_genes: int, rows: int) -> np.ndarray:
        """Check shapes and values (finite, ``>= 0``) block by block; the per-gene sums of the linear values."""
        _check_shape("pred", self.pred.shape, (None, n_genes))
        n = self.pred.shape[0]
        if self.std is not None:
            _check_shape("std", self.std.shape, (n, n_genes))
        counts = {"pred": [0, 0, np.inf], "std": [0, 0, np.inf]}
        total = np.zeros(n_genes)
        for start in range(0, n, rows):
            p, s = self.block(slice(start, start + rows))
            for name, a in (("pred", p), ("std", s)):
                if a is None or not a.size:
                    continue
                c = counts[name]
                c[0] += int((~np.isfinite(a)).sum())
                c[1] += int((a < 0).sum())
                c[2] = min(c[2], float(a.min()))
            total += p.sum(0)
        for name in ("pred", "std"):
            _check_values(name, *counts[name])
        return total


def condition_summary(res: Any) -> dict[str, Any]:
    """JSON-serialisable record of a conditioning (a :class:`ConditionPlan` or ``ConditionResult``)."""
    out = {
        "condition": "measured",
        "weights": res.weights.astype(float).tolist(),
        "weight_median": float(np.median(res.weights)) if res.weights.size else float("nan"),
        "max_rel_error": res.max_rel_error,
        "mean_rel_error": res.mean_rel_error,
        "n_constrained_spots": int(res.constrained.sum()),
        "n_unconstrained_spots": int((~res.constrained).sum()),
        "gap_fraction": float(np.mean(res.coverage == 0)) if res.coverage.size else 0.0,
        "pitch_um": res.pitch_um,
        "sigma_um": res.sigma_um,
        "n_clipped": res.n_clipped,
        "n_ipf": res.n_ipf,
    }
    if res.denoise is not None:
        out["denoise"] = res.denoise
    if res.degree_weights is not None and res.degree_weights.size:
        out["degree_weights"] = res.degree_weights.astype(float).tolist()
        out["degree_weight_median"] = float(np.median(res.degree_weights))
    return out


@dataclass
class ConditionPlan:
    """The global part of a conditioning (see the module); :meth:`values` conditions any block of regions.

    The attributes after ``source`` are those of :class:`~stpredict.pp.ConditionResult` that describe the
    whole grid (weights, consistency, overlap, coverage, diagnostics).
    """

    source: RegionSource = field(repr=False)
    region_xy: np.ndarray = field(repr=False)
    spot_xy: np.ndarray = field(repr=False)
    spot_tree: cKDTree = field(repr=False)
    scale: np.ndarray
    #: per kernel degree: (genes solved with it, their share, λ of shape (n_constrained_spots, len(genes)))
    lam: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(repr=False)
    #: regions inside some spot (sorted), their values and std shrink factors
    cols: np.ndarray = field(repr=False)
    g_cols: np.ndarray = field(repr=False)
    shrink_cols: np.ndarray = field(repr=False)
    rows: int
    weights: np.ndarray
    max_rel_error: float
    mean_rel_error: float
    rel_error: np.ndarray
    overlap: sp.csr_matrix = field(repr=False)
    coverage: np.ndarray = field(repr=False)
    constrained: np.ndarray = field(repr=False)
    gate: dict[str, Any] = field(default_factory=dict, repr=False)
    pitch_um: float = 0.0
    sigma_um: float = 0.0
    n_clipped: int = 0
    n_ipf: int = 0
    denoise: dict[str, Any] | None = field(default=None, repr=False)
    degree_weights: np.ndarray | None = field(default=None, repr=False)
    degree_info: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def n_regions(self) -> int:
        return len(self.region_xy)

    def chunks(self) -> Iterator[slice]:
        """Consecutive blocks of at most :attr:`rows` regions covering the grid."""
        for start in range(0, self.n_regions, self.rows):
            yield slice(start, min(start + self.rows, self.n_regions))

    def pattern(self, pred: np.ndarray) -> np.ndarray:
        """``q``: the image pattern blended with the gene's flat level by its weight (positive)."""
        q = (1.0 - self.weights) * self.scale + self.weights * pred
        return np.maximum(q, 1e-6 * self.scale)

    def values(self, rows: slice) -> tuple[np.ndarray, np.ndarray | None]:
        """Conditioned linear values ``(len(rows), n_genes)`` of a block of regions, and their std (or ``None``)."""
        pred, std_in = self.source.block(rows)
        q = self.pattern(pred)
        del pred
        g = np.zeros_like(q)
        xy = self.region_xy[rows]
        for degree, (genes, share, lam) in self.lam.items():
            phi = correction_kernel(xy, self.spot_xy, self.sigma_um, degree=degree, tree=self.spot_tree)
            g[:, genes] += share * (q[:, genes] * np.maximum(phi @ lam, 0.0))
        lo, hi = np.searchsorted(self.cols, [rows.start, rows.stop])
        inside = self.cols[lo:hi] - rows.start
        g[inside] = self.g_cols[lo:hi]
        if std_in is None:
            return g, None
        shrink = np.ones(len(g))
        shrink[inside] = self.shrink_cols[lo:hi]
        return g, std_in * (g / q) * np.sqrt(shrink)[:, None]

    def values_all(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The whole grid's conditioned values and std (float64), filled block by block (no full-size temporaries)."""
        shape = (self.n_regions, len(self.weights))
        values = np.empty(shape)
        std = None if self.source.std is None else np.empty(shape)
        for rows in self.chunks():
            values[rows], s = self.values(rows)
            if std is not None:
                std[rows] = s
        return values, std

    def result_fields(self) -> dict[str, Any]:
        """The fields of a ``ConditionResult`` other than ``values`` and ``std``."""
        names = ("weights", "max_rel_error", "mean_rel_error", "rel_error", "overlap", "coverage", "constrained",
                 "gate", "pitch_um", "sigma_um", "n_clipped", "n_ipf", "denoise", "degree_weights", "degree_info")  # fmt: skip
        return {k: getattr(self, k) for k in names}

    def summary(self) -> dict[str, Any]:
        """The record for ``.uns["stpredict"]`` (as :meth:`ConditionResult.summary`)."""
        return condition_summary(self)


def plan_condition(
    source: RegionSource,
    region_centers_um: ArrayLike,
    spot_centers_um: ArrayLike,
    measured: ArrayLike,
    *,
    region_kind: Literal["circle", "square"],
    region_size_um: float,
    spot_diameter_um: float,
    gate: Any = "learn",
    spot_pattern: ArrayLike | None = None,
    smoothing: float = 0.35,
    pitch_um: float | None = None,
    tol: float = 1e-6,
    max_iter: int = 30,
    degree: Any = "learn",
    overlap: sp.spmatrix | None = None,
    library_size: ArrayLike | None = None,
) -> ConditionPlan:
    """Everything of :func:`~stpredict.pp.condition_on_spots` that involves the whole grid, for ``source``.

    Arguments as :func:`~stpredict.pp.condition_on_spots`; the prediction and its std come from ``source``,
    read a block at a time (:data:`CHUNK_ELEMENTS`). Raises as it does.
    """
    measured = check_array("measured", measured, (None, None), nonneg=True)
    n_spots, n_genes = measured.shape
    rows = max(1, CHUNK_ELEMENTS // max(n_genes, 1))
    total = source.scan(n_genes, rows)
    n_regions = source.pred.shape[0]
    rxy = check_array("region_centers_um", region_centers_um, (n_regions, 2), nonneg=False)
    sxy = check_array("spot_centers_um", spot_centers_um, (n_spots, 2), nonneg=False)
    if region_kind not in ("circle", "square"):
        msg = f"region_kind must be 'circle' or 'square', got {region_kind!r}."
        raise ValueError(msg)
    if not (region_size_um > 0 and spot_diameter_um > 0):
        msg = f"region_size_um and spot_diameter_um must be positive, got {region_size_um} and {spot_diameter_um}."
        raise ValueError(msg)
    if n_spots < 2:
        msg = f"At least 2 measured spots are needed, got {n_spots}."
        raise ValueError(msg)
    gate_w, degree_w = check_weights(gate, "gate", n_genes), check_weights(degree, "degree", n_genes)

    area = _overlap_areas(
        overlap, rxy, sxy, region_kind=region_kind, region_size=region_size_um, spot_diameter=spot_diameter_um
    )
    row_area = np.asarray(area.sum(1)).ravel()
    constrained = row_area > 0
    if not constrained.any():
        msg = (
            f"None of the {n_regions} regions overlaps any of the {n_spots} measured spots: the grid and the spots "
            "are not in the same coordinates (both must be in µm from one origin) or the grid is off the tissue."
        )
        raise ValueError(msg)
    if not constrained.all():
        logger.info("condition: %d of %d spots overlap no region and constrain nothing.", (~constrained).sum(), n_spots)
    w_full = sp.csr_matrix(sp.diags(1.0 / np.where(constrained, row_area, 1.0)) @ area)
    idx = np.flatnonzero(constrained)
    w = sp.csr_matrix(w_full[idx])
    m = measured[idx]
    if pitch_um is None:
        pitch_um = float(np.median(cKDTree(sxy[idx]).query(sxy[idx], k=2)[0][:, 1])) if len(idx) > 1 else 1.0
    sigma = smoothing * pitch_um
    # only the regions inside some spot enter the solve; the others follow from λ block by block
    cols = np.unique(w.indices)
    wc = sp.csr_matrix(w[:, cols])

    scale = total / n_regions
    flat = scale <= 0
    scale = np.where(flat, 1.0, scale)
    pred_cols = source.block(cols)[0]
    if spot_pattern is None:
        at_spots = wc @ pred_cols
    else:
        at_spots = check_array("spot_pattern", spot_pattern, (n_spots, n_genes), nonneg=True)[idx]
    weights, blend, gate_info, degree_info = resolve_weights(
        gate_w, degree_w, sxy[idx], m, at_spots, pitch=pitch_um, smoothing=smoothing, tol=tol
    )
    weights[flat] = 0.0
    plan = ConditionPlan(
        source=source, region_xy=rxy, spot_xy=sxy[idx], spot_tree=cKDTree(sxy[idx]), scale=scale, lam={},
        cols=cols, g_cols=np.zeros((len(cols), n_genes)), shrink_cols=_shrink(wc), rows=rows, weights=weights,
        max_rel_error=0.0, mean_rel_error=0.0, rel_error=np.zeros(n_genes), overlap=w_full,
        coverage=np.asarray(area.sum(0)).ravel() / _region_area(region_kind, region_size_um), constrained=constrained,
        gate=gate_info, pitch_um=float(pitch_um), sigma_um=float(sigma), degree_weights=blend, degree_info=degree_info,
    )  # fmt: skip
    q_cols = plan.pattern(pred_cols)
    # the denoising prior: the prediction pooled over each spot, also when the gate learns from out-of-fold
    # predictions (a nearer prior: blocked out-of-fold predictions interpolate across whole missing blocks)
    prior = wc @ pred_cols if library_size is not None else None
    del pred_cols

    if library_size is not None:
        lib = check_array("library_size", library_size, (n_spots,), nonneg=True)[idx]
        den = denoise_measured(m, lib, prior)
        m, plan.denoise = den.values, den.summary()
    for deg, share in ((1, blend), (0, 1.0 - blend)):  # as solve_blended: the linear kernel, then Shepard
        genes = np.flatnonzero(share > 0)
        if not genes.size:
            continue
        phic = correction_kernel(rxy[cols], plan.spot_xy, sigma, degree=deg, tree=plan.spot_tree)
        lam, gd, nc, ni = solve_spots(
            wc, phic, q_cols[:, genes], m[:, genes], tol=min(tol, 1e-6) * 0.1, max_iter=max_iter
        )  # fmt: skip
        plan.g_cols[:, genes] += share[genes] * gd
        plan.lam[deg] = (genes, share[genes], lam)
        plan.n_clipped, plan.n_ipf = plan.n_clipped + nc, max(plan.n_ipf, ni)
    err = rel_error(wc @ plan.g_cols, m)
    if err.max() > tol:
        logger.warning("condition: consistency error %.2g exceeds tol %.2g.", err.max(), tol)
    plan.max_rel_error = float(err.max()) if err.size else 0.0
    plan.mean_rel_error = float(err.mean()) if err.size else 0.0
    plan.rel_error = err.max(0) if err.size else np.zeros(n_genes)
    return plan


def _region_area(region_kind: str, region_size_um: float) -> float:
    return np.pi * region_size_um**2 / 4 if region_kind == "circle" else region_size_um**2


def _overlap_areas(
    overlap: sp.spmatrix | None,
    rxy: np.ndarray,
    sxy: np.ndarray,
    *,
    region_kind: Literal["circle", "square"],
    region_size: float,
    spot_diameter: float,
) -> sp.csr_matrix:
    """``(n_spots, n_regions)`` overlap areas: given, or of the disks and regions (a spot's own disk stands for it)."""
    n_spots, n_regions = len(sxy), len(rxy)
    if overlap is not None:
        area = sp.csr_matrix(overlap, dtype=float)
        if area.shape != (n_spots, n_regions) or (area.data < 0).any() or not np.all(np.isfinite(area.data)):
            msg = f"overlap must be a non-negative finite ({n_spots}, {n_regions}) matrix, got shape {area.shape}."
            raise ValueError(msg)
        return area
    area = overlap_matrix(sxy, spot_diameter, rxy, region_kind, region_size)
    if region_kind == "circle" and abs(region_size - spot_diameter) <= 1e-6 * spot_diameter:
        # a pseudo-spot that is the spot's own disk stands for it: its value is the measurement
        d, near = cKDTree(rxy).query(sxy)
        same = d <= 1e-6 * spot_diameter
        if same.any():
            keep = sp.diags((~same).astype(float))
            own = sp.csr_matrix(
                (np.full(int(same.sum()), np.pi * spot_diameter**2 / 4), (np.flatnonzero(same), near[same])),
                shape=area.shape,
            )
            area = sp.csr_matrix(keep @ area + own)
    return area


def _shrink(wc: sp.csr_matrix) -> np.ndarray:
    """Per region inside some spot: ``Π_i (1 − W_ij² / Σ_k W_ik²)``, the variance left given the spots' means."""
    sq = wc.multiply(wc).tocsr()
    norm2 = np.asarray(sq.sum(1)).ravel()
    share = sp.csr_matrix(sp.diags(1.0 / norm2) @ sq)
    with np.errstate(divide="ignore"):
        share.data = np.log(np.clip(1.0 - share.data, 0.0, None))
    return np.exp(np.asarray(share.sum(0)).ravel())
