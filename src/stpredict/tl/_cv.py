"""``cross_validate``: honest protocols across and within slides, one code path for every predictor."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from .._logging import get_logger
from ..metrics import score_table, summarize
from ..models._base import Regions, SlideData
from ._core import resolve_model
from ._inputs import (
    NoGenesError,
    build_slide,
    preprocessing_record,
    resolve_backbone,
    select_genes,
    spot_embeddings,
    targets,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from spatialdata import SpatialData

    from ..models._base import Predictor
    from ..models.backbones import Backbone

__all__ = ["CVResult", "Split", "cross_validate", "hide_spots_split", "pool_spots"]

logger = get_logger(__name__)

Protocol = Literal["leave_one_section_out", "leave_one_patient_out", "hide_spots", "pool"]
_ALIASES = {"loso": "leave_one_section_out", "lopo": "leave_one_patient_out", "hide": "hide_spots"}


@dataclass
class Split:
    """One fold: which slide(s) train, which spots are scored."""

    fold: int
    test_slide: int
    train_slides: list[int]
    train_obs: dict[int, list[str]] = field(default_factory=dict)
    test_obs: list[str] = field(default_factory=list)


@dataclass
class CVResult:
    """Per-fold, per-gene scores of one model under one protocol, with everything needed to reproduce them.

    Attributes
    ----------
    scores
        One row per (fold, gene): ``fold``, ``slide``, ``gene``, ``pearson``, ``spearman``, ``mse``, ``mae``,
        ``truth_var``, ``n``.
    folds
        One row per fold: slide, number of train/test spots, genes, how they were chosen (``gene_selection``), fit
        and predict seconds, mean PCC.
    splits
        The :class:`Split` of every fold (train and test spot names).
    genes
        The gene panel of every fold (chosen on that fold's training data only).
    params
        Model, protocol, seed and options.
    """

    scores: pd.DataFrame
    folds: pd.DataFrame
    splits: list[Split]
    genes: dict[int, list[str]]
    params: dict[str, Any]

    def summary(self) -> dict[str, float]:
        """Mean ± sd over folds of the per-fold mean PCC, and quartiles / MSE over all (fold, gene) scores.

        Genes with a constant truth in a fold (NaN PCC) are dropped from every entry (``mse`` included) and counted
        in ``n_nan_genes``.
        """
        per_fold = self.folds["pearson_mean"].to_numpy(dtype=float)
        allg = summarize(self.scores["pearson"].to_numpy())
        mse = self.scores.loc[self.scores["pearson"].notna(), "mse"].to_numpy(dtype=float)
        return {
            "pcc_mean": float(np.nanmean(per_fold)) if per_fold.size else np.nan,
            "pcc_sd_folds": float(np.nanstd(per_fold)) if per_fold.size else np.nan,
            "pcc_q25": allg["q25"],
            "pcc_median": allg["median"],
            "pcc_q75": allg["q75"],
            "mse": float(mse.mean()) if mse.size else np.nan,
            "n_folds": len(self.folds),
            "n_nan_genes": allg["n_nan"],
            "fit_seconds": float(self.folds["fit_seconds"].sum()),
            "predict_seconds": float(self.folds["predict_seconds"].sum()),
            "embed_seconds": float(self.params.get("embed_seconds", 0.0)),
        }

    def __repr__(self) -> str:
        s = self.summary()
        return (
            f"CVResult({self.params['model']!r}, {self.params['protocol']!r}: mean PCC {s['pcc_mean']:.3f} ± "
            f"{s['pcc_sd_folds']:.3f} over {s['n_folds']} folds)"
        )


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


def _fresh_predictor(proto: Predictor, device: Any, progress: bool | None) -> Predictor:  # noqa: FBT001
    """An unfitted copy of ``proto``: its own class (registered or not) with its configuration."""
    cls = type(proto)
    try:
        pred = cls(**proto.config)
    except TypeError as e:
        msg = (
            f"cross_validate re-creates {cls.__name__} per fold as {cls.__name__}(**config) and that failed ({e}): "
            "a predictor must pass its __init__ keyword arguments to Predictor.__init__ as its config."
        )
        raise TypeError(msg) from e
    pred.device = device
    pred.progress = progress
    return pred


def _no_genes_error(f: int, protocol: str, slide: str, n_train: int, given: bool) -> ValueError:  # noqa: FBT001
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


def cross_validate(
    slides: SpatialData | Sequence[SpatialData],
    model: Any = "ridge",
    *,
    protocol: str = "leave_one_section_out",
    n_genes: int = 50,
    genes: Sequence[str] | None = None,
    seed: int | None = 0,
    fraction: float = 0.5,
    pool: int = 2,
    groups: Sequence[str] | None = None,
    backbone: Any = None,
    weights: Any = None,
    patch_size_um: float | None = None,
    max_epochs: int | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    progress: bool | None = None,
    names: Sequence[str] | None = None,
    **model_kwargs: Any,
) -> CVResult:
    """Score a model under an honest protocol; genes are always chosen on the training data only.

    Protocols:

    - ``"leave_one_section_out"`` (``"loso"``): each slide in turn is predicted by a model fitted on the
      others (from its image only; its counts are never seen).
    - ``"leave_one_patient_out"`` (``"lopo"``): the same with ``groups`` naming each slide's patient.
    - ``"hide_spots"`` (``"hide"``): within each slide, ``perm[: int(n * fraction)]`` of
      ``numpy.random.default_rng(seed).permutation(n)`` (spots in table order) are hidden; the model is fitted
      on the rest of that slide and predicts the hidden spots (neighbour baselines interpolate the visible ones).
    - ``"pool"``: within each slide, ``pool × pool`` blocks of spots are merged into pseudo-spots (counts summed,
      centres averaged); the model is fitted on the pseudo-spots and predicts the original spots, which it never
      sees. Blocks are ``(x // pool, y // pool)`` of the array coordinates (``array_x``, ``array_y`` or
      ``array_col``, ``array_row``), used as they are on a square (ST) array. On a hexagonal (Visium) array, whose
      ``array_col`` steps by 2 along a row (every ``array_col + array_row`` of one parity), the column is halved
      first: ``(array_col // 2 // pool, array_row // pool)``, i.e. ``pool`` consecutive spots of ``pool``
      consecutive rows, ``pool²`` spots as on a square array. A slide without array coordinates uses the integer
      coordinates of its fitted lattice (:func:`stpredict.pp.fit_lattice`, one spot per lattice point; blocks are
      parallelograms on a hexagonal lattice). Blocks at the tissue edge hold fewer spots.

    Scores are per gene within each held-out slide (:func:`stpredict.metrics.score_table`) on log1p counts
    normalised to 1e4. A fold whose training spots leave no gene to learn raises a ``ValueError``.

    Parameters
    ----------
    slides
        One SpatialData or a list (each read with its default keys: one image, spots and table).
    model
        A registered name or an unfitted predictor (a fresh copy is fitted per fold).
    protocol
        See above.
    n_genes
        Highly variable genes (seurat_v3 on raw counts) chosen per fold on the training spots; every detected
        gene when there are no more, and genes ranked by dispersion if seurat_v3 fails on a tiny panel (each
        fold's method is in ``folds["gene_selection"]`` and ``params["gene_selection"]``).
    genes
        A fixed panel instead (it must not be chosen on test data).
    seed
        Seed of splits and models.
    fraction
        Hidden fraction for ``"hide_spots"``.
    pool
        Block side for ``"pool"``.
    groups
        Patient of each slide for ``"leave_one_patient_out"``.
    backbone, weights, patch_size_um
        Backbone of embedding-based models.
    max_epochs
        Training budget.
    device, batch_size, num_workers, progress
        As in :func:`stpredict.tl.predict`.
    names
        Slide names for the tables (default: library ids). Repeated names get ``#i`` (the slide's position)
        appended, as in :func:`stpredict.tl.fit`.
    **model_kwargs
        Predictor options.

    Returns
    -------
    A :class:`CVResult`.
    """
    sdatas = list(slides) if isinstance(slides, list | tuple) else [slides]
    protocol = _ALIASES.get(protocol, protocol)
    if protocol not in ("leave_one_section_out", "leave_one_patient_out", "hide_spots", "pool"):
        msg = f"Unknown protocol {protocol!r}: use leave_one_section_out, leave_one_patient_out, hide_spots or pool."
        raise ValueError(msg)
    proto_pred, fitted = resolve_model(model, model_kwargs)
    if fitted:
        msg = "cross_validate fits a fresh model per fold: pass a model name or an unfitted predictor."
        raise ValueError(msg)
    if protocol in ("leave_one_section_out", "leave_one_patient_out") and len(sdatas) < 2:
        msg = f"{protocol} needs at least two slides."
        raise ValueError(msg)
    if protocol in ("leave_one_section_out", "leave_one_patient_out") and proto_pred.uses_slide_targets:
        msg = f"{proto_pred.name} interpolates measured spots of the predicted slide: it has no cross-slide prediction."
        raise ValueError(msg)
    if protocol == "leave_one_patient_out" and (groups is None or len(groups) != len(sdatas)):
        msg = "leave_one_patient_out needs groups=... with one patient id per slide."
        raise ValueError(msg)
    # validate and resolve every slide before any heavy work
    base = []
    for i, s in enumerate(sdatas):
        sl, geo = build_slide(
            s,
            image_key=None,
            spots_key=None,
            table_key=None,
            microns_per_pixel=None,
            genes=None,
            layer=None,
            need_targets=True,
        )
        if names is not None:
            sl.name = str(names[i])
        base.append((sl, geo, s.tables[geo.table_key]))
    # several slides of one name (e.g. synthetic slides, all "spots"): tell them apart in the tables
    all_names = [sl.name for sl, _, _ in base]
    for i, (sl, _, _) in enumerate(base):
        if all_names.count(sl.name) > 1:
            sl.name = f"{sl.name}#{i}"
    bb = resolve_backbone(proto_pred, backbone, weights)
    patch_um = float(patch_size_um if patch_size_um is not None else (bb.default_patch_um if bb else 0.0))
    emb_cache: dict[int, np.ndarray] = {}
    emb_seconds = [0.0]

    def embeddings(i: int) -> np.ndarray | None:
        if bb is None:
            return None
        if i not in emb_cache:
            t_emb = time.perf_counter()
            sl, geo, table = base[i]
            emb_cache[i], _, _ = spot_embeddings(
                table, geo, sl.image_levels, bb, patch_size_um=patch_um, cache=False, device=device,
                batch_size=batch_size, num_workers=num_workers, progress=progress,
            )  # fmt: skip
            emb_seconds[0] += time.perf_counter() - t_emb
        return emb_cache[i]

    rows, fold_rows, splits, fold_genes, fold_how = [], [], [], {}, {}
    plan = _plan(protocol, base, groups, fraction, seed)
    for f, (test_i, train_is, train_idx, test_idx) in enumerate(plan):
        sl_test, geo_test, table_test = base[test_i]
        if protocol == "pool":
            result = _pool_fold(
                proto_pred,
                base[test_i],
                pool,
                genes,
                n_genes,
                bb,
                patch_um,
                embeddings(test_i),
                device,
                batch_size,
                num_workers,
                progress,
                max_epochs,
                seed,
                fold=f,
            )
            y_true, mean, panel, how, n_train, t_fit, t_pred, train_names = result
            test_names = list(sl_test.obs_names)
        else:
            tables = [(base[j][2], base[j][1].rows[train_idx[j]]) for j in train_is]
            try:
                panel, how = select_genes(tables, genes if genes is not None else n_genes, n_genes=n_genes)
            except NoGenesError as e:
                n_tr = sum(len(train_idx[j]) for j in train_is)
                raise _no_genes_error(f, protocol, sl_test.name, n_tr, genes is not None) from e
            if any(g not in table_test.var_names for g in panel):
                panel = [g for g in panel if g in table_test.var_names]
            if not panel:
                n_tr = sum(len(train_idx[j]) for j in train_is)
                raise _no_genes_error(f, protocol, sl_test.name, n_tr, genes is not None)
            train_slides = []
            for j in train_is:
                sl, geo, table = base[j]
                idx = train_idx[j]
                y, ylin, lib = targets(table, geo.rows[idx], panel, None)
                sub = sl.subset(idx)
                sub.genes, sub.y, sub.y_linear, sub.library_size = panel, y, ylin, lib
                emb = embeddings(j)
                sub.embeddings = None if emb is None else emb[idx]
                train_slides.append(sub)
            pred = _fresh_predictor(proto_pred, device, progress)
            pred.preprocessing = preprocessing_record(panel, how)
            t0 = time.perf_counter()
            pred.fit(train_slides, genes=panel, max_epochs=max_epochs, seed=seed)
            t_fit = time.perf_counter() - t0
            y_true, _, _ = targets(table_test, geo_test.rows[test_idx], panel, None)
            if protocol == "hide_spots":
                context = train_slides[0]
            else:
                context = sl_test.without_targets()
                context.genes = panel
                emb = embeddings(test_i)
                context.embeddings = emb
            emb_t = embeddings(test_i)
            regions = Regions(
                sl_test.centers_px[test_idx],
                "circle",
                sl_test.spot_diameter_um,
                "spots",
                None if emb_t is None else emb_t[test_idx],
            )
            t0 = time.perf_counter()
            mean, _ = pred.predict(context, regions)
            t_pred = time.perf_counter() - t0
            n_train = sum(len(train_idx[j]) for j in train_is)
            train_names = {j: list(base[j][0].obs_names[train_idx[j]]) for j in train_is}
            test_names = list(sl_test.obs_names[test_idx])
        sc = score_table(y_true, mean, panel)
        sc.insert(0, "slide", sl_test.name)
        sc.insert(0, "fold", f)
        rows.append(sc.reset_index())
        fold_genes[f] = list(panel)
        fold_how[f] = how
        s = summarize(sc["pearson"].to_numpy())
        fold_rows.append(
            {
                "fold": f,
                "slide": sl_test.name,
                "n_train": int(n_train),
                "n_test": len(y_true),
                "n_genes": len(panel),
                "gene_selection": how,
                "pearson_mean": s["mean"],
                "pearson_median": s["median"],
                "n_nan_genes": s["n_nan"],
                "fit_seconds": round(t_fit, 3),
                "predict_seconds": round(t_pred, 3),
            }
        )
        splits.append(
            Split(
                f,
                test_i,
                list(train_is),
                train_names if isinstance(train_names, dict) else {test_i: train_names},
                test_names,
            )
        )
        logger.info("cv %s fold %d (%s): mean PCC %.3f", proto_pred.name, f, sl_test.name, s["mean"])
    params = {
        "model": proto_pred.name,
        "config": proto_pred.config,
        "protocol": protocol,
        "seed": seed,
        "n_genes": n_genes,
        "fraction": fraction if protocol == "hide_spots" else None,
        "pool": pool if protocol == "pool" else None,
        "groups": list(groups) if groups is not None else None,
        "backbone": dict(bb.params(), patch_size_um=patch_um) if bb is not None else None,
        "max_epochs": max_epochs,
        "embed_seconds": round(emb_seconds[0], 3),
        "gene_selection": _gene_selection_record(fold_how),
    }
    return CVResult(pd.concat(rows, ignore_index=True), pd.DataFrame(fold_rows), splits, fold_genes, params)


def _gene_selection_record(fold_how: dict[int, str]) -> str:
    """How every fold chose its genes: one method, or each fold's."""
    hows = list(dict.fromkeys(fold_how.values()))
    if len(hows) == 1:
        return hows[0] if hows[0] == "given" else f"{hows[0]}, chosen per fold"
    return "; ".join(f"fold {f}: {h}" for f, h in fold_how.items())


def _plan(protocol, base, groups, fraction, seed):
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


def _pool_fold(
    proto,
    item,
    k,
    genes,
    n_genes,
    bb: Backbone | None,
    patch_um,
    emb_orig,
    device,
    batch_size,
    num_workers,
    progress,
    max_epochs,
    seed,
    *,
    fold: int = 0,
):
    """Fit on pooled pseudo-spots of one slide, predict its original spots."""
    import anndata as ad

    from ._inputs import compute_embeddings

    sl, geo, table = item
    arr = _array_coords(table, geo.rows, geo.centers)
    groups = np.floor_divide(arr, k)
    counts = table.X[geo.rows]
    pooled, centers, member = pool_spots(counts, geo.centers, groups)
    ptab = ad.AnnData(X=pooled, var=pd.DataFrame(index=table.var_names))
    rows = np.arange(ptab.n_obs)
    try:
        panel, how = select_genes([(ptab, rows)], genes if genes is not None else n_genes, n_genes=n_genes)
    except NoGenesError as e:
        raise _no_genes_error(fold, "pool", sl.name, len(centers), genes is not None) from e
    if not panel:
        raise _no_genes_error(fold, "pool", sl.name, len(centers), genes is not None)
    y, ylin, lib = targets(ptab, rows, panel, None)
    emb = None
    if bb is not None:
        emb = compute_embeddings(
            sl.image_levels,
            centers,
            sl.microns_per_pixel_xy,
            bb,
            patch_size_um=patch_um,
            device=device,
            batch_size=batch_size,
            num_workers=num_workers,
            progress=progress,
            desc="embed pooled",
        )
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
    pred = _fresh_predictor(proto, device, progress)
    pred.preprocessing = preprocessing_record(panel, how)
    t0 = time.perf_counter()
    pred.fit([pooled_slide], genes=panel, max_epochs=max_epochs, seed=seed)
    t_fit = time.perf_counter() - t0
    regions = Regions(geo.centers, "circle", sl.spot_diameter_um, "spots", emb_orig)
    t0 = time.perf_counter()
    mean, _ = pred.predict(pooled_slide, regions)
    t_pred = time.perf_counter() - t0
    y_true, _, _ = targets(table, geo.rows, panel, None)
    return y_true, mean, panel, how, len(centers), t_fit, t_pred, list(pooled_slide.obs_names)
