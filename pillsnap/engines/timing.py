"""The one timing loop: warm-up, timed calls, interleaved seeded rounds, bootstrap intervals.

Honest on a noisy machine:

* warm-up runs until both a count and a duration are reached (lazy initialisation,
  arena growth, CPU frequency), and is never timed;
* each timed call is measured alone with ``time.perf_counter_ns`` (a GPU configuration
  passes ``sync``, called before the clock stops); a configuration's share of a round
  runs until both ``min_calls`` and ``min_seconds`` are reached;
* configurations take turns within each round in a seeded random order, so a neighbour's
  burst of load hits them alike; the figure is the median over rounds of the per-round
  median, with a percentile-bootstrap 95 % interval; the coefficient of variation of
  the per-round medians flags a noisy row;
* a ``Deadline`` keeps the whole benchmark within ``benchmark.max_seconds``: when it is
  near, rounds (and then calls) are cut, and the result says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

MIN_ROUNDS_FOR_INTERVAL = 3


class Deadline:
    """Seconds left of a wall-clock budget (``time.perf_counter``)."""

    def __init__(self, seconds: float):
        self.seconds = float(seconds)
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def remaining(self) -> float:
        return self.seconds - self.elapsed()

    def expired(self) -> bool:
        return self.remaining() <= 0


@dataclass
class WarmUp:
    calls: int
    seconds: float


def warm_up(fn: Callable[[], object], calls: int, seconds: float, stop_at: float) -> WarmUp:
    """Call ``fn`` until ``calls`` and ``seconds`` are both reached (or ``stop_at``, perf_counter)."""
    start, done = time.perf_counter(), 0
    while done < calls or time.perf_counter() - start < seconds:
        if done and time.perf_counter() >= stop_at:
            break
        fn()
        done += 1
    return WarmUp(done, time.perf_counter() - start)


def timed_calls(
    fn: Callable[[], object],
    min_calls: int,
    min_seconds: float,
    stop_at: float,
    sync: Callable[[], None] | None = None,
) -> np.ndarray:
    """Nanoseconds of each call; at least one call, then until both minimums (or ``stop_at``)."""
    times: list[int] = []
    total = 0
    limit_ns = int(min_seconds * 1e9)
    while len(times) < min_calls or total < limit_ns:
        if times and time.perf_counter() >= stop_at:
            break
        t0 = time.perf_counter_ns()
        fn()
        if sync is not None:
            sync()
        dt = time.perf_counter_ns() - t0
        times.append(dt)
        total += dt
    return np.asarray(times, dtype=np.int64)


def bootstrap_median(
    values: np.ndarray | list[float], resamples: int = 2000, seed: int = 0
) -> tuple[float | None, float | None, float | None]:
    """Median of ``values`` and its percentile-bootstrap 95 % interval (None below 3 values)."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return None, None, None
    med = float(np.median(x))
    if len(x) < MIN_ROUNDS_FOR_INTERVAL:
        return med, None, None
    rng = np.random.default_rng(seed)
    meds = np.median(x[rng.integers(0, len(x), size=(resamples, len(x)))], axis=1)
    lo, hi = np.quantile(meds, [0.025, 0.975])
    return med, float(lo), float(hi)


def cov(values: np.ndarray | list[float]) -> float | None:
    """Coefficient of variation (sample std / mean); None below 2 values."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) < 2 or x.mean() <= 0:
        return None
    return float(x.std(ddof=1) / x.mean())


@dataclass
class Rounds:
    """Per configuration, the call times (ns) of each round; ``order`` is each round's order."""

    calls: dict[str, list[np.ndarray]] = field(default_factory=dict)
    order: list[list[str]] = field(default_factory=list)
    truncated: bool = False
    short_rounds: int = 0
    """Rounds in which some configuration stopped before min_calls / min_seconds (the deadline)."""

    def round_medians_ns(self, name: str) -> np.ndarray:
        return np.asarray([np.median(t) for t in self.calls[name]], dtype=np.float64)

    def round_totals(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(calls, seconds) per round."""
        runs = self.calls[name]
        return (
            np.asarray([len(t) for t in runs], np.float64),
            np.asarray([t.sum() / 1e9 for t in runs], np.float64),
        )


def round_order(names: list[str], rounds: int, seed: int, key: str) -> list[list[str]]:
    """Each round's order of ``names``: a seeded random permutation, reproducible from (seed, key)."""
    entropy = [seed, *key.encode()]
    rng = np.random.default_rng(entropy)
    return [[names[i] for i in rng.permutation(len(names))] for _ in range(rounds)]


def run_rounds(
    fns: dict[str, Callable[[], object]],
    *,
    rounds: int,
    min_calls: int,
    min_seconds: float,
    seed: int,
    key: str,
    budget_s: float,
    syncs: dict[str, Callable[[], None] | None] | None = None,
    on_round: Callable[[int], None] | None = None,
) -> Rounds:
    """Interleave ``fns`` in ``rounds`` seeded rounds within ``budget_s`` seconds.

    A round starts only if the previous one suggests it fits the budget (the first always
    runs); inside a round a configuration stops early only when the budget is spent, after
    at least one call, and the round is counted as short.
    """
    names = list(fns)
    syncs = syncs or {}
    result = Rounds({n: [] for n in names})
    start = time.perf_counter()
    stop_at = start + budget_s
    last = 0.0
    for i, order in enumerate(round_order(names, rounds, seed, key)):
        now = time.perf_counter()
        if i and now + last > stop_at:
            result.truncated = True
            break
        short = False
        for name in order:
            times = timed_calls(fns[name], min_calls, min_seconds, stop_at, syncs.get(name))
            short |= len(times) < min_calls or times.sum() < min_seconds * 1e9
            result.calls[name].append(times)
        result.order.append(order)
        result.short_rounds += short
        last = time.perf_counter() - now
        if on_round is not None:
            on_round(i)
    return result
