"""``superresolve(condition=...)``: one step, for every predictor, that makes a grid agree with its measured spots."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .._keys import LAYER_PREDICTED, UNS_KEY
from .._logging import get_logger

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

    from ..models._base import SlideData
    from ..pp._grid import GridPoints
    from ..pp._spots import SpotGeometry

__all__ = ["CONDITIONED", "CONDITIONS", "apply_condition", "check_grid_finer", "resolve_condition"]

logger = get_logger(__name__)

Condition = Literal["measured", "denoised", "none"]
CONDITIONS = ("measured", "denoised", "none")
CONDITIONED = ("measured", "denoised")  # the modes that condition the grid on the measured spots


def resolve_condition(condition: str | None, slide: SlideData, genes: Sequence[str]) -> Condition:
    """The condition mode: ``"measured"``, ``"denoised"`` or ``"none"``.

    ``None`` → ``"measured"`` on a slide measuring the panel, else ``"none"``. Raises before any work when ``"measured"`` or ``"denoised"`` is asked on a slide without counts for ``genes``.
    """
    measured = slide.y_linear is not None and slide.genes is not None and list(slide.genes) == list(genes)
    if condition is None:
        return "measured" if measured else "none"
    if condition not in CONDITIONS:
        msg = f"condition must be 'measured', 'denoised' or 'none', got {condition!r}."
        raise ValueError(msg)
    if condition in CONDITIONED and not measured:
        msg = (
            f"condition={condition!r} needs the slide's counts for the model's genes, and this slide has none (an "
            "H&E-only slide, or a table that does not annotate the spots or lacks the genes): pass "
            "condition='none' for the image-only prediction."
        )
        raise ValueError(msg)
    return condition  # type: ignore[return-value]


def check_grid_finer(points: GridPoints, geo: SpotGeometry, condition: Condition, *, asked: str | None) -> Condition:
    """The condition mode for this grid: refuse to condition regions larger than the measured regions.

    A region larger than a measured spot (or bin) covers several of them, and one value cannot equal several
    measurements: exact agreement is impossible and the grid would not refine anything. Sizes compare the
    grid's diameter or side (cells: the median equal-area diameter) with the spots' (a 1 % tolerance).
    With the default (``asked`` is ``None``) such a grid gets the image-only prediction, with a warning; an
    explicit ``"measured"``/``"denoised"`` raises before any work.
    """
    if condition not in CONDITIONED or points.size_um <= geo.diameter_um * 1.01:
        return condition
    what = {"circle": "pseudo-spots", "square": "bins", "polygon": "cells"}[points.kind]
    why = (
        f"the grid {points.name!r} has {what} of {points.size_um:.3g} µm, larger than the {geo.diameter_um:.3g} µm "
        f"measured regions of {geo.spots_key!r} it would refine, so they cannot agree with the measurement"
    )
    if asked is None:
        logger.warning("superresolve: %s; the grid gets the image-only prediction (condition='none').", why)
        return "none"
    msg = (
        f"condition={condition!r}: {why}. Pass a finer grid (bin_size <= {geo.diameter_um:.3g}, 'ps4', 'ps16') "
        "or condition='none' for the image-only prediction on this grid."
    )
    raise ValueError(msg)


def _spot_pattern(table: AnnData | None, geo: SpotGeometry, model: str, genes: Sequence[str]) -> np.ndarray | None:
    """Out-of-fold predictions of the spots by the same model (``stp.tl.predict``), linear units, if stored."""
    if table is None or LAYER_PREDICTED not in table.layers:
        return None
    rec = table.uns.get(UNS_KEY, {}).get(LAYER_PREDICTED, {})
    if rec.get("model") != model or rec.get("mode") != "out-of-fold":
        return None
    cols = table.var_names.get_indexer(list(genes))
    if (cols < 0).any():
        return None
    vals = np.asarray(table.layers[LAYER_PREDICTED])[np.ix_(geo.rows, cols)]
    if not np.isfinite(vals).all():
        return None
    return np.clip(np.expm1(vals), 0.0, None)


def apply_condition(
    mean: np.ndarray,
    std: np.ndarray | None,
    *,
    slide: SlideData,
    geo: SpotGeometry,
    points: GridPoints,
    table: AnnData | None,
    model: str,
    genes: Sequence[str],
    denoise: bool = False,
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Condition a grid's log1p prediction on the measured spots: ``(mean, std, record)`` on the log1p scale.

    Works in linear normalised units (``expm1``), as :func:`stpredict.pp.condition_grid`, a block of regions at
    a time (the spot-level solve once, :func:`~stpredict.pp._condition_grid.plan_grid`): pooling the
    grid back over each measured spot (overlap-area weighted) gives its measured value; the predictor
    supplies the pattern, shrunk per gene toward a consistent interpolation where the image does not explain
    the gene (the weights are learned on the slide one pooling level up, from the model's out-of-fold spot
    predictions when ``stp.tl.predict`` stored them, else from the grid pooled over the spots). The std is
    converted to linear units (``std · (1 + value)``), carried through the correction, and converted back.
    With ``denoise``, the level is the measured spots denoised toward the grid's image-only prediction pooled
    over each spot by their count noise (:func:`stpredict.pp.denoise_measured`), not the raw measurement.
    """
    from ..pp._condition_grid import plan_grid
    from ..pp._condition_plan import RegionSource

    pattern = _spot_pattern(table, geo, model, genes)
    lib = np.asarray(slide.library_size, dtype=float) if denoise else None
    # the spot-level solve once, then the regions block by block: linear float64 inside a block, the log1p
    # results stored as float32 (no full-size float64 temporaries)
    plan = plan_grid(
        RegionSource(mean, std, log1p=True), points, geo, np.asarray(slide.y_linear, dtype=float),
        spot_pattern=pattern, library_size=lib,
    )  # fmt: skip
    out = np.empty(np.shape(mean), dtype=np.float32)
    out_std = None if std is None else np.empty(np.shape(mean), dtype=np.float32)
    for rows in plan.chunks():
        values, s = plan.values(rows)
        out[rows] = np.log1p(values)
        if out_std is not None:
            out_std[rows] = s / (1.0 + values)
    record = {
        **plan.summary(),
        "condition": "denoised" if denoise else "measured",
        "gate_from": "out-of-fold spot predictions (stp.tl.predict)"
        if pattern is not None
        else "grid pooled over the spots",
        "std": "linear std · (1 + value), scaled by the correction and each region's share of its spots",
    }
    logger.info(
        "condition=%r: consistency error max %.2g, median image weight %.2f.",
        record["condition"],
        plan.max_rel_error,
        record["weight_median"],
    )
    return out, out_std, record
