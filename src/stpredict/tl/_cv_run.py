"""The folds of :func:`~stpredict.tl.cross_validate` as tasks: one fold's training, prediction and scores.

Every fold runs :func:`run_fold` on a :class:`FoldSpec`, here one after the other or one task per fold on a
Dask client (:func:`~stpredict.tl._cohort_run.run_tasks`, the cohort verbs' runner: the spec is sent to each
worker once, the slides' lazy images are read there). Seeds and inputs are the same either way, so are the folds.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

from .._logging import get_logger
from ..models._base import Regions
from ._cohort_run import error_text, run_tasks
from ._cv_folds import no_genes_error, pool_fold
from ._cv_result import FAILURE_COLUMNS, Split, score_fold
from ._embeddings import EmbeddingCache
from ._models import fresh_copy, train
from ._pipeline import spot_kind
from ._targets import NoGenesError, preprocessing_record, select_genes, targets

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import numpy as np

    from ..models._base import Predictor, SlideData
    from ._options import Compute
    from ._pipeline import Inputs

__all__ = ["FoldOut", "FoldSpec", "run_fold", "run_folds"]

logger = get_logger(__name__)


@dataclass
class FoldSpec:
    """Everything the folds of one ``cross_validate`` call share (sent to each Dask worker once).

    ``plan`` holds ``(test slide, training slides, training spots per slide, test spots)`` per fold
    (:func:`~stpredict.tl._cv_folds.plan_folds`); ``emb`` the slides' spot embeddings, computed on first use.
    """

    protocol: str
    proto: Predictor
    inputs: Inputs
    plan: list
    run: Compute
    genes: Sequence[str] | None
    n_genes: int
    pool: int
    condition: str
    max_epochs: int | None
    seed: int | None
    count_split: float | None = None
    emb: dict[int, np.ndarray | None] = field(default_factory=dict)

    def embeddings(self, i: int) -> np.ndarray | None:
        """Slide ``i``'s spot embeddings (``None`` without a backbone), computed once."""
        if i not in self.emb:
            self.emb[i] = self.inputs.spot_embeddings(i, self.run)
        return self.emb[i]

    def for_workers(self) -> FoldSpec:
        """The spec to send to the workers: the slides' embeddings computed here, per-fold progress bars off.

        Embeddings are computed for every slide unless each fold normalises its own stains; the embedding cache
        is replaced by an empty one (the features travel in ``emb``, not twice, nor the dense maps).
        """
        if self.inputs.stains is None:
            for i in range(len(self.inputs.slides)):
                self.embeddings(i)
        inputs = self.inputs
        if inputs.cache is not None:
            inputs = dataclasses.replace(inputs, cache=EmbeddingCache(inputs.backbone, inputs.patch_size_um))
        run = dataclasses.replace(self.run, progress=False)
        return dataclasses.replace(self, inputs=inputs, run=run, emb=dict(self.emb))


@dataclass
class FoldOut:
    """What one fold gives back: its scores, its row of ``folds``, its genes and split, the seconds it embedded."""

    scores: pd.DataFrame
    row: dict[str, Any]
    genes: list[str]
    how: str
    split: Split
    embed_seconds: float


def run_fold(f: int, spec: FoldSpec) -> FoldOut:
    """Fit a fresh copy of the predictor on fold ``f``'s training spots, predict and score its test spots."""
    inputs = spec.inputs
    # this thread's embedding seconds: a worker's threads share the scattered inputs and their cache
    before = inputs.cache.thread_seconds() if inputs.cache is not None else 0.0
    test_i, train_is, train_idx, test_idx = spec.plan[f]
    if spec.protocol == "pool":
        sl_test = inputs.slides[test_i]
        result = pool_fold(
            spec.proto, inputs, test_i, spec.pool, panel_request=(spec.genes, spec.n_genes),
            context=spec.embeddings(test_i), run=spec.run, max_epochs=spec.max_epochs, seed=spec.seed, fold=f,
            condition=spec.condition, count_split=spec.count_split,
        )  # fmt: skip
        y_true, mean, panel, how, n_train, t_fit, t_pred, train_names = result
        test_names = list(sl_test.obs_names)
    else:
        sl_test, y_true, mean, panel, how, n_train, t_fit, t_pred, train_names = _slide_fold(f, spec)
        test_names = list(sl_test.obs_names[test_idx])
    scores, row = score_fold(
        f, sl_test.name, y_true, mean, panel=panel, how=how, n_train=n_train, t_fit=t_fit, t_pred=t_pred
    )
    split = Split(
        f,
        test_i,
        list(train_is),
        train_names if isinstance(train_names, dict) else {test_i: train_names},
        test_names,
    )
    after = inputs.cache.thread_seconds() if inputs.cache is not None else 0.0
    return FoldOut(scores, row, list(panel), how, split, after - before)


