"""Condition a super-resolved grid on the measured spots it refines: measured spots are the truth at their scale.

A grid prediction ``p`` (image-only, linear normalised units) is turned into ``g = q ⊙ r``: ``q`` is the
image pattern blended per gene with a flat one (weight ``w`` learned on the slide), ``r ≥ 0`` a smooth
multiplicative correction field (linear, Shepard, or a learned blend of both), solved so that every measured spot's overlap-area-weighted mean of ``g``
equals its measured value. See :func:`condition_on_spots` for the math.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .._logging import get_logger
from ._condition_plan import RegionSource, condition_summary, plan_condition

if TYPE_CHECKING:
    import numpy as np
    import scipy.sparse as sp
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
        return condition_summary(self)


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
        pooled over each spot (``W @ pred``, also when ``spot_pattern`` is given: out-of-fold predictions from
        spatially blocked folds are a farther prior) by their count noise (:func:`denoise_measured`, a
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
    source = RegionSource(pred, std)
    plan = plan_condition(
        source, region_centers_um, spot_centers_um, measured, region_kind=region_kind, region_size_um=region_size_um,
        spot_diameter_um=spot_diameter_um, gate=gate, spot_pattern=spot_pattern, smoothing=smoothing,
        pitch_um=pitch_um, tol=tol, max_iter=max_iter, degree=degree, overlap=overlap, library_size=library_size,
    )  # fmt: skip
    values, std_out = plan.values_all()
    return ConditionResult(values=values, std=std_out, **plan.result_fields())
