"""``run_benchmark``: the one call behind ``pillsnap bench`` and ``benchmark.ipynb``.

Reads top to bottom: find the release's models -> probe the machine -> draw the fixed
subsets and inputs -> build every configuration for every model, one after the other
(cold start, sampled memory, warm-up at each batch size; an unavailable or failing one
gets its reason) -> accuracy beside speed -> interleaved timed rounds per model and batch
size -> the pipeline per photo, by phase -> ratios and the goal -> validated
``benchmark.json`` (and its summary in the release's ``export_report.json``).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pillsnap.bench.artifacts import find_release_models, require_onnx
from pillsnap.bench.catalogue import (
    CATALOGUE,
    Configuration,
    Machine,
    probe_machine,
    unavailable_reason,
)
from pillsnap.bench.engines import BuildPlan, cuda_sync, make_runner
from pillsnap.bench.fingerprint import environment, load_average
from pillsnap.bench.inputs import Inputs, prepare_inputs
from pillsnap.bench.measure import check_accuracy, timed_rounds
from pillsnap.bench.memory import PeakMemory
from pillsnap.bench.pipeline_rows import pipeline_rows
from pillsnap.bench.record import assemble_record, write_outputs
from pillsnap.engines.timing import Deadline, warm_up
from pillsnap.exceptions import PillsnapError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pillsnap.config import Config
    from pillsnap.engines.runners import Runner

log = logging.getLogger(__name__)
SETUP_SHARE = 0.25
"""Share of ``benchmark.max_seconds`` that all warm-ups together may take."""


class BenchmarkError(PillsnapError):
    """A configuration listed in ``benchmark.require`` did not run."""


@dataclass
class Slot:
    """One configuration on one model, from its build to its accuracy."""

    conf: Configuration
    task: str
    status: str = "ran"
    reason: str | None = None
    runner: Runner | None = None
    model_file: Path | None = None
    providers: list[str] = field(default_factory=list)
    execution_precision: str | None = None
    cold_start: dict[str, float | None] | None = None
    memory: dict[str, Any] | None = None
    warmup: tuple[int, float] | None = None
    call_s: dict[int, float] = field(default_factory=dict)
    """Mean seconds per warm-up call at each batch size (plans how the budget is shared)."""
    accuracy: dict[str, Any] | None = None

    def fail(self, exc: BaseException) -> None:
        self.status = "failed"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        self.reason = f"{type(exc).__name__}: {first}"[:400]
        log.warning("%s on %s failed: %s", self.conf.name, self.task, self.reason)
        self.close()

    def close(self) -> None:
        if self.runner is not None:
            self.runner.deactivate()


@dataclass
class BenchmarkResult:
    record: dict[str, Any]
    path: Path | None
    summary: dict[str, Any]

    @property
    def failed(self) -> bool:
        return bool(self.record["failed"])

    @property
    def failure_reason(self) -> str | None:
        return self.record["failure_reason"]


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Torch's intra-op threads set like every other CPU configuration's, restored afterwards."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def run_benchmark(
    cfg: Config,
    release_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    tag: str = "",
    progress: bool = True,
) -> BenchmarkResult:
    """Measure every configuration of ``cfg.benchmark`` on the release in ``release_dir``.

    Writes ``<out_dir>/benchmark.json`` (default: ``release_dir``, unless that is a finished
    release, which is never modified: then nothing is written unless ``out_dir`` is given)
    and, when ``out_dir`` holds an unfinished release's ``export_report.json``, its
    ``benchmark`` summary. A required configuration that did not run makes
    ``result.failed`` true (the notebook and the CLI turn that into a failure).
    """
    b = cfg.benchmark
    deadline = Deadline(b.max_seconds)
    load_start = load_average()
    tasks = list(b.models)
    models = find_release_models(release_dir, tag, tuple(tasks))
    require_onnx(models, tasks)
    machine = probe_machine()
    threads = b.threads or usable_cores()
    notes: list[str] = []
    if load_start and load_start[0] > usable_cores():
        notes.append(
            f"machine busy: load average {load_start[0]:.1f} on {usable_cores()} core(s) at the start; "
            "absolute times are pessimistic, the per-round ratios hold"
        )
    log.info(
        "benchmark of %s: %s on %s, %d thread(s), batch sizes %s, budget %.0f s",
        models.folder,
        ", ".join(b.configurations),
        ", ".join(tasks),
        threads,
        b.batch_sizes,
        b.max_seconds,
    )
    with torch_threads(threads), tempfile.TemporaryDirectory(prefix="pillsnap-bench-") as tmp:
        inputs = prepare_inputs(cfg, tasks, notes)
        tryable = sum(
            unavailable_reason(CATALOGUE[n], machine, t in models.int8, t) is None
            for t in tasks
            for n in b.configurations
        )
        # Warm-up (beyond its first call per batch size) shares a quarter of the budget.
        cap = SETUP_SHARE * b.max_seconds / max(tryable, 1)
        slots = {
            task: [
                build_slot(
                    cfg, CATALOGUE[name], task, models, machine, inputs, Path(tmp), threads, cap
                )
                for name in b.configurations
            ]
            for task in tasks
        }
        try:
            check_accuracy(cfg, slots, inputs, threads, notes)
            timed, orders, rows, ratio_rows = timed_rounds(cfg, slots, inputs, deadline, notes)
            pipe = pipeline_rows(cfg, slots, inputs, deadline, orders, notes)
        finally:
            for group in slots.values():
                for slot in group:
                    slot.close()
    env = environment(machine.openvino, list(machine.ort_providers), load_start, b.ort_spinning)
    record = assemble_record(
        cfg, models, slots, rows, ratio_rows, orders, pipe, env, threads, deadline, timed, notes
    )
    path, summary = write_outputs(record, models.folder, out_dir)
    return BenchmarkResult(record, path, summary)


def build_slot(
    cfg: Config,
    conf: Configuration,
    task: str,
    models: Any,
    machine: Machine,
    inputs: Inputs,
    work: Path,
    threads: int,
    warmup_cap_s: float,
) -> Slot:
    """Build, start and warm up one configuration for one model, measuring what that costs."""
    b = cfg.benchmark
    slot = Slot(conf, task)
    reason = unavailable_reason(conf, machine, task in models.int8, task)
    if reason is not None:
        slot.status, slot.reason = "unavailable", reason
        log.info("%s on %s: unavailable: %s", conf.name, task, reason)
        return slot
    slot.model_file = (
        cfg.checkpoint_path(task)
        if conf.model == "checkpoint"
        else models.file_for(task, conf.model)  # type: ignore[arg-type]
    )
    cache = b.tensorrt_cache_dir or work / "trt-cache" / f"{conf.name}-{task}"
    plan = BuildPlan(
        conf, task, slot.model_file, threads, b.batch_sizes, work, cache, b.ort_spinning
    )
    sync = cuda_sync(conf)
    first = inputs.batches[task][b.batch_sizes[0]]
    try:
        cold_build = warm_build = None
        if conf.engine == "tensorrt":  # an empty engine/timing cache, then the same cache again
            cold_build = _start(cfg, plan, first, sync, close=True)[1:]
        with PeakMemory(b.memory_interval_ms / 1e3, gpu=conf.device == "cuda") as mem:
            slot.runner, session_s, first_s = _start(cfg, plan, first, sync)
            calls, seconds = 0, 0.0
            share = warmup_cap_s / len(b.batch_sizes)  # each batch size its own share of the cap
            for batch in b.batch_sizes:
                stop_at = time.perf_counter() + share
                x = inputs.batches[task][batch]
                w = warm_up(
                    lambda x=x: _call(slot.runner, x, sync),
                    b.warmup_calls,
                    b.warmup_seconds,
                    stop_at,
                )
                calls, seconds = calls + w.calls, seconds + w.seconds
                slot.call_s[batch] = w.seconds / max(w.calls, 1)
        if cold_build is not None:
            warm_build = session_s + first_s
        slot.cold_start = {
            "session_s": round(session_s, 4),
            "first_inference_s": round(first_s, 4),
            "engine_build_cold_s": None if cold_build is None else round(sum(cold_build), 4),
            "engine_build_warm_s": None if warm_build is None else round(warm_build, 4),
        }
        slot.memory = mem.figures.to_dict()
        slot.warmup = (calls, round(seconds, 4))
        described = slot.runner.describe()
        slot.providers = [str(p) for p in described["providers"]]
        slot.execution_precision = str(described["precision"])
        log.info(
            "%s on %s: started in %.2f s (first call %.3f s), +%.0f MB resident, providers %s",
            conf.name,
            task,
            session_s,
            first_s,
            slot.memory["rss_peak_above_baseline_mb"],
            slot.providers,
        )
    except Exception as exc:  # noqa: BLE001 - any engine error becomes the row's reason; the stage goes on
        slot.fail(exc)
    return slot


def _call(runner: Any, x: Any, sync: Any) -> None:
    runner.infer(x)
    if sync is not None:
        sync()


def _start(
    cfg: Config, plan: BuildPlan, x: Any, sync: Any, close: bool = False
) -> tuple[Runner, float, float]:
    """Build and activate a runner (timed: loading, session creation, compilation), then its
    first inference (timed)."""
    t0 = time.perf_counter()
    runner = make_runner(cfg, plan)
    runner.activate()
    session_s = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        _call(runner, x, sync)
        first_s = time.perf_counter() - t0
    except BaseException:
        runner.deactivate()
        raise
    if close:
        runner.deactivate()
    return runner, session_s, first_s
