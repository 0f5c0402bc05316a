"""The timing loop: warm-up and timed calls honour both minimums, rounds are seeded, intervals honest."""

from __future__ import annotations

import time

import numpy as np
import pytest

from pillsnap.engines.timing import (
    Deadline,
    bootstrap_median,
    cov,
    round_order,
    run_rounds,
    timed_calls,
    warm_up,
)


def sleeper(seconds: float):
    return lambda: time.sleep(seconds)


def test_warm_up_reaches_count_and_duration():
    far = time.perf_counter() + 60
    by_count = warm_up(sleeper(0.001), calls=5, seconds=0.0, stop_at=far)
    assert by_count.calls == 5
    by_time = warm_up(sleeper(0.001), calls=1, seconds=0.05, stop_at=far)
    assert by_time.calls > 5 and by_time.seconds >= 0.05
    # the deadline stops it, but never before the first call
    cut = warm_up(sleeper(0.001), calls=100, seconds=10.0, stop_at=time.perf_counter())
    assert cut.calls == 1


def test_timed_calls_need_both_minimums_and_time_each_call():
    far = time.perf_counter() + 60
    many = timed_calls(sleeper(0.002), min_calls=4, min_seconds=0.0, stop_at=far)
    assert len(many) == 4 and many.dtype == np.int64 and (many >= 2_000_000).all()
    long = timed_calls(sleeper(0.002), min_calls=1, min_seconds=0.03, stop_at=far)
    assert len(long) >= 10 and long.sum() >= 30_000_000
    synced = []
    timed_calls(lambda: None, 3, 0.0, far, sync=lambda: synced.append(1))
    assert synced == [1, 1, 1]  # a GPU configuration's sync runs inside every timed call
    assert len(timed_calls(sleeper(0.001), 50, 5.0, stop_at=time.perf_counter())) == 1


def test_round_order_is_seeded_and_random():
    names = [f"c{i}" for i in range(6)]
    a = round_order(names, 8, seed=0, key="classification@1")
    assert a == round_order(names, 8, seed=0, key="classification@1")
    assert all(sorted(r) == sorted(names) for r in a)
    assert len({tuple(r) for r in a}) > 1  # not the same order every round
    assert a != round_order(names, 8, seed=1, key="classification@1")
    assert a != round_order(names, 8, seed=0, key="detection@1")


def test_run_rounds_interleaves_and_respects_the_budget():
    calls = []
    fns = {n: (lambda n=n: (calls.append(n), time.sleep(0.001))) for n in ("a", "b", "c")}
    r = run_rounds(fns, rounds=4, min_calls=2, min_seconds=0.0, seed=3, key="k", budget_s=60)
    assert r.order == round_order(["a", "b", "c"], 4, 3, "k") and not r.truncated
    assert all(len(t) == 2 for runs in r.calls.values() for t in runs)
    expected = [n for order in r.order for n in order for _ in range(2)]
    assert calls == expected  # the configurations took turns in the recorded order
    slow = {n: sleeper(0.02) for n in ("a", "b")}
    cut = run_rounds(slow, rounds=50, min_calls=1, min_seconds=0.0, seed=0, key="k", budget_s=0.1)
    assert cut.truncated and 1 <= len(cut.order) < 50


def test_bootstrap_interval_and_cov():
    x = np.array([10.0, 11.0, 9.0, 10.5, 9.5, 10.2, 30.0])
    med, lo, hi = bootstrap_median(x, 2000, seed=0)
    assert med == 10.2 and lo <= med <= hi < 30
    assert bootstrap_median(x, 2000, seed=0) == (med, lo, hi)  # seeded
    assert bootstrap_median([1.0, 2.0], 100) == (1.5, None, None)  # too few rounds for an interval
    assert bootstrap_median([], 100) == (None, None, None)
    assert cov([1.0]) is None and cov([1.0, 1.0]) == 0.0
    assert cov([1.0, 3.0]) == pytest.approx(np.std([1, 3], ddof=1) / 2)


def test_deadline():
    d = Deadline(0.05)
    assert not d.expired() and d.remaining() <= 0.05
    time.sleep(0.06)
    assert d.expired() and d.elapsed() >= 0.05
