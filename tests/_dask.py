"""How the tests start and stop Dask clusters: worker processes with 1 thread each, shut down leniently."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator


@contextlib.contextmanager
def _closing(cluster: Any) -> Iterator[tuple[Any, Any]]:
    """``(cluster, client)``; a loaded machine may be slow to stop the workers: a timeout is not a test failure."""
    import distributed

    client = distributed.Client(cluster)
    try:
        yield cluster, client
    finally:
        with contextlib.suppress(TimeoutError):
            client.close()
            cluster.close(timeout=60)


@contextlib.contextmanager
def local_cluster(**options: Any) -> Iterator[tuple[Any, Any]]:
    """``(cluster, client)`` of a ``LocalCluster(n_workers=2, threads_per_worker=1)`` in worker processes.

    ``options`` go to ``LocalCluster`` (e.g. ``resources={"GPU": 1}`` for every worker, ``threads_per_worker=2``).
    """
    import distributed

    kw = {"n_workers": 2, "threads_per_worker": 1, "processes": True, "dashboard_address": ":0", **options}
    with _closing(distributed.LocalCluster(**kw)) as out:
        yield out


@contextlib.contextmanager
def mixed_cluster() -> Iterator[tuple[Any, Any, str]]:
    """``(cluster, client, address of the GPU worker)``: two worker processes, one advertising ``GPU=1``, one none."""
    import distributed

    workers = {
        "gpu": {"cls": distributed.Nanny, "options": {"nthreads": 1, "resources": {"GPU": 1}}},
        "cpu": {"cls": distributed.Nanny, "options": {"nthreads": 1}},
    }
    scheduler = {"cls": distributed.Scheduler, "options": {"dashboard_address": ":0"}}
    with _closing(distributed.SpecCluster(workers=workers, scheduler=scheduler)) as (cluster, client):
        client.wait_for_workers(2)
        info = client.scheduler_info(n_workers=-1)["workers"]
        yield cluster, client, next(a for a, w in info.items() if w.get("resources", {}).get("GPU"))
