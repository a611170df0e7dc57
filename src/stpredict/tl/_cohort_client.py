"""The Dask client of the cohort verbs, checked before any work: its type, and the worker resources tasks ask for.

:func:`check_resources` resolves ``resources=``: by default, GPU workers take the heavy tasks (one at a time each)
when the cluster has them, and any worker otherwise.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

__all__ = ["check_client", "check_resources", "holds", "worker_resources"]


def check_client(client: Any, verb: str) -> None:
    """Refuse a ``client`` that is not a ``dask.distributed.Client`` (or ``None``) before any work."""
    if client is None:
        return
    try:
        from distributed import Client
    except ImportError:
        msg = f"{verb}(client=...) needs dask.distributed: pip install distributed (or pass client=None)."
        raise ImportError(msg) from None
    if not isinstance(client, Client):
        msg = (
            f"{verb}: client must be a dask.distributed.Client (e.g. Client(LocalCluster())) or None to run here, "
            f"got {type(client).__name__}."
        )
        raise TypeError(msg)


def worker_resources(client: Any) -> dict[str, dict[str, float]]:
    """The resources each worker of ``client`` advertises, by address (every worker, not the first few)."""
    try:
        info = client.scheduler_info(n_workers=-1)
    except TypeError:  # distributed < 2025: always every worker
        info = client.scheduler_info()
    return {a: dict(w.get("resources") or {}) for a, w in info.get("workers", {}).items()}


def holds(have: Mapping[str, float], want: Mapping[str, float]) -> bool:
    """Whether a worker advertising ``have`` holds the resources ``want``."""
    return all(have.get(k, 0) >= v for k, v in want.items())


def check_resources(client: Any, resources: Any, verb: str) -> dict[str, float] | None:
    """The worker resources each task of ``verb`` asks for on ``client``, refused before any work if none holds them.

    ``None`` (the default): ``{"GPU": 1}`` when a worker advertises at least one ``GPU``, otherwise ``{}`` (any
    worker). A mapping is checked (names, positive amounts) and used as given. Without a client: ``None``, and
    ``resources`` must be ``None``.
    """
    if client is None:
        if resources is not None:
            msg = f"{verb}: resources= is for the tasks sent to a Dask client; pass client= too, or drop resources=."
            raise ValueError(msg)
        return None
    workers = worker_resources(client)
    if resources is None:
        return {"GPU": 1} if any(w.get("GPU", 0) >= 1 for w in workers.values()) else {}
    if not isinstance(resources, Mapping):
        msg = f'{verb}: resources must be a mapping such as {{"GPU": 1}}, {{}} or None, got {resources!r}.'
        raise TypeError(msg)
    want: dict[str, float] = {}
    for k, v in resources.items():
        ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and v > 0
        if not isinstance(k, str) or not k or not ok:
            msg = f"{verb}: resources maps a resource name to the positive amount one task uses, got {k!r}: {v!r}."
            raise ValueError(msg)
        want[k] = int(v) if float(v).is_integer() else float(v)
    if want and not any(holds(w, want) for w in workers.values()):
        seen = sorted({f"{k}={v:g}" for w in workers.values() for k, v in w.items()})
        flags = " ".join(f"{k}={v:g}" for k, v in want.items())
        msg = (
            f"{verb}: resources={want!r}, but none of the client's {len(workers)} workers holds {flags} (they "
            f"advertise: {', '.join(seen) or 'nothing'}). Start workers with it (dask worker <scheduler> --resources "
            f'"{flags}", or LocalCluster(resources={want!r})), or drop resources= (the default uses GPU workers when '
            "there are, else any worker)."
        )
        raise ValueError(msg)
    return want
