"""Latency statistics and the timing loop (warm-up excluded, fixed count or time budget)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from edgefm.bench.latency import TimingPlan, summarize, thin, time_calls


def test_summary_matches_numpy_on_known_samples():
    rng = np.random.default_rng(0)
    samples = list(rng.lognormal(0.0, 0.5, 1001))
    s = summarize(samples, batch=8, warmup=5)
    a = np.asarray(samples)
    assert (s.min, s.max, s.mean, s.std) == pytest.approx((a.min(), a.max(), a.mean(), a.std()))
    assert (s.p50, s.p90, s.p99) == pytest.approx(tuple(np.percentile(a, [50, 90, 99])))
    assert s.min < s.p50 < s.p90 < s.p99 < s.max
    assert s.throughput == pytest.approx(8 * 1001 / (a.sum() / 1e3))
    assert s.runs == 1001 and s.warmup == 5


def test_summary_refuses_no_samples():
    with pytest.raises(ValueError):
        summarize([], 1, 0)


def test_warmup_calls_are_not_timed_and_run_count_is_exact():
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.02 if len(calls) <= 3 else 0.001)  # slow warm-up calls must not appear in the samples

    samples = time_calls(fn, TimingPlan(warmup=3, runs=20)).samples_ms
    assert len(calls) == 23 and len(samples) == 20
    assert max(samples) < 15  # ms: none of the 20 ms warm-up calls


def test_time_budget_stops_after_the_budget_but_not_before_min_runs():
    samples = time_calls(lambda: time.sleep(0.002), TimingPlan(warmup=0, runs=None, seconds=0.1, min_runs=3)).samples_ms
    assert 3 <= len(samples) <= 60 and sum(samples) >= 90
    slow = time_calls(lambda: time.sleep(0.03), TimingPlan(warmup=0, runs=None, seconds=0.01, min_runs=5)).samples_ms
    assert len(slow) == 5


def test_timings_are_real_wall_clock_and_cpu_time_is_separate():
    timed = time_calls(lambda: time.sleep(0.005), TimingPlan(warmup=1, runs=5))
    assert all(4.5 < x < 100 for x in timed.samples_ms)
    assert timed.cpu_s < 0.02  # sleeping costs wall time, not CPU

    def spin():
        t = time.process_time()
        while time.process_time() - t < 0.004:
            pass

    timed = time_calls(spin, TimingPlan(warmup=0, runs=5))
    s = summarize(timed.samples_ms, 1, 0, timed.cpu_s)
    assert 3.9 < s.cpu_ms < 6 and 0 < s.cpu_util <= 1.05


def test_thin_keeps_order_and_ends():
    xs = [float(i) for i in range(12000)]
    kept = thin(xs, 5000)
    assert len(kept) == 5000 and kept[0] == 0 and kept[-1] == 11999 and kept == sorted(kept)
    assert thin([1.23456789], 10) == [1.234568]
