"""The two measuring passes over built configurations: accuracy, then interleaved timed rounds.

The budget left after building is shared between the timed blocks (one per model and
batch size) and the pipeline rows in proportion to what one round of each costs
(estimated from the warm-up calls), so a slow block (the detector at batch 8) gets as
many rounds as a fast one. When even three rounds of everything would not fit, each
round is made smaller first (one call per configuration): rounds, not calls per round,
give the interval its meaning.
"""

from __future__ import annotations

import logging
import math
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pillsnap.bench import stats
from pillsnap.bench.accuracy import ReplayRunner, measure_accuracy
from pillsnap.bench.catalogue import CATALOGUE, TORCH_REFERENCE
from pillsnap.bench.engines import BuildPlan, cuda_sync, make_runner
from pillsnap.engines.timing import MIN_ROUNDS_FOR_INTERVAL, run_rounds

if TYPE_CHECKING:
    from pillsnap.bench.inputs import Inputs
    from pillsnap.bench.run import Slot
    from pillsnap.config import Config
    from pillsnap.engines.timing import Deadline

log = logging.getLogger(__name__)
PILLS_PER_PHOTO_GUESS = 3
"""For the pipeline's cost estimate only (the real count is measured)."""


def check_accuracy(
    cfg: Config, slots: dict[str, list[Slot]], inputs: Inputs, threads: int, notes: list[str]
) -> None:
    """Each running configuration's accuracy and agreement with Torch fp32 on the fixed subset."""
    for task, group in slots.items():
        sample = inputs.accuracy_sample(task)
        running = [s for s in group if s.status == "ran"]
        if sample is None or not running:
            continue
        broken = next(
            (s for s in group if s.conf.name == TORCH_REFERENCE and s.status != "ran"), None
        )
        if broken is not None:
            notes.append(
                f"no accuracy on {task}: Torch fp32 (the reference) did not run: {broken.reason}"
            )
            continue
        ref_slot = next((s for s in running if s.conf.name == TORCH_REFERENCE), None)
        own = None
        if ref_slot is None:  # not benchmarked, but still the reference of every agreement
            plan = BuildPlan(CATALOGUE[TORCH_REFERENCE], task, Path(), threads, [1], Path())
            own = make_runner(cfg, plan).activate()
        reference = ReplayRunner(ref_slot.runner if ref_slot else own)  # type: ignore[arg-type]
        try:
            for slot in running:
                runner = reference if slot is ref_slot else slot.runner
                try:
                    slot.accuracy = measure_accuracy(cfg, task, sample, reference, runner)
                except Exception as exc:  # this configuration's row says why
                    if slot is ref_slot:
                        raise
                    slot.fail(exc)
                    slot.reason = f"accuracy pass failed: {slot.reason}"
        finally:
            if own is not None:
                own.deactivate()
        if sample.skipped:
            notes.append(
                f"accuracy subset ({task}): {len(sample.skipped)} unreadable file(s) skipped"
            )


def call_estimate(slot: Slot, batch: int) -> float:
    """Seconds per call at ``batch``: measured in the warm-up, else scaled from the nearest size."""
    if batch in slot.call_s:
        return slot.call_s[batch]
    if not slot.call_s:
        return 0.0
    near = min(slot.call_s, key=lambda b: abs(b - batch))
    return slot.call_s[near] * batch / near


def round_cost(slots: list[Slot], batch: int, min_calls: int, min_seconds: float) -> float:
    return sum(max(min_calls * call_estimate(s, batch), min_seconds) for s in slots)


def pipeline_cost(slots: dict[str, list[Slot]], inputs: Inputs, batch: int) -> float:
    """One pipeline round: every configuration that runs on both models, over the photos."""
    if set(slots) != {"detection", "classification"} or not inputs.photos:
        return 0.0
    batches = math.ceil(len(inputs.photos) / batch)
    crop_calls = math.ceil(len(inputs.photos) * PILLS_PER_PHOTO_GUESS / batch)
    return sum(
        batches * call_estimate(d, batch) + crop_calls * call_estimate(c, batch)
        for d, c in zip(slots["detection"], slots["classification"])
        if d.status == c.status == "ran"
    )


def timed_rounds(
    cfg: Config,
    slots: dict[str, list[Slot]],
    inputs: Inputs,
    deadline: Deadline,
    notes: list[str],
) -> tuple[dict[tuple[str, int], Any], dict[str, list[list[str]]], list[dict], list[dict]]:
    """Model-only latency: interleaved rounds per (model, batch size), within the budget."""
    b = cfg.benchmark
    blocks = [(task, batch) for task in slots for batch in b.batch_sizes]
    running = {key: [s for s in slots[key[0]] if s.status == "ran"] for key in blocks}
    calls, seconds = b.min_calls, b.min_seconds
    costs = {k: round_cost(v, k[1], calls, seconds) for k, v in running.items()}
    pipe = pipeline_cost(slots, inputs, b.pipeline_batch_size)
    total = sum(costs.values()) + pipe
    want = min(MIN_ROUNDS_FOR_INTERVAL, b.rounds)
    if total and deadline.remaining() < want * total:
        calls, seconds = 1, 0.0
        costs = {k: round_cost(v, k[1], calls, seconds) for k, v in running.items()}
        notes.append(
            f"budget short for {want} rounds at min_calls={b.min_calls} / min_seconds={b.min_seconds:g}: "
            "one call per configuration and round"
        )
    timed: dict[tuple[str, int], Any] = {}
    orders: dict[str, list[list[str]]] = {}
    rows: list[dict[str, Any]] = []
    ratio_rows: list[dict[str, Any]] = []
    for i, (task, batch) in enumerate(blocks):
        ran = running[(task, batch)]
        rounds = None
        if ran:
            left = sum(costs[k] for k in blocks[i:]) + pipe
            share = max(deadline.remaining(), 0.0) * (costs[(task, batch)] / left if left else 1.0)
            x = inputs.batches[task][batch]
            rounds = run_rounds(
                {s.conf.name: partial(s.runner.infer, x) for s in ran},  # type: ignore[union-attr]
                rounds=b.rounds,
                min_calls=calls,
                min_seconds=seconds,
                seed=b.seed,
                key=f"{task}@{batch}",
                budget_s=share,
                syncs={s.conf.name: cuda_sync(s.conf) for s in ran},
            )
            timed[(task, batch)] = rounds
            orders[f"{task}@{batch}"] = rounds.order
            ratio_rows += stats.ratios(rounds, task, batch, b)
            done = len(rounds.order)
            if rounds.truncated:
                notes.append(f"{task} batch {batch}: {done} of {b.rounds} rounds fit the budget")
            if rounds.short_rounds:
                notes.append(
                    f"{task} batch {batch}: {rounds.short_rounds} round(s) cut before "
                    f"min_calls={calls} / min_seconds={seconds:g} (budget)"
                )
            log.info("%s batch %d: %d round(s) of %d configuration(s)", task, batch, done, len(ran))
        for slot in slots[task]:
            row: dict[str, Any] = {
                "model": task,
                "configuration": slot.conf.name,
                "batch": batch,
                "status": "measured" if slot.status == "ran" else slot.status,
                "reason": slot.reason,
                "latency": None,
                "throughput": None,
            }
            if slot.status == "ran" and rounds is not None:
                row.update(stats.latency_figures(rounds, slot.conf.name, batch, b))
            rows.append(row)
    return timed, orders, rows, ratio_rows
