"""One way the tests start and stop a Dask ``LocalCluster``: 2 workers × 1 thread, shut down leniently."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator


@contextlib.contextmanager
def local_cluster() -> Iterator[tuple[Any, Any]]:
    """``(cluster, client)`` of a ``LocalCluster(n_workers=2, threads_per_worker=1)`` in worker processes.

    A loaded machine may be slow to stop the workers: a timeout while closing is not a test failure.
    """
    import distributed

    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    client = distributed.Client(cluster)
    try:
        yield cluster, client
    finally:
        with contextlib.suppress(TimeoutError):
            client.close()
            cluster.close(timeout=60)
