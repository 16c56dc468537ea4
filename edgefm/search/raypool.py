"""The one adapter to Ray: start an embedded local Ray or join a cluster, submit trials as tasks, and
collect them as they finish. Ray is imported here only."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

from edgefm.errors import ConfigError

log = logging.getLogger(__name__)


def _ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("Ray is not installed: pip install 'edgefm[search]'") from None
    return ray


@contextmanager
def session(address: Optional[str], num_cpus: Optional[int]) -> Iterator[Any]:
    """Embedded local Ray (no dashboard, a small object store: trials return small dicts, bundles go to the
    storage path) or a connection to ``address``; always shut down on exit."""
    ray = _ray()
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():  # a caller's own Ray session is used as is, and left running
        yield ray
        return
    if address:
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise ConfigError(f"--ray {address}: cannot connect to a Ray cluster there ({str(e).splitlines()[0]})") \
                from None
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False,
                 object_store_memory=100 * 1024 ** 2, log_to_driver=False, logging_level=logging.WARNING)
    try:
        yield ray
    finally:
        ray.shutdown()


def parallelism(ray, memory_gb: float) -> int:
    """Trials that can run at once: the cluster's CPUs, fewer when their memory requests would not fit."""
    res = ray.cluster_resources()
    cpus = int(res.get("CPU", 1))
    mem = res.get("memory")
    by_mem = int(mem // (memory_gb * 1024 ** 3)) if mem else cpus
    return max(1, min(cpus, by_mem))


def remote(ray, fn: Callable, memory_gb: float, max_retries: int, spread: bool):
    """``fn`` as a Ray task holding one CPU and ``memory_gb``; retried when its worker or node dies."""
    opts: dict[str, Any] = dict(num_cpus=1, memory=int(memory_gb * 1024 ** 3), max_retries=max_retries,
                                retry_exceptions=False)
    if spread:
        opts["scheduling_strategy"] = "SPREAD"
    return ray.remote(**opts)(fn)


def wait_one(ray, refs: list, timeout_s: float = 3600.0):
    """(finished ref, its value or the exception it raised); (None, None) when none finished in time."""
    done, _ = ray.wait(refs, num_returns=1, timeout=timeout_s)
    if not done:
        return None, None
    ref = done[0]
    try:
        return ref, ray.get(ref)
    except Exception as e:  # noqa: BLE001 - a trial that failed for good is recorded, the search goes on
        return ref, e
