"""One task per item, serially or on a Dask distributed client, each isolated from the others.

:func:`run_tasks` is the one runner: one progress bar, the dashboard link logged, the spec scattered to the
workers once, the task's lazy arrays computed in its own thread on a worker, a task's exception returned as its
outcome. :func:`run_cohort` runs one task per slide on it (the cohort verbs) and
:func:`~stpredict.tl.cross_validate` one task per fold.

A slide is a path of a SpatialData zarr store (opened where its task runs, images lazily) or, for small cases,
a SpatialData in memory (always worked on in the calling process). A slide task returns ``(status, n_spots)``;
an exception in it becomes that slide's ``"failed"`` row, and the other slides go on. A worker that dies is
Dask's to handle: its tasks are rescheduled on the remaining workers (up to
``distributed.scheduler.allowed-failures`` deaths per task, then the slide is reported failed).

Tasks may ask for Dask worker resources (:func:`check_resources`): by default ``{"GPU": 1}`` when a worker
advertises a ``GPU`` resource, so that each GPU worker runs one heavy task at a time and CPU-only workers none.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import time
import traceback
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from .._logging import get_logger
from ._cohort_client import holds, worker_resources

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from spatialdata import SpatialData

__all__ = [
    "COLUMNS",
    "CohortError",
    "check_slides",
    "error_text",
    "open_store",
    "persist",
    "run_cohort",
    "run_one",
    "run_tasks",
    "slide_labels",
]

logger = get_logger(__name__)

#: columns of the per-slide status table
COLUMNS = ["slide", "status", "seconds", "n_spots", "worker", "error"]


class CohortError(RuntimeError):
    """Raised at the end of a cohort run with ``raise_on_error=True`` when some slides failed.

    Parameters
    ----------
    status
        The whole per-slide status table (the other slides' results were written); kept as ``.status``.
    """

    def __init__(self, status: pd.DataFrame) -> None:
        self.status = status
        bad = status[status["status"] == "failed"]
        lines = [f"  {r.slide}: {r.error}" for r in bad.itertuples()]
        super().__init__(f"{len(bad)} of {len(status)} slides failed:\n" + "\n".join(lines))


def check_slides(slides: Any, *, writes: bool = True) -> list[str | SpatialData]:
    """The cohort as a list of store paths (``str``) and in-memory SpatialData; refuses bad input before any work.

    ``writes``: whether each slide's task writes into its store (the cohort verbs) or the slides are read to
    train and score (``fit``, ``cross_validate``); it only changes why a repeated store is refused.
    """
    from spatialdata import SpatialData

    if isinstance(slides, str | Path | SpatialData):
        slides = [slides]
    try:
        items = list(slides)
    except TypeError:
        msg = f"slides must be a list of SpatialData zarr store paths or SpatialData objects, got {type(slides).__name__}."
        raise TypeError(msg) from None
    if not items:
        msg = "The cohort is empty: pass at least one store path or SpatialData."
        raise ValueError(msg)
    out: list[str | SpatialData] = []
    for i, it in enumerate(items):
        if isinstance(it, SpatialData):
            out.append(it)
        elif isinstance(it, str | Path | os.PathLike):
            out.append(str(Path(it).expanduser().resolve()))
        else:
            msg = f"slides[{i}] is a {type(it).__name__}: each slide is a zarr store path or a SpatialData."
            raise TypeError(msg)
    paths = [p for p in out if isinstance(p, str)]
    dup = sorted({p for p in paths if paths.count(p) > 1})
    if dup:
        why = (
            "two tasks would write into the same store"
            if writes
            else "the slide would count twice (and a held-out slide would also be trained on)"
        )
        msg = f"Stores {dup} are listed more than once: {why}. List each slide once."
        raise ValueError(msg)
    return out


def slide_labels(items: Sequence[str | SpatialData]) -> list[str]:
    """How the status table names each slide: its store path, or ``sdata[i]`` for one in memory."""
    return [it if isinstance(it, str) else f"sdata[{i}]" for i, it in enumerate(items)]


def open_store(path: str) -> SpatialData:
    """Read a SpatialData zarr store (images and labels stay lazy), with an error naming the store."""
    import spatialdata as sd

    p = Path(path)
    if not p.exists():
        msg = f"Store {path!r} does not exist."
        raise FileNotFoundError(msg)
    if not (p / "zarr.json").exists() and not (p / ".zgroup").exists():
        msg = f"{path!r} is not a zarr store (no zarr.json or .zgroup in it)."
        raise ValueError(msg)
    return sd.read_zarr(p)


def persist(sdata: SpatialData, names: Sequence[str]) -> None:
    """Write ``names`` into the store ``sdata`` is backed by (all or nothing); nothing for an unbacked one."""
    if sdata.is_backed() and sdata.path is not None:
        from ..io import write_back

        write_back(sdata, list(names))


def _where() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return f"local (pid {os.getpid()})"


def _on_worker() -> bool:
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return False
    return True


def _local_dask() -> contextlib.AbstractContextManager:
    """On a Dask worker, compute the task's lazy arrays in the task's own thread.

    Otherwise a ``.compute()`` inside the task is sent back to the cluster as many tiny tasks (the default
    scheduler inside a worker is the distributed one), which is several times slower than reading the chunks here.
    """
    if not _on_worker():
        return contextlib.nullcontext()
    import dask

    return dask.config.set(scheduler="synchronous")


def error_text(e: BaseException) -> str:
    """How a status table shows an error: its type and message."""
    return f"{type(e).__name__}: {e}"


def _portable(e: Exception) -> Exception:
    """``e``, or a ``RuntimeError`` with its text when it would not survive the trip back from a worker."""
    try:
        pickle.loads(pickle.dumps(e))
    except Exception:  # noqa: BLE001 - any failure to round-trip
        return RuntimeError(error_text(e))
    return e


def run_one(fn: Callable[[Any, Any], Any], item: Any, spec: Any) -> dict[str, Any]:
    """Run ``fn(item, spec)`` here or on a worker; never raises for ``fn``'s own failures.

    Returns ``{"value", "error", "seconds", "worker"}``: ``error`` is the exception (``None`` on success).
    """
    t0 = time.perf_counter()
    out: dict[str, Any] = {"value": None, "error": None, "worker": _where()}
    try:
        with _local_dask():
            out["value"] = fn(item, spec)
    except Exception as e:  # noqa: BLE001 - one task's failure must not stop the others
        out["error"] = _portable(e) if _on_worker() else e
        logger.debug(
            "Task %r failed:\n%s", item if isinstance(item, str | int) else "in memory", traceback.format_exc()
        )
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


def run_tasks(
    fn: Callable[[Any, Any], Any],
    items: Sequence[Any],
    spec: Any,
    on_done: Callable[[int, dict[str, Any]], None],
    *,
    client: Any = None,
    remote: Sequence[int] = (),
    resources: Mapping[str, float] | None = None,
    progress: bool | None = None,
    desc: str,
    unit: str,
) -> None:
    """Run ``fn(items[i], spec)`` for every ``i`` and call ``on_done(i, outcome)`` as each finishes (see :func:`run_one`).

    The ``remote`` positions run on the ``distributed.Client`` (one task each, ``spec`` sent to every worker once),
    the others here, first. Each remote task asks for the worker ``resources`` (from :func:`check_resources`;
    ``None`` or ``{}``: any worker), and ``spec`` goes only to the workers that hold them. One progress bar over
    the items; the Dask dashboard link is logged. When ``on_done`` raises, the tasks still pending are cancelled.
    """
    from tqdm.auto import tqdm

    from .._settings import settings

    show = settings.progress if progress is None else progress
    remote = list(remote) if client is not None else []
    with tqdm(total=len(items), disable=not show, desc=desc, unit=unit) as bar:
        futures = _submit(client, fn, items, remote, spec, resources=resources, desc=desc, unit=unit) if remote else {}
        try:
            for i, it in enumerate(items):
                if i not in remote:
                    on_done(i, run_one(fn, it, spec))
                    bar.update(1)
            if futures:
                from distributed import as_completed

                for fut in as_completed(list(futures)):
                    try:
                        out = fut.result()
                    except Exception as e:  # noqa: BLE001 - e.g. KilledWorker: the task killed its workers
                        out = {"value": None, "error": e, "seconds": float("nan"), "worker": ""}
                    on_done(futures[fut], out)
                    bar.update(1)
        except BaseException:
            if futures:
                client.cancel(list(futures))
            raise


def _slide_task(source: str | SpatialData, spec: tuple[Callable, Any]) -> tuple[str, int]:
    task, task_spec = spec
    sdata = open_store(source) if isinstance(source, str) else source
    return task(sdata, task_spec)


def run_cohort(
    task: Callable[[SpatialData, Any], tuple[str, int]],
    items: Sequence[str | SpatialData],
    spec: Any,
    *,
    client: Any = None,
    resources: Mapping[str, float] | None = None,
    progress: bool | None = None,
    desc: str,
    raise_on_error: bool = False,
) -> pd.DataFrame:
    """Run ``task(sdata, spec)`` once per slide and return the status table (one row per slide, in input order).

    ``task`` returns ``(status, n_spots)``. With a ``distributed.Client``, each store is one task (``spec`` is
    sent to every worker once) and is opened there, on a worker holding ``resources``; in-memory slides run in
    this process either way. The table's ``attrs["resources"]`` records ``resources``.
    """
    labels = slide_labels(items)
    rows: dict[int, dict] = {}
    t0 = time.perf_counter()

    def done(i: int, out: dict[str, Any]) -> None:
        row = {"status": "failed", "n_spots": 0, "seconds": out["seconds"], "worker": out["worker"], "error": ""}
        if out["error"] is None:
            row["status"], row["n_spots"] = out["value"]
        else:
            row["error"] = error_text(out["error"])
            logger.warning("%s: slide %s failed: %s", desc, labels[i], row["error"])
        rows[i] = row

    remote = [i for i, it in enumerate(items) if isinstance(it, str)]
    run_tasks(
        _slide_task, items, (task, spec), done, client=client, remote=remote, resources=resources, progress=progress,
        desc=desc, unit="slide",
    )  # fmt: skip
    table = pd.DataFrame([{"slide": labels[i], **rows[i]} for i in range(len(items))], columns=COLUMNS)
    table.attrs["resources"] = None if resources is None else dict(resources)
    counts = table["status"].value_counts().to_dict()
    logger.info("%s: %d slides in %.1f s: %s.", desc, len(items), time.perf_counter() - t0, counts)
    if raise_on_error and (table["status"] == "failed").any():
        raise CohortError(table)
    return table


def _submit(
    client: Any, fn: Callable, items: Sequence, remote: list[int], spec: Any, *, resources: Any, desc: str, unit: str
) -> dict:
    """One future per remote item; the spec (model, backbone, slides in memory) is scattered to the workers once.

    With ``resources``, each task asks for them and the spec goes only to the workers that hold them.
    """
    link = getattr(client, "dashboard_link", None)
    if link:
        logger.info("%s: %d %ss on Dask; dashboard: %s", desc, len(remote), unit, link)
    resources = dict(resources) if resources else None
    workers = [a for a, w in worker_resources(client).items() if holds(w, resources)] if resources else None
    if resources:
        logger.info("%s: each %s asks for %s; workers holding it: %s.", desc, unit, resources, workers)
    spec_f = client.scatter(spec, workers=workers or None, broadcast=True, hash=False)
    run = uuid.uuid4().hex[:8]
    return {
        client.submit(
            run_one, fn, items[i], spec_f, key=f"stpredict-{desc}-{run}-{i}", pure=False, resources=resources
        ): i
        for i in remote
    }
