"""Condition a super-resolved grid on the measured spots it refines: measured spots are the truth at their scale.

A grid prediction ``p`` (image-only, linear normalised units) is turned into ``g = q ⊙ r``: ``q`` is the
image pattern blended per gene with a flat one (weight ``w`` learned on the slide), ``r ≥ 0`` a smooth
multiplicative correction field (linear, Shepard, or a learned blend of both), solved so that every measured spot's overlap-area-weighted mean of ``g``
equals its measured value. See :func:`condition_on_spots` for the math.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree

from .._logging import get_logger
from ._condition_core import correction_kernel, overlap_matrix, rel_error, solve_blended
from ._condition_gate import check_weights, resolve_weights
from ._denoise import denoise_measured

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

__all__ = ["ConditionResult", "condition_on_spots"]

logger = get_logger(__name__)


@dataclass
class ConditionResult:
    """A grid prediction conditioned on the measured spots (see :func:`condition_on_spots`).

    Attributes
    ----------
    values
        ``(n_regions, n_genes)`` conditioned expression, linear normalised units, ``>= 0``.
    std
        ``(n_regions, n_genes)`` carried standard deviation (linear units), or ``None`` without an input std.
    weights
        ``(n_genes,)`` image share ``w`` ∈ [0, 1] of each gene's pattern (0: consistent interpolation only).
    max_rel_error, mean_rel_error
        Achieved consistency: ``|W g − m| / m`` over constrained spots and genes (a zero ``m`` is compared with
        the gene's mean measured value instead).
    rel_error
        ``(n_genes,)`` largest relative error per gene.
    overlap
        ``(n_spots, n_regions)`` sparse ``W``: overlap areas, rows normalised (empty rows: unconstrained spots).
    coverage
        ``(n_regions,)`` share of each region's area inside measured spots (0: a gap region).
    constrained
        ``(n_spots,)`` True for spots that overlap at least one region (the others constrain nothing).
    gate
        Diagnostics of the learned weights (per-gene arrays): ``slope``, ``t2`` (squared t statistic of the
        slope), ``pcc_image`` and ``pcc_flat`` (Pearson r, on log1p, of the image-conditioned and of the flat
        interpolation against the measured spots, one pooling octave up), ``n_blocks``; empty when ``gate`` was
        given.
    pitch_um, sigma_um
        Spot spacing and the width of the correction kernel, in µm.
    n_clipped, n_ipf
        Region × gene entries inside positive spots where the smooth field went negative and was clipped
        (the proportional fitting then restored exactness there, with a local seam), and the sweeps it took.
    degree_weights
        ``(n_genes,)`` share ``v`` of the linear correction kernel (1: seamless linear field; 0: Shepard,
        flat inside each spot), learned or given (``degree``).
    degree_info
        Diagnostics of the learned ``v`` (``slope``: the unshrunk blend, ``t2``, ``n_blocks``); empty when given.
    denoise
        With ``library_size``: the record of :func:`denoise_measured` (per-gene dispersion, shrinkage), the
        level the grid agrees with; ``None`` when it agrees with the raw measurement.
    """

    values: np.ndarray
    std: np.ndarray | None
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

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable record for ``.uns["stpredict"]`` (weights, consistency, kernel)."""
        return {
            "condition": "measured",
            "weights": self.weights.astype(float).tolist(),
            "weight_median": float(np.median(self.weights)) if self.weights.size else float("nan"),
            "max_rel_error": self.max_rel_error,
            "mean_rel_error": self.mean_rel_error,
            "n_constrained_spots": int(self.constrained.sum()),
            "n_unconstrained_spots": int((~self.constrained).sum()),
            "gap_fraction": float(np.mean(self.coverage == 0)) if self.coverage.size else 0.0,
            "pitch_um": self.pitch_um,
            "sigma_um": self.sigma_um,
            "n_clipped": self.n_clipped,
            "n_ipf": self.n_ipf,
            **({"denoise": self.denoise} if self.denoise is not None else {}),
            **(
                {
                    "degree_weights": self.degree_weights.astype(float).tolist(),
                    "degree_weight_median": float(np.median(self.degree_weights)),
                }
                if self.degree_weights is not None and self.degree_weights.size
                else {}
            ),
        }


def _check(name: str, a: np.ndarray, shape: tuple[int | None, ...], *, nonneg: bool) -> np.ndarray:
    a = np.asarray(a, dtype=float)
    if a.ndim != len(shape) or any(s is not None and s != t for s, t in zip(shape, a.shape, strict=True)):
        want = "(" + ", ".join("n" if s is None else str(s) for s in shape) + ")"
        msg = f"{name} has shape {a.shape}, expected {want}."
        raise ValueError(msg)
    if not np.all(np.isfinite(a)):
        msg = f"{name} holds {int((~np.isfinite(a)).sum())} NaN or infinite values."
        raise ValueError(msg)
    if nonneg and (a < 0).any():
        msg = (
            f"{name} holds {int((a < 0).sum())} negative values (min {a.min():.3g}): conditioning works on "
            "non-negative linear normalised expression (expm1 of log1p values); clip or convert it first."
        )
        raise ValueError(msg)
    return a


def condition_on_spots(
    pred: ArrayLike,
    region_centers_um: ArrayLike,
    spot_centers_um: ArrayLike,
    measured: ArrayLike,
    *,
    region_kind: Literal["circle", "square"],
    region_size_um: float,
    spot_diameter_um: float,
    std: ArrayLike | None = None,
    gate: Literal["learn"] | float | ArrayLike = "learn",
    spot_pattern: ArrayLike | None = None,
    smoothing: float = 0.35,
    pitch_um: float | None = None,
    tol: float = 1e-6,
    max_iter: int = 30,
    degree: Literal[0, 1, "learn"] | float | ArrayLike = "learn",
    overlap: sp.spmatrix | None = None,
    library_size: ArrayLike | None = None,
) -> ConditionResult:
    """Condition an image-only grid prediction on the measured spots, exactly and without seams.

    Let ``A`` be the ``(n_spots, n_regions)`` exact overlap areas between spot disks and regions (disk–disk
    lens areas or closed-form disk–square areas, candidates from a KD-tree) and ``W`` its row-normalised form,
    so ``(W g)_i`` is the overlap-area-weighted mean of the regions covering spot ``i``. The result ``g``
    satisfies ``W g = m`` for every gene and every spot that overlaps the grid (relative error ≤ ``tol``).

    1. **Gate.** Per gene, ``q = (1 − w)·mean(p) + w·p`` blends the image pattern with a flat one; ``w = 0``
       gives the consistent interpolation of the measured spots, ``w = 1`` the conditioned image. With
       ``gate="learn"`` ``w`` comes from the slide itself, one pooling octave up (:func:`learn_gate`): 2×2
       blocks of spots are conditioned on their means with the image pattern at the spots and with the flat
       one, scored against the measured spots, and the image's slope is James–Stein shrunk to 0 unless the
       evidence is clear.
    2. **Smooth exact correction.** ``g = q ⊙ max(Φλ, 0)``, where ``Φ`` (:func:`correction_kernel`) is a
       moving-least-squares partition of unity over the spots (Gaussian weights of σ = ``smoothing`` × pitch,
       8 nearest spots, continuous taper, linear reproduction): the correction field ``r = Φλ`` is smooth,
       keeps its gradient across spot borders and reaches the gaps, which belong to no row of ``W``, so gap
       and constrained regions are continuous. ``λ`` solves the sparse ``n_spots × n_spots`` system
       ``W diag(q) Φ λ = m`` (Jacobi-preconditioned BiCGSTAB, sparse LU as fallback). The same system with
       Shepard weights (``degree=0``: flat near each spot, the change concentrated in the gaps) gives a second
       exact solution; per gene the result is ``v · g₁ + (1 − v) · g₀``, exact as well, with ``v`` learned one
       octave up (:func:`learn_degree`, shrunk toward the seamless ``v = 1``) unless ``degree`` fixes it.
    3. **Zeros and non-negativity.** A spot measured at 0 forces every region it overlaps to 0 (the only
       non-negative solution); its ``λ`` is set, alternately with the solve of the other spots, to the largest
       value keeping ``Φλ ≤ 0`` on its regions, so the field leaves it continuously. Negative ``Φλ`` is
       clipped to 0 (continuous too).
    4. **Polish.** Proportional fitting (each spot's regions rescaled by ``m / W g``; regions shared by
       several spots by the area-weighted geometric mean of their factors) until the relative error is below
       ``tol``. Its factors are 1 wherever step 2 was exact, so it only acts, with a local step, at spots where
       clipping removed mass (``n_clipped``); it is exact in one sweep when no region overlaps two spots.

    A circle of the spot's own diameter centred on a spot (a pseudo-spot at a measured spot, on a grid of
    spot-sized circles) stands for that spot: its row of ``W`` is that region alone, so it takes the measured
    value. On :func:`make_grid`'s ``ps4`` (circles of half the diameter) the pseudo-spot at a measured spot
    is the only region overlapping it, so it takes the measured value too.

    Parameters
    ----------
    pred
        ``(n_regions, n_genes)`` image-only prediction in linear normalised units (expm1 of log1p of
        ``normalize_total(1e4)``), ``>= 0``.
    region_centers_um
        ``(n_regions, 2)`` region centres (x, y) in µm.
    spot_centers_um
        ``(n_spots, 2)`` measured spot centres (x, y) in µm, same origin.
    measured
        ``(n_spots, n_genes)`` measured normalised expression, linear units, ``>= 0``.
    region_kind
        ``"circle"`` (pseudo-spots, ``region_size_um`` = diameter) or ``"square"`` (bins, side).
    region_size_um
        Region diameter or side in µm.
    spot_diameter_um
        Measured spot diameter in µm.
    std
        Optional ``(n_regions, n_genes)`` standard deviation of ``pred``, linear units. It is scaled by the same
        multiplicative correction as the values (``g / q``) and shrunk where the spots pin the regions down:
        by ``sqrt(Π_i (1 − W_ij² / Σ_k W_ik²))``, the conditional sd of one of exchangeable regions given their
        weighted mean (0 for a region that is a whole spot, ~1 for small bins and in the gaps). Measurement
        noise of the spots is not added.
    gate
        ``"learn"`` (default), or the image share ``w``: a number or an ``(n_genes,)`` array in [0, 1]
        (``1``: the image pattern only, ``0``: interpolation only).
    spot_pattern
        ``(n_spots, n_genes)`` image-only prediction at the measured spots (linear) used to learn the gate;
        pass out-of-fold predictions when the predictor was fit on these spots. ``None``: the overlap-weighted
        mean of ``pred`` over each spot (``W @ pred``), which is in-sample for a model fit on the same spots.
    smoothing
        Width σ of the correction kernel in units of the spot pitch (0.35: a spot's weight falls to ~2 % at
        its neighbours' centres, which keeps the system diagonally dominant on square and hexagonal lattices;
        larger values smooth more but let ``λ`` oscillate).
    pitch_um
        Spot spacing in µm; ``None``: the median nearest-neighbour distance of the spots.
    tol
        Largest relative consistency error accepted (the result records the error achieved).
    max_iter
        Rounds of the zero-spot update per gene (``max_iter // 6``, at least 2); the proportional fitting
        gets ``4 × max_iter`` sweeps.
    degree
        The correction kernel: ``1`` moving least squares (a linear field, seamless across spot borders);
        ``0`` Shepard weights (flat inside each spot, the change between spots in the gaps and at the
        borders); a number or ``(n_genes,)`` array in [0, 1] blends the two exact solutions (``v · g₁ +
        (1 − v) · g₀``, exact too); ``"learn"`` (default) learns ``v`` per gene one pooling octave up
        (:func:`~stpredict.pp._condition_gate.learn_degree`), shrunk toward 1: expression that changes at the
        spot scale gets the flatter interpolation.
    overlap
        Precomputed ``(n_spots, n_regions)`` non-negative overlap weights replacing the disk geometry (rows
        are normalised), e.g. the membership of original spots in pooled 2×2 blocks for the pooled protocol
        (regions = the original spots, "spots" = the blocks at their centroids). ``coverage`` then divides by
        the region area implied by ``region_kind``/``region_size_um``.
    library_size
        ``(n_spots,)`` total counts of each spot (the library ``measured`` was normalised to 1e4 by). When
        given, the grid agrees exactly with the measured spots **denoised** toward the image-only prediction
        at the spots (``spot_pattern``, else ``W @ pred``) by their count noise (:func:`denoise_measured`, a
        Gamma–Poisson posterior mean with a per-gene dispersion estimated from the spots), instead of with
        the raw measurement; the gate is still learned from the raw measurement. ``rel_error`` and
        ``max_rel_error`` then measure agreement with the denoised level (``denoise`` holds its record).

    Returns
    -------
    A :class:`ConditionResult`; ``.summary()`` is the record for ``uns``.

    Raises
    ------
    ValueError
        On shape mismatches, NaN or infinite values, negative ``measured``/``pred``/``std``, a ``gate``
        outside [0, 1], fewer than 2 spots, or when no region overlaps any measured spot.

    Examples
    --------
    >>> import numpy as np
    >>> from stpredict.pp import condition_on_spots
    >>> spots = np.array([[x, y] for x in range(50, 1000, 100) for y in range(50, 1000, 100)], float)
    >>> xs = np.arange(4, 1000, 8.0)
    >>> bins = np.array([[x, y] for x in xs for y in xs])
    >>> rng = np.random.default_rng(0)
    >>> m = rng.gamma(2.0, 1.0, (len(spots), 3))
    >>> res = condition_on_spots(
    ...     np.ones((len(bins), 3)), bins, spots, m, region_kind="square", region_size_um=8, spot_diameter_um=55
    ... )
    >>> bool(np.allclose(res.overlap @ res.values, m, rtol=1e-4))
    True
    """
    measured = _check("measured", measured, (None, None), nonneg=True)
    n_spots, n_genes = measured.shape
    pred = _check("pred", pred, (None, n_genes), nonneg=True)
    n_regions = pred.shape[0]
    rxy = _check("region_centers_um", region_centers_um, (n_regions, 2), nonneg=False)
    sxy = _check("spot_centers_um", spot_centers_um, (n_spots, 2), nonneg=False)
    std_in = None if std is None else _check("std", std, (n_regions, n_genes), nonneg=True)
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

    if overlap is not None:
        area = sp.csr_matrix(overlap, dtype=float)
        if area.shape != (n_spots, n_regions) or (area.data < 0).any() or not np.all(np.isfinite(area.data)):
            msg = f"overlap must be a non-negative finite ({n_spots}, {n_regions}) matrix, got shape {area.shape}."
            raise ValueError(msg)
    else:
        area = overlap_matrix(sxy, spot_diameter_um, rxy, region_kind, region_size_um)
    if (
        overlap is None
        and region_kind == "circle"
        and abs(region_size_um - spot_diameter_um) <= 1e-6 * spot_diameter_um
    ):
        # a pseudo-spot that is the spot's own disk stands for it: its value is the measurement
        d, near = cKDTree(rxy).query(sxy)
        same = d <= 1e-6 * spot_diameter_um
        if same.any():
            keep = sp.diags((~same).astype(float))
            own = sp.csr_matrix(
                (np.full(int(same.sum()), np.pi * spot_diameter_um**2 / 4), (np.flatnonzero(same), near[same])),
                shape=area.shape,
            )
            area = sp.csr_matrix(keep @ area + own)
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

    scale = pred.mean(0)
    flat = scale <= 0
    scale = np.where(flat, 1.0, scale)
    if spot_pattern is None:
        at_spots = w @ pred
    else:
        at_spots = _check("spot_pattern", spot_pattern, (n_spots, n_genes), nonneg=True)[idx]
    weights, blend, gate_info, degree_info = resolve_weights(
        gate_w, degree_w, sxy[idx], m, at_spots, pitch=pitch_um, smoothing=smoothing, tol=tol
    )
    weights[flat] = 0.0
    q = (1.0 - weights) * scale + weights * pred
    q = np.maximum(q, 1e-6 * scale)

    denoise = None
    if library_size is not None:
        lib = _check("library_size", library_size, (n_spots,), nonneg=True)[idx]
        den = denoise_measured(m, lib, at_spots)
        m, denoise = den.values, den.summary()
    kernels = {
        d: correction_kernel(rxy, sxy[idx], sigma, degree=d)
        for d in (0, 1)
        if ((blend > 0) if d == 1 else (blend < 1)).any()
    }
    g, n_clipped, n_ipf = solve_blended(w, kernels, q, m, blend, tol=min(tol, 1e-6) * 0.1, max_iter=max_iter)
    err = rel_error(w @ g, m)
    if err.max() > tol:
        logger.warning("condition: consistency error %.2g exceeds tol %.2g.", err.max(), tol)

    std_out = None
    if std_in is not None:
        sq = w.multiply(w).tocsr()
        norm2 = np.asarray(sq.sum(1)).ravel()
        share = sp.csr_matrix(sp.diags(1.0 / norm2) @ sq)
        with np.errstate(divide="ignore"):
            share.data = np.log(np.clip(1.0 - share.data, 0.0, None))
        shrink = np.exp(np.asarray(share.sum(0)).ravel())
        std_out = std_in * (g / q) * np.sqrt(shrink)[:, None]

    region_area = np.pi * region_size_um**2 / 4 if region_kind == "circle" else region_size_um**2
    return ConditionResult(
        values=g,
        std=std_out,
        weights=weights,
        max_rel_error=float(err.max()) if err.size else 0.0,
        mean_rel_error=float(err.mean()) if err.size else 0.0,
        rel_error=err.max(0) if err.size else np.zeros(n_genes),
        overlap=w_full,
        coverage=np.asarray(area.sum(0)).ravel() / region_area,
        constrained=constrained,
        gate=gate_info,
        pitch_um=float(pitch_um),
        sigma_um=float(sigma),
        n_clipped=n_clipped,
        n_ipf=n_ipf,
        denoise=denoise,
        degree_weights=blend,
        degree_info=degree_info,
    )
