"""``cross_validate``: honest protocols across and within slides, one code path for every predictor.

This module checks the call, prepares the slides and assembles the result; the argument checks are in
:mod:`._cv_args`, the folds' plans and the pooled fold in :mod:`._cv_folds`, one fold's training, prediction and
scores (here or as a Dask task) in :mod:`._cv_run`, the scoring and the result in :mod:`._cv_result`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

from .._args import check_flag, check_genes_arg, check_length, check_max_epochs, check_seed
from .._docs import doc_params
from .._logging import get_logger
from ._cohort_client import check_client, check_resources
from ._cohort_run import check_slides, open_store
from ._cv_args import CROSS_SLIDE, check_arguments
from ._cv_folds import check_split_counts, plan_folds
from ._cv_result import FOLD_COLUMNS, SCORE_COLUMNS, CVResult, Split, gene_selection_record
from ._cv_run import FoldSpec, run_folds
from ._pipeline import Compute, Elements, prepare_slides
from ._transfer import Transfer, fit_transfer

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from spatialdata import SpatialData

    from ..models._base import Predictor
    from ._pipeline import Inputs


__all__ = ["CVResult", "Split", "cross_validate"]

logger = get_logger(__name__)


@doc_params()
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
    count_split: float | None = None,
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
    client: Any = None,
    resources: Mapping[str, float] | None = None,
    raise_on_error: bool = True,
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
        One SpatialData or a list (each read with its default keys: one image, spots and table), or paths of
        SpatialData zarr stores (read lazily: the images stay on disk, read as windows are cut; never written,
        except by the embedding step of ``client``).
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
    count_split
        ``"pool"`` only: a fraction ``p`` (e.g. 0.5) splits each spot's counts into ``Binomial(counts, p)``, which
        the pools sum, and the rest, which the original spots are scored against (data thinning: for Poisson
        counts the two parts are independent, of rates ``p · λ`` and ``(1 − p) · λ``). Without it the pools
        contain the very counts they are scored against, so their count noise is also the truth's, which
        favours reproducing the pools (``"measured"``) over denoising them. Seeded by ``seed`` and the fold.
        Needs integer counts.
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
        skipped. ``None`` (the default) is :func:`~stpredict.tl.fit`'s default, so the score is that of the
        pipeline ``fit`` runs: ``"macenko"`` (``"none"``, with a warning, when a training slide has too few tissue
        pixels to estimate its stains; ``"none"`` for models that never read the image, and for stores on a
        ``client``, whose raw features are embedded once on the workers and cached in each store). Macenko costs
        one normalised embedding pass per slide and fold reference (about 1.9× a ridge ``lopo`` on mob).
    feature_norm
        ``"slide"``: each slide's embeddings standardised with its own spots' statistics (see
        :func:`stpredict.tl.fit`).
    stain_augment
        Re-stained copies of each training slide per fold (see :func:`stpredict.tl.fit`); not with ``"pool"``,
        whose pooled pseudo-spots are not spots of the slide.
    names
        Slide names for the tables (default: library ids). Repeated names get ``#i`` (the slide's position)
        appended, as in :func:`stpredict.tl.fit`.
    client
        A ``dask.distributed.Client``: each fold is one task on its workers (its training, prediction and scores),
        gathered into the same result as without it (with the same seeds, the same folds, scores and genes; only
        the seconds differ). The slides are resolved and checked here first and sent to every worker once; a store's
        image is read by the workers from the store. With an embedding-based model the spots are embedded once per
        slide before the folds: store paths on the workers (:func:`~stpredict.tl.embed_cohort`, the features cached
        in each store, as :func:`~stpredict.tl.fit` does with a client), in-memory slides here; models that read
        pixels train on the workers. One progress bar over the folds (the per-fold bars stay off) and the Dask
        dashboard link logged. ``None``: the folds run here, one after the other.
    {resources}
        The folds' tasks and the stores' embedding tasks ask for them; ``params["resources"]`` records them.
    raise_on_error
        A fold that fails raises its error (at once here; with a client as soon as it comes back, the other folds
        cancelled). ``False``: the failure is logged as a warning, the other folds finish, and the result lists it
        in :attr:`CVResult.failures` (fold, slide, seconds, worker, error) with no scores for it.
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
    check_flag("raise_on_error", raise_on_error)
    check_client(client, "cross_validate")
    res = check_resources(client, resources, "cross_validate")
    items = check_slides(slides, writes=False)
    protocol, proto_pred = check_arguments(protocol, condition, model, model_kwargs, n_slides=len(items), groups=groups)
    run = Compute(device, batch_size, num_workers, progress, dense)
    if client is None:
        run.check_here()  # with a client the folds run on the workers: only the device's name is checked
    cross = protocol in CROSS_SLIDE
    on_client = client is not None and any(isinstance(it, str) for it in items)
    if stain is None and cross and not on_client:  # fit's default: score the pipeline fit runs
        transfer = fit_transfer(None, feature_norm, stain_augment)
    else:
        transfer = Transfer(stain, feature_norm, stain_augment)
    if transfer.stain != "none" and not cross:
        logger.info("cv %s: stain=%r is the identity within one slide; skipped.", protocol, transfer.stain)
        transfer = Transfer("none", transfer.feature_norm, transfer.stain_augment)
    # validate and resolve every slide before any heavy work
    options = {"backbone": backbone, "weights": weights, "patch_size_um": patch_size_um, "names": names}
    inputs = _prepare(items, proto_pred, transfer, options)
    split = check_split_counts(count_split, protocol, inputs)
    if client is not None:
        inputs = _embed_stores(
            items, inputs, run, client, lambda bb: _prepare(items, proto_pred, transfer, {**options, "backbone": bb}),
            resources=res,
        )  # fmt: skip
    base = [(sl, geo, inputs.table(i)) for i, (sl, geo) in enumerate(zip(inputs.slides, inputs.geos, strict=True))]
    plan = plan_folds(protocol, base, groups, fraction, seed)
    spec = FoldSpec(protocol, proto_pred, inputs, plan, run, genes, n_genes, pool, condition, max_epochs, seed, split)
    outs, failures = run_folds(spec, client=client, resources=res, progress=progress, raise_on_error=raise_on_error)
    done = sorted(outs)
    rows = [outs[f].scores for f in done]
    fold_rows = [outs[f].row for f in done]
    splits: list[Split] = [outs[f].split for f in done]
    fold_genes = {f: outs[f].genes for f in done}
    fold_how = {f: outs[f].how for f in done}
    params = {
        "model": proto_pred.name,
        "config": proto_pred.config,
        "protocol": protocol,
        "seed": seed,
        "n_genes": n_genes,
        "fraction": fraction if protocol == "hide_spots" else None,
        "pool": pool if protocol == "pool" else None,
        "condition": condition if protocol == "pool" else None,
        "count_split": split,
        "groups": list(groups) if groups is not None else None,
        "stain": inputs.transfer.stain,  # as applied: the default may have fallen back to "none"
        "feature_norm": inputs.transfer.feature_norm,
        "stain_augment": inputs.transfer.stain_augment,
        "backbone": inputs.backbone_params or None,
        "max_epochs": max_epochs,
        "embed_seconds": round(inputs.cache.seconds if inputs.cache is not None else 0.0, 3),
        "resources": res,
        "gene_selection": gene_selection_record(fold_how),
    }
    scores = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=SCORE_COLUMNS)
    folds = pd.DataFrame(fold_rows) if fold_rows else pd.DataFrame(columns=FOLD_COLUMNS)  # every fold failed
    return CVResult(scores, folds, splits, fold_genes, params, failures)


def _prepare(
    items: Sequence[str | SpatialData], predictor: Predictor, transfer: Transfer, options: dict[str, Any]
) -> Inputs:
    """The slides' inputs (a store opened here, its images lazy), checked before any heavy work."""
    sdatas = [open_store(it) if isinstance(it, str) else it for it in items]
    return prepare_slides(sdatas, predictor, **options, transfer=transfer)


def _embed_stores(
    items: Sequence[str | SpatialData],
    inputs: Inputs,
    run: Compute,
    client: Any,
    again: Callable[[Any], Inputs],
    *,
    resources: Mapping[str, float] | None,
) -> Inputs:
    """Embed the stores on the client's workers (each task asking for ``resources``), cached in each store.

    When any store got new features, the inputs are prepared ``again`` (the stores re-read, the backbone passed as
    resolved, not loaded again) and the workers' seconds count in the call's embedding time.
    """
    from ._cohort import embed_on_client

    stores = [it for it in items if isinstance(it, str)]
    if not stores or inputs.backbone is None or inputs.stains is not None:
        return inputs  # nothing to embed, a model that reads pixels, or embeddings of each fold's normalised slides
    status = embed_on_client(
        stores, inputs.backbone, patch_size_um=inputs.patch_size_um, elements=Elements(), run=run, client=client,
        resources=resources,
    )  # fmt: skip
    done = status["status"] == "done"
    if not done.any():  # all "cached": the stores opened here hold the features already
        return inputs
    inputs = again(inputs.backbone)
    if inputs.cache is not None:
        inputs.cache.add_seconds(float(status.loc[done, "seconds"].sum()))
    return inputs
