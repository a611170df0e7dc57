"""``cross_validate``: honest protocols across and within slides, one code path for every predictor.

This module runs the folds; the argument checks are in :mod:`._cv_args`, the folds' plans and the pooled
fold in :mod:`._cv_folds`, the scoring and the result in :mod:`._cv_result`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pandas as pd

from .._args import check_genes_arg, check_length, check_max_epochs, check_seed
from .._logging import get_logger
from ..models._base import Regions
from ._cv_args import CROSS_SLIDE, check_arguments
from ._cv_folds import no_genes_error, plan_folds, pool_fold
from ._cv_result import CVResult, Split, gene_selection_record, score_fold
from ._embeddings import EmbeddingCache
from ._models import fresh_copy, train
from ._pipeline import Compute, prepare_slides, spot_kind
from ._targets import NoGenesError, preprocessing_record, select_genes, targets
from ._transfer import Transfer

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import numpy as np
    from spatialdata import SpatialData

    from ..models._base import SlideData
    from ._pipeline import Inputs


__all__ = ["CVResult", "Split", "cross_validate"]

logger = get_logger(__name__)


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
    condition: str = "none",
    groups: Sequence[str] | None = None,
    backbone: Any = None,
    weights: Any = None,
    patch_size_um: float | None = None,
    max_epochs: int | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    progress: bool | None = None,
    dense: bool | None = None,
    stain: str | None = None,
    feature_norm: str | None = None,
    stain_augment: int = 0,
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
    condition
        ``"pool"`` only: ``"none"`` scores the image-only predictions of the original spots; ``"measured"``
        conditions them on the pooled pseudo-spots first (the members of each pool average, in linear units,
        to its measured value), as :func:`stpredict.tl.superresolve` conditions a grid on measured spots;
        ``"denoised"`` on the pools' values denoised toward the prediction by their count noise.
    groups
        Patient of each slide for ``"leave_one_patient_out"``.
    backbone, weights, patch_size_um
        Backbone of embedding-based models.
    max_epochs
        Training budget.
    device, batch_size, num_workers, progress, dense
        As in :func:`stpredict.tl.predict`.
    stain
        Stain normalisation (``"macenko"``, ``"reinhard"``; ``None``/``"none"``: none), as in
        :func:`stpredict.tl.fit`: in each fold of the cross-slide protocols every slide is normalised onto a
        reference fitted on that fold's training slides only (the held-out slide's pixels never shape it).
        Within one slide (``hide_spots``, ``pool``) the reference would be the slide itself, the identity: it is
        skipped.
    feature_norm
        ``"slide"``: each slide's embeddings standardised with its own spots' statistics (see
        :func:`stpredict.tl.fit`).
    stain_augment
        Re-stained copies of each training slide per fold (see :func:`stpredict.tl.fit`); not with ``"pool"``,
        whose pooled pseudo-spots are not spots of the slide.
    names
        Slide names for the tables (default: library ids). Repeated names get ``#i`` (the slide's position)
        appended, as in :func:`stpredict.tl.fit`.
    **model_kwargs
        Predictor options.

    Returns
    -------
    A :class:`CVResult`.
    """
    check_seed(seed)
    check_max_epochs(max_epochs)
    check_genes_arg(genes, n_genes)
    check_length("patch_size_um", patch_size_um, hint=" It is the side of the window read around a spot.")
    sdatas = list(slides) if isinstance(slides, list | tuple) else [slides]
    protocol, proto_pred = check_arguments(
        protocol, condition, model, model_kwargs, n_slides=len(sdatas), groups=groups
    )
    run = Compute(device, batch_size, num_workers, progress, dense).check_here()
    transfer = Transfer(stain, feature_norm, stain_augment)
    cross = protocol in CROSS_SLIDE
    if transfer.stain != "none" and not cross:
        logger.info("cv %s: stain=%r is the identity within one slide; skipped.", protocol, transfer.stain)
        transfer = Transfer("none", transfer.feature_norm, transfer.stain_augment)
    # validate and resolve every slide before any heavy work
    inputs = prepare_slides(
        sdatas, proto_pred, backbone=backbone, weights=weights, patch_size_um=patch_size_um, names=names,
        transfer=transfer,
    )  # fmt: skip
    base = [(sl, geo, inputs.table(i)) for i, (sl, geo) in enumerate(zip(inputs.slides, inputs.geos, strict=True))]
    emb_cache: dict[int, np.ndarray | None] = {}

    def embeddings(i: int) -> np.ndarray | None:
        if i not in emb_cache:
            emb_cache[i] = inputs.spot_embeddings(i, run)
        return emb_cache[i]

    rows, fold_rows, splits, fold_genes, fold_how = [], [], [], {}, {}
    plan = plan_folds(protocol, base, groups, fraction, seed)
    for f, (test_i, train_is, train_idx, test_idx) in enumerate(plan):
        sl_test, geo_test, table_test = base[test_i]
        if protocol == "pool":
            result = pool_fold(
                proto_pred, inputs, test_i, pool, panel_request=(genes, n_genes), context=embeddings(test_i),
                run=run, max_epochs=max_epochs, seed=seed, fold=f, condition=condition,
            )  # fmt: skip
            y_true, mean, panel, how, n_train, t_fit, t_pred, train_names = result
            test_names = list(sl_test.obs_names)
        else:
            slide_of, emb_of = _fold_inputs(inputs, train_is, test_i, run, embeddings)
            sl_test = slide_of(test_i)
            tables = [(base[j][2], base[j][1].rows[train_idx[j]]) for j in train_is]
            try:
                panel, how = select_genes(tables, genes if genes is not None else n_genes, n_genes=n_genes)
            except NoGenesError as e:
                n_tr = sum(len(train_idx[j]) for j in train_is)
                raise no_genes_error(f, protocol, sl_test.name, n_tr, genes is not None) from e
            if any(g not in table_test.var_names for g in panel):
                panel = [g for g in panel if g in table_test.var_names]
            if not panel:
                n_tr = sum(len(train_idx[j]) for j in train_is)
                raise no_genes_error(f, protocol, sl_test.name, n_tr, genes is not None)
            train_slides = []
            for j in train_is:
                _, geo, table = base[j]
                idx = train_idx[j]
                y, ylin, lib = targets(table, geo.rows[idx], panel, None)
                sub = slide_of(j).subset(idx)
                sub.genes, sub.y, sub.y_linear, sub.library_size = panel, y, ylin, lib
                emb = emb_of(j)
                sub.embeddings = None if emb is None else emb[idx]
                train_slides.append(sub)
            pred = fresh_copy(proto_pred)
            t0 = time.perf_counter()
            train(
                pred, inputs, run, slides=train_slides, genes=panel, preprocessing=preprocessing_record(panel, how),
                max_epochs=max_epochs, seed=seed, full={base[j][0].name: (j, slide_of(j)) for j in train_is},
            )  # fmt: skip
            t_fit = time.perf_counter() - t0
            y_true, _, _ = targets(table_test, geo_test.rows[test_idx], panel, None)
            if protocol == "hide_spots":
                context = train_slides[0]
            else:
                context = sl_test.without_targets()
                context.genes = panel
                context.embeddings = emb_of(test_i)
            emb_t = emb_of(test_i)
            regions = Regions(
                sl_test.centers_px[test_idx],
                spot_kind(sl_test),
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
        scores, fold_row = score_fold(
            f, sl_test.name, y_true, mean, panel=panel, how=how, n_train=n_train, t_fit=t_fit, t_pred=t_pred
        )
        rows.append(scores)
        fold_rows.append(fold_row)
        fold_genes[f] = list(panel)
        fold_how[f] = how
        splits.append(
            Split(
                f,
                test_i,
                list(train_is),
                train_names if isinstance(train_names, dict) else {test_i: train_names},
                test_names,
            )
        )
        logger.info("cv %s fold %d (%s): mean PCC %.3f", proto_pred.name, f, sl_test.name, fold_row["pearson_mean"])
    params = {
        "model": proto_pred.name,
        "config": proto_pred.config,
        "protocol": protocol,
        "seed": seed,
        "n_genes": n_genes,
        "fraction": fraction if protocol == "hide_spots" else None,
        "pool": pool if protocol == "pool" else None,
        "condition": condition if protocol == "pool" else None,
        "groups": list(groups) if groups is not None else None,
        "stain": transfer.stain,
        "feature_norm": transfer.feature_norm,
        "stain_augment": transfer.stain_augment,
        "backbone": inputs.backbone_params or None,
        "max_epochs": max_epochs,
        "embed_seconds": round(inputs.cache.seconds if inputs.cache is not None else 0.0, 3),
        "gene_selection": gene_selection_record(fold_how),
    }
    return CVResult(pd.concat(rows, ignore_index=True), pd.DataFrame(fold_rows), splits, fold_genes, params)


def _fold_inputs(
    inputs: Inputs, train_is: Sequence[int], test_i: int, run: Compute, embeddings: Callable[[int], Any]
) -> tuple[Callable[[int], SlideData], Callable[[int], Any]]:
    """A fold's slides and their embeddings: as prepared, or normalised onto the fold's own stain reference.

    With a stain method, the reference is fitted on the fold's training slides and every slide of the fold is
    normalised onto it and embedded through a cache of the fold's (its dense maps are dropped with it).
    """
    if inputs.stains is None:
        return inputs.slides.__getitem__, embeddings
    reference = inputs.stains.reference([inputs.slides[j] for j in train_is])
    slides = {j: inputs.stains.normalize(inputs.slides[j], reference) for j in (*train_is, test_i)}
    cache = EmbeddingCache(inputs.backbone, inputs.patch_size_um) if inputs.backbone is not None else None
    done: dict[int, Any] = {}

    def emb_of(j: int) -> Any:
        if j not in done:
            before = cache.seconds if cache is not None else 0.0
            done[j] = inputs.slide_embeddings(j, slides[j], run, cache=cache)
            if cache is not None and inputs.cache is not None:  # the call's embedding time counts them
                inputs.cache.seconds += cache.seconds - before
        return done[j]

    return slides.__getitem__, emb_of
