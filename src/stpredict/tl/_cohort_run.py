"""One task per slide of a cohort, serially or on a Dask distributed client, each slide isolated from the others.

A slide is a path of a SpatialData zarr store (opened where its task runs, images lazily) or, for small cases,
a SpatialData in memory (always worked on in the calling process). A task returns ``(status, n_spots)``; an
exception in it becomes that slide's ``"failed"`` row, and the other slides go on. A worker that dies is
Dask's to handle: its tasks are rescheduled on the remaining workers (up to
``distributed.scheduler.allowed-failures`` deaths per task, then the slide is reported failed).
"""

from __future__ import annotations

import contextlib
import os
import time
import traceback
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from .._logging import get_logger

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from spatialdata import SpatialData

__all__ = ["COLUMNS", "CohortError", "check_slides", "open_store", "persist", "run_cohort", "slide_labels"]

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


def check_slides(slides: Any) -> list[str | SpatialData]:
    """The cohort as a list of store paths (``str``) and in-memory SpatialData; refuses bad input before any work."""
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
        msg = f"Stores {dup} are listed more than once: two tasks would write into the same store."
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


def _local_dask() -> contextlib.AbstractContextManager:
    """On a Dask worker, compute the slide's lazy arrays in the task's own thread.

    Otherwise a ``.compute()`` inside the task is sent back to the cluster as many tiny tasks (the default
    scheduler inside a worker is the distributed one), which is several times slower than reading the chunks here.
    """
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return contextlib.nullcontext()
    import dask

    return dask.config.set(scheduler="synchronous")


def run_slide(task: Callable[[SpatialData, Any], tuple[str, int]], source: str | SpatialData, spec: Any) -> dict:
    """Run ``task`` on one slide; never raises for the slide's own failures (they become its row)."""
    t0 = time.perf_counter()
    row: dict[str, Any] = {"status": "failed", "n_spots": 0, "worker": _where(), "error": ""}
    try:
        with _local_dask():
            sdata = open_store(source) if isinstance(source, str) else source
            row["status"], row["n_spots"] = task(sdata, spec)
    except Exception as e:  # noqa: BLE001 - one slide's failure must not stop the cohort
        row["error"] = f"{type(e).__name__}: {e}"
        logger.debug("Slide %s failed:\n%s", source if isinstance(source, str) else "in memory", traceback.format_exc())
    row["seconds"] = round(time.perf_counter() - t0, 3)
    return row


def run_cohort(
    task: Callable[[SpatialData, Any], tuple[str, int]],
    items: Sequence[str | SpatialData],
    spec: Any,
    *,
    client: Any = None,
    progress: bool | None = None,
    desc: str,
    raise_on_error: bool = False,
) -> pd.DataFrame:
    """Run ``task(sdata, spec)`` once per slide and return the status table (one row per slide, in input order).

    With a ``distributed.Client``, each store is one task (``spec`` is sent to every worker once); in-memory
    slides run in this process either way.
    """
    from tqdm.auto import tqdm

    from .._settings import settings

    labels = slide_labels(items)
    rows: dict[int, dict] = {}
    show = settings.progress if progress is None else progress
    t0 = time.perf_counter()
    with tqdm(total=len(items), disable=not show, desc=desc, unit="slide") as bar:

        def done(i: int, row: dict) -> None:
            rows[i] = row
            if row["status"] == "failed":
                logger.warning("%s: slide %s failed: %s", desc, labels[i], row["error"])
            bar.update(1)

        remote = [i for i, it in enumerate(items) if isinstance(it, str)] if client is not None else []
        futures = _submit(client, task, items, remote, spec, desc=desc) if remote else {}
        for i, it in enumerate(items):
            if i not in remote:
                done(i, run_slide(task, it, spec))
        if futures:
            from distributed import as_completed

            for fut in as_completed(list(futures)):
                i = futures[fut]
                try:
                    row = fut.result()
                except Exception as e:  # noqa: BLE001 - e.g. KilledWorker: the slide killed its workers
                    row = {"status": "failed", "n_spots": 0, "worker": "", "seconds": float("nan")}
                    row["error"] = f"{type(e).__name__}: {e}"
                done(i, row)
    table = pd.DataFrame([{"slide": labels[i], **rows[i]} for i in range(len(items))], columns=COLUMNS)
    counts = table["status"].value_counts().to_dict()
    logger.info("%s: %d slides in %.1f s: %s.", desc, len(items), time.perf_counter() - t0, counts)
    if raise_on_error and (table["status"] == "failed").any():
        raise CohortError(table)
    return table


def _submit(client: Any, task: Callable, items: Sequence, remote: list[int], spec: Any, *, desc: str) -> dict:
    """One future per store; the spec (model, backbone) is scattered to the workers once."""
    link = getattr(client, "dashboard_link", None)
    if link:
        logger.info("%s: %d slides on Dask; dashboard: %s", desc, len(remote), link)
    spec_f = client.scatter(spec, broadcast=True, hash=False)
    run = uuid.uuid4().hex[:8]
    return {
        client.submit(run_slide, task, items[i], spec_f, key=f"stpredict-{desc}-{run}-{i}", pure=False): i
        for i in remote
    }