def _slide_fold(f: int, spec: FoldSpec) -> tuple:
    """A fold of the cross-slide protocols or of ``hide_spots``: fit on spots of slides, predict spots of one."""
    inputs, genes, n_genes = spec.inputs, spec.genes, spec.n_genes
    test_i, train_is, train_idx, test_idx = spec.plan[f]
    geo_test, table_test = inputs.geos[test_i], inputs.table(test_i)
    slide_of, emb_of = _fold_inputs(inputs, train_is, test_i, spec.run, spec.embeddings)
    sl_test = slide_of(test_i)
    tables = [(inputs.table(j), inputs.geos[j].rows[train_idx[j]]) for j in train_is]
    n_tr = sum(len(train_idx[j]) for j in train_is)
    try:
        panel, how = select_genes(tables, genes if genes is not None else n_genes, n_genes=n_genes)
    except NoGenesError as e:
        raise no_genes_error(f, spec.protocol, sl_test.name, n_tr, genes is not None) from e
    if any(g not in table_test.var_names for g in panel):
        panel = [g for g in panel if g in table_test.var_names]
    if not panel:
        raise no_genes_error(f, spec.protocol, sl_test.name, n_tr, genes is not None)
    train_slides = []
    for j in train_is:
        idx = train_idx[j]
        y, ylin, lib = targets(inputs.table(j), inputs.geos[j].rows[idx], panel, None)
        sub = slide_of(j).subset(idx)
        sub.genes, sub.y, sub.y_linear, sub.library_size = panel, y, ylin, lib
        emb = emb_of(j)
        sub.embeddings = None if emb is None else emb[idx]
        train_slides.append(sub)
    pred = fresh_copy(spec.proto)
    t0 = time.perf_counter()
    train(
        pred, inputs, spec.run, slides=train_slides, genes=panel, preprocessing=preprocessing_record(panel, how),
        max_epochs=spec.max_epochs, seed=spec.seed, full={inputs.slides[j].name: (j, slide_of(j)) for j in train_is},
    )  # fmt: skip
    t_fit = time.perf_counter() - t0
    y_true, _, _ = targets(table_test, geo_test.rows[test_idx], panel, None)
    if spec.protocol == "hide_spots":
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
    train_names = {j: list(inputs.slides[j].obs_names[train_idx[j]]) for j in train_is}
    return sl_test, y_true, mean, panel, how, n_tr, t_fit, t_pred, train_names


def _fold_inputs(
    inputs: Inputs, train_is: Sequence[int], test_i: int, run: Compute, embeddings: Callable[[int], Any]
) -> tuple[Callable[[int], SlideData], Callable[[int], Any]]:
    """A fold's slides and their embeddings: as prepared, or normalised onto the fold's own stain reference.

    With a stain method, the reference is fitted on the fold's training slides and every slide of the fold is
    normalised onto it and embedded through a cache of the fold's (its dense maps are dropped with it). Folds
    whose reference is the same (the same training slides, as the folds of one held-out group) share the
    embeddings, kept in ``inputs.stains.folds`` for the call (in one process; the normalised slides, which hold
    their blocks' cache, are made again per fold).
    """
    if inputs.stains is None:
        return inputs.slides.__getitem__, embeddings
    reference = inputs.stains.reference([inputs.slides[j] for j in train_is])
    slides = {j: inputs.stains.normalize(inputs.slides[j], reference) for j in (*train_is, test_i)}
    done = inputs.stains.folds.setdefault(inputs.stains.digest(reference), {})
    cache = EmbeddingCache(inputs.backbone, inputs.patch_size_um) if inputs.backbone is not None else None

    def emb_of(j: int) -> Any:
        if j not in done:
            before = cache.thread_seconds() if cache is not None else 0.0
            emb = inputs.slide_embeddings(j, slides[j], run, cache=cache)
            done[j] = (emb, slides[j].meta.get("feature_stats"))
            if cache is not None and inputs.cache is not None:  # the call's embedding time counts them
                inputs.cache.add_seconds(cache.thread_seconds() - before)
        elif done[j][1] is not None:  # feature_norm="slide": the statistics travel with the slide
            slides[j].meta["feature_stats"] = done[j][1]
        return done[j][0]

    return slides.__getitem__, emb_of


def run_folds(
    spec: FoldSpec,
    *,
    client: Any = None,
    resources: Any = None,
    progress: bool | None = None,
    raise_on_error: bool = True,
) -> tuple[dict[int, FoldOut], pd.DataFrame]:
    """Run every fold of ``spec``, here or one task per fold on ``client``; ``(outputs by fold, failures)``.

    On a client each fold's task asks for the worker ``resources`` (see
    :func:`~stpredict.tl._cohort_client.check_resources`).

    A failing fold raises its own exception with ``raise_on_error`` (here at once; on a client as soon as it comes
    back, the other folds cancelled); otherwise it is logged and becomes a row of the failures table
    (:attr:`CVResult.failures`).
    """
    folds = list(range(len(spec.plan)))
    names = [spec.inputs.slides[p[0]].name for p in spec.plan]
    outs: dict[int, FoldOut] = {}
    failed: list[dict[str, Any]] = []

    def done(f: int, out: dict[str, Any]) -> None:
        if out["error"] is None:
            outs[f] = out["value"]
            if client is not None and spec.inputs.cache is not None:  # the workers' embedding time counts too
                spec.inputs.cache.add_seconds(outs[f].embed_seconds)
            mean_pcc = outs[f].row["pearson_mean"]
            logger.info("cv %s fold %d (%s): mean PCC %.3f", spec.proto.name, f, names[f], mean_pcc)
            return
        e = out["error"]
        if raise_on_error:
            if client is not None:
                e.add_note(f"(cross_validate fold {f}, test slide {names[f]!r}, on worker {out['worker'] or '?'})")
            raise e
        row = {"fold": f, "slide": names[f], "seconds": out["seconds"], "worker": out["worker"], "error": error_text(e)}
        failed.append(row)
        logger.warning("cross_validate: fold %d (test slide %s) failed: %s", f, names[f], row["error"])

    shipped = spec.for_workers() if client is not None else spec
    run_tasks(
        run_fold, folds, shipped, done, client=client, remote=folds, resources=resources, progress=progress,
        desc="cross_validate", unit="fold",
    )  # fmt: skip
    failures = pd.DataFrame(sorted(failed, key=lambda r: r["fold"]), columns=FAILURE_COLUMNS)
    return outs, failures
