"""Timing one inference call: warm-up, then timed runs (a fixed count or a time budget), and the
statistics trtexec / benchmark_app / MLPerf report (min, mean, percentiles, max, std, throughput)."""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from edgefm.bench.schema import MAX_SAMPLES_KEPT, LatencyStats


@dataclass
class TimingPlan:
    """How long to measure: ``runs`` fixed timed runs, or runs until ``seconds`` have passed (at least
    ``min_runs``, at most ``max_runs``)."""

    warmup: int = 10
    runs: Optional[int] = None
    seconds: Optional[float] = 2.0
    min_runs: int = 10
    max_runs: int = 1_000_000


@dataclass
class Timed:
    samples_ms: list[float]
    cpu_s: float  # CPU time of the whole process (all threads) during the timed runs


def time_calls(fn: Callable[[], Any], plan: TimingPlan) -> Timed:
    """Call ``fn`` ``plan.warmup`` times untimed, then time each further call (wall clock, ms) and the
    process's CPU time over all of them.

    The garbage collector is paused while timing (as ``timeit`` does) so a collection triggered by the
    harness does not land in a model's figures."""
    for _ in range(plan.warmup):
        fn()
    samples: list[float] = []
    was_enabled = gc.isenabled()
    gc.disable()
    cpu0 = time.process_time()
    try:
        clock = time.perf_counter_ns
        if plan.runs is not None:
            for _ in range(plan.runs):
                t0 = clock()
                fn()
                samples.append((clock() - t0) / 1e6)
        else:
            budget_ns = int((plan.seconds or 0.0) * 1e9)
            start = clock()
            while len(samples) < plan.max_runs:
                t0 = clock()
                fn()
                t1 = clock()
                samples.append((t1 - t0) / 1e6)
                if t1 - start >= budget_ns and len(samples) >= plan.min_runs:
                    break
    finally:
        cpu = time.process_time() - cpu0
        if was_enabled:
            gc.enable()
    return Timed(samples, cpu)


def summarize(samples_ms: list[float], batch: int, warmup: int, cpu_s: Optional[float] = None) -> LatencyStats:
    """Statistics of timed runs (ms). Percentiles interpolate linearly between ranks (numpy's default).
    ``cpu_s``: process CPU time over the runs, giving CPU ms per call and the cores kept busy."""
    if not samples_ms:
        raise ValueError("no timed runs to summarize")
    a = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    total_s = float(a.sum()) / 1e3
    return LatencyStats(runs=len(a), warmup=warmup, min=float(a.min()), mean=float(a.mean()), p50=float(p50),
                        p90=float(p90), p99=float(p99), max=float(a.max()), std=float(a.std()),
                        throughput=batch * len(a) / total_s if total_s > 0 else float("inf"), total_s=total_s,
                        cpu_ms=None if cpu_s is None else cpu_s * 1e3 / len(a),
                        cpu_util=None if cpu_s is None or total_s <= 0 else cpu_s / total_s)


def thin(samples_ms: list[float], keep: int = MAX_SAMPLES_KEPT) -> list[float]:
    """At most ``keep`` samples, evenly spaced, so the JSON stays small on long runs."""
    if len(samples_ms) <= keep:
        return [round(x, 6) for x in samples_ms]
    idx = np.linspace(0, len(samples_ms) - 1, keep).round().astype(int)
    return [round(samples_ms[i], 6) for i in idx]
