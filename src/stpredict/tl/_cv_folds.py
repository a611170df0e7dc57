"""The folds of :func:`~stpredict.tl.cross_validate`: hidden spots, pooled pseudo-spots and the plan of each protocol."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..models._base import Regions, SlideData
from ._condition import CONDITIONED
from ._embedding_loop import compute_embeddings
from ._models import fresh_copy, train
from ._oof import cross_fit
from ._pipeline import spot_kind
from ._targets import NoGenesError, preprocessing_record, select_genes, targets

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..models._base import Predictor
    from ._pipeline import Compute, Inputs

__all__ = [
    "GATE_FOLDS",
    "check_split_counts",
    "hide_spots_split",
    "no_genes_error",
    "plan_folds",
    "pool_fold",
    "pool_spots",
    "split_counts",
]


GATE_FOLDS = 5  # spatial folds of the out-of-fold pool predictions the conditioning's gate learns from


def check_split_counts(count_split: float | None, protocol: str, inputs: Inputs) -> float | None:
    """``count_split`` checked before any work: a fraction in (0, 1), ``"pool"`` only, integer counts."""
    if count_split is None:
        return None
    if isinstance(count_split, bool) or not isinstance(count_split, int | float) or not 0 < count_split < 1:
        msg = f"count_split must be a fraction in (0, 1) (e.g. 0.5) or None, got {count_split!r}."
        raise ValueError(msg)
    if protocol != "pool":
        msg = f"count_split splits the pools' counts from the truth's: it applies to protocol='pool', not {protocol!r}."
        raise ValueError(msg)
    for i, (sl, geo) in enumerate(zip(inputs.slides, inputs.geos, strict=True)):
        X = inputs.table(i).X[geo.rows]
        data = X.data if hasattr(X, "data") and not isinstance(X, np.ndarray) else np.asarray(X).ravel()
        if data.size and np.issubdtype(data.dtype, np.floating) and (data != np.round(data)).any():
            msg = (
                f"count_split splits each spot's counts binomially, but table {geo.table_key!r} of slide "
                f"{sl.name!r} holds non-integer values: pass raw integer counts, or count_split=None."
            )
            raise ValueError(msg)
    return float(count_split)


def split_counts(counts: Any, fraction: float, seed: Any) -> tuple[Any, Any]:
    """Two independent parts of integer ``counts``: ``Binomial(counts, fraction)`` and the rest (data thinning).

    For Poisson counts of rate ``λ`` the parts are independent Poisson counts of rates ``fraction · λ`` and
    ``(1 − fraction) · λ``: one can be the input and the other the truth, with independent noise.
    """
    import scipy.sparse as sp

    X = sp.csr_matrix(counts)
    n = np.rint(X.data).astype(np.int64)
    part = X.copy().astype(np.float32)
    part.data = np.random.default_rng(seed).binomial(n, fraction).astype(np.float32)
    rest = X.copy().astype(np.float32)
    rest.data = (n - part.data).astype(np.float32)
    part.eliminate_zeros()
    rest.eliminate_zeros()
    return part, rest


def hide_spots_split(n: int, fraction: float, seed: int | None) -> tuple[np.ndarray, np.ndarray]:
    """``(train, test)`` indices: ``test = perm[: int(n * fraction)]`` of ``default_rng(seed).permutation(n)``.

    Raises ``ValueError`` unless ``0 < fraction < 1`` and both sides hold at least one of the ``n`` spots.
    """
    if not 0 < fraction < 1:
        msg = f"fraction must be in (0, 1), got {fraction}."
        raise ValueError(msg)
    k = int(n * fraction)
    if not 0 < k < n:
        side = "test" if k == 0 else "training"
        msg = (
            f"fraction={fraction} of {n} spots hides int({n} * {fraction}) = {k} spots: the {side} side would be "
            f"empty. Use a fraction with 1 <= int(n * fraction) <= n - 1 (here {1 / n:.3g} <= fraction < 1)."
        )
        raise ValueError(msg)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[k:]), np.sort(perm[:k])


def pool_spots(slide_counts: Any, centers_px: np.ndarray, groups: np.ndarray) -> tuple[Any, np.ndarray, np.ndarray]:
    """Pool spots into pseudo-spots: counts summed, centres averaged.

    Returns ``(pooled_counts, pooled_centers, membership)`` with ``membership[i]`` the pseudo-spot of spot i.
    """
    import scipy.sparse as sp

    uniq, member = np.unique(groups, axis=0, return_inverse=True)
    member = member.ravel()
    P = sp.csr_matrix((np.ones(len(member)), (member, np.arange(len(member)))), shape=(len(uniq), len(member)))
    pooled = P @ sp.csr_matrix(slide_counts)
    sizes = np.asarray(P.sum(1)).ravel()
    centers = (P @ np.asarray(centers_px, dtype=float)) / sizes[:, None]
    return pooled, centers, member


def _array_coords(table, rows: np.ndarray, centers_px: np.ndarray) -> np.ndarray:
    """Integer ``(x, y)`` coordinates with one spot per unit step along each axis, for ``pool`` blocks.

    Array coordinates (``array_x``/``array_y`` of ST, ``array_col``/``array_row`` of Visium) as they are on a
    square array. On a hexagonal array (every ``x + y`` of one parity: Visium's ``array_col`` steps by 2 along
    a row, odd rows offset by 1), ``x`` is halved so that consecutive spots of a row are consecutive integers.
    Without array coordinates, the fitted lattice's (one spot per lattice point).
    """
    for a, b in (("array_x", "array_y"), ("array_col", "array_row")):
        if a in table.obs and b in table.obs:
            xy = np.column_stack([table.obs[a].to_numpy()[rows], table.obs[b].to_numpy()[rows]]).astype(int)
            if _hexagonal(xy):
                xy[:, 0] = np.floor_divide(xy[:, 0], 2)
            return xy
    from ..pp._grid import fit_lattice

    return fit_lattice(centers_px).coords


def _hexagonal(xy: np.ndarray) -> bool:
    """Whether integer array coordinates are hexagonal (doubled columns): all ``x + y`` of one parity."""
    return len(xy) > 1 and np.unique((xy[:, 0] + xy[:, 1]) % 2).size == 1


def no_genes_error(f: int, protocol: str, slide: str, n_train: int, given: bool) -> ValueError:  # noqa: FBT001
    what = (
        "none of the given genes is measured in the test slide"
        if given
        else f"no gene is detected (counts > 0 in at least 3 and 1% of its {n_train} training spots)"
    )
    hint = {
        "hide_spots": "use a smaller fraction",
        "pool": "use a smaller pool or a larger slide",
    }.get(protocol, "use more or larger training slides")
    msg = (
        f"cross_validate fold {f} ({protocol}, test slide {slide!r}): {what}, so there is no gene to learn. "
        f"{hint.capitalize()}, or pass genes=[...]."
    )
    return ValueError(msg)


def plan_folds(protocol, base, groups, fraction, seed):
    n = len(base)
    allidx = {j: np.arange(base[j][0].n) for j in range(n)}
    plan = []
    if protocol == "leave_one_section_out":
        for i in range(n):
            train = [j for j in range(n) if j != i]
            plan.append((i, train, allidx, allidx[i]))
    elif protocol == "leave_one_patient_out":
        g = list(groups)
        for i in range(n):
            train = [j for j in range(n) if g[j] != g[i]]
            if not train:
                msg = "leave_one_patient_out needs at least two patients."
                raise ValueError(msg)
            plan.append((i, train, allidx, allidx[i]))
    elif protocol == "hide_spots":
        for i in range(n):
            tr, te = hide_spots_split(base[i][0].n, fraction, seed)
            plan.append((i, [i], {i: tr}, te))
    else:
        for i in range(n):
            plan.append((i, [i], allidx, allidx[i]))
    return plan


def pool_fold(
    proto: Predictor,
    inputs: Inputs,
    i: int,
    k: int,
    *,
    panel_request: tuple[Sequence[str] | None, int],
    context: np.ndarray | None,
    run: Compute,
    max_epochs: int | None,
    seed: int | None,
    fold: int = 0,
    condition: str = "none",
    count_split: float | None = None,
):
    """Fit on pooled pseudo-spots of slide ``i``, predict its original spots (embedded as ``context``).

    With ``count_split``, the pools sum a binomial part of each spot's counts (:func:`split_counts`, seeded by
    ``seed`` and ``fold``) and the spots are scored against the rest.

    With ``condition="measured"`` (or ``"denoised"``) the predictions are conditioned on the pooled values the way
    ``superresolve`` conditions a grid on measured spots: each pooled pseudo-spot's members (equal weights)
    average, in linear units, to its measured value (:func:`stpredict.pp.condition_on_spots` with the
    membership as the overlap). The gate learns the image's share from out-of-fold predictions of the pools
    (``GATE_FOLDS`` spatially blocked refits, counted in the fit time), as ``superresolve`` does from
    ``stp.tl.predict``'s out-of-fold predictions.
    """
    import anndata as ad

    sl, geo, table = inputs.slides[i], inputs.geos[i], inputs.table(i)
    genes, n_genes = panel_request
    arr = _array_coords(table, geo.rows, geo.centers)
    groups = np.floor_divide(arr, k)
    counts = table.X[geo.rows]
    truth, truth_rows = table, geo.rows
    if count_split is not None:
        counts, held = split_counts(counts, count_split, None if seed is None else [seed, fold])
        truth, truth_rows = ad.AnnData(X=held, var=pd.DataFrame(index=table.var_names)), np.arange(held.shape[0])
    pooled, centers, member = pool_spots(counts, geo.centers, groups)
    ptab = ad.AnnData(X=pooled, var=pd.DataFrame(index=table.var_names))
    rows = np.arange(ptab.n_obs)
    try:
        panel, how = select_genes([(ptab, rows)], genes if genes is not None else n_genes, n_genes=n_genes)
    except NoGenesError as e:
        raise no_genes_error(fold, "pool", sl.name, len(centers), genes is not None) from e
    if not panel:
        raise no_genes_error(fold, "pool", sl.name, len(centers), genes is not None)
    y, ylin, lib = targets(ptab, rows, panel, None)
    emb = None
    if inputs.backbone is not None:
        emb = compute_embeddings(
            sl.image_levels,
            centers,
            sl.microns_per_pixel_xy,
            inputs.backbone,
            patch_size_um=inputs.patch_size_um,
            **run.loop_kwargs(),
            desc="embed pooled",
        )
        if sl.meta.get("feature_stats") is not None:  # feature_norm="slide": the slide's spot statistics
            from ._embeddings import standardize

            emb, _ = standardize(emb, sl.meta["feature_stats"])
    sizes = np.bincount(member)
    pooled_slide = SlideData(
        name=f"{sl.name}_pool{k}",
        centers_px=centers,
        microns_per_pixel_xy=sl.microns_per_pixel_xy,
        spot_diameter_px=sl.spot_diameter_px * k,
        image_levels=sl.image_levels,
        obs_names=pd.Index([f"pool_{i}" for i in range(len(centers))]),
        genes=panel,
        y=y,
        y_linear=ylin,
        library_size=lib,
        embeddings=emb,
        meta={"pool": k, "pool_sizes": sizes, "member_centers_px": geo.centers, "membership": member},
    )
    pred = fresh_copy(proto)
    t0 = time.perf_counter()
    train(
        pred, inputs, run, slides=[pooled_slide], genes=panel, preprocessing=preprocessing_record(panel, how),
        max_epochs=max_epochs, seed=seed,
    )  # fmt: skip
    pattern = None
    if condition in CONDITIONED and pooled_slide.n >= 2 * GATE_FOLDS:
        # the gate learns the image's share from the pools: it must see the model's out-of-fold predictions
        # of them, not its fit to them (an in-sample pattern of a flexible model looks right at every pool)
        oof, *_ = cross_fit(
            proto, inputs, run, pooled_slide, n_folds=GATE_FOLDS, max_epochs=max_epochs, seed=seed,
            genes=panel, preprocessing=preprocessing_record(panel, how),
        )  # fmt: skip
        pattern = np.clip(np.expm1(np.asarray(oof, dtype=float)), 0.0, None)
    t_fit = time.perf_counter() - t0
    regions = Regions(geo.centers, spot_kind(sl), sl.spot_diameter_um, "spots", context)
    t0 = time.perf_counter()
    mean, _ = pred.predict(pooled_slide, regions)
    if condition in CONDITIONED:
        mean = _condition_on_pools(mean, pooled_slide, sl, member, denoise=condition == "denoised", pattern=pattern)
    t_pred = time.perf_counter() - t0
    y_true, _, _ = targets(truth, truth_rows, panel, None)
    return y_true, mean, panel, how, len(centers), t_fit, t_pred, list(pooled_slide.obs_names)


def _condition_on_pools(
    mean: np.ndarray,
    pooled: SlideData,
    sl: SlideData,
    member: np.ndarray,
    *,
    denoise: bool = False,
    pattern: np.ndarray | None = None,
) -> np.ndarray:
    """Condition log1p predictions of the member spots on their pooled pseudo-spots (equal member weights).

    With ``denoise``, on the pooled values denoised toward the members' predictions averaged over each pool by
    their count noise. ``pattern``: out-of-fold predictions of the pools (linear) for the gate (``None``: the
    members' predictions averaged over each pool, in-sample).
    """
    import scipy.sparse as sp

    from ..pp._condition import condition_on_spots

    n_pool, n = len(pooled.centers_px), len(member)
    W = sp.csr_matrix((np.ones(n), (member, np.arange(n))), shape=(n_pool, n))
    lin = np.clip(np.expm1(np.asarray(mean, dtype=float)), 0.0, None)
    spot_um = np.asarray(sl.centers_px) * np.asarray(sl.microns_per_pixel_xy)
    pool_um = np.asarray(pooled.centers_px) * np.asarray(sl.microns_per_pixel_xy)
    res = condition_on_spots(
        lin, spot_um, pool_um, np.asarray(pooled.y_linear, dtype=float), region_kind="circle",
        region_size_um=sl.spot_diameter_um, spot_diameter_um=pooled.spot_diameter_um, overlap=W,
        library_size=np.asarray(pooled.library_size, dtype=float) if denoise else None, spot_pattern=pattern,
    )  # fmt: skip
    return np.log1p(res.values).astype(np.float32)
