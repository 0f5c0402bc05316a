"""The INT8 gate and the INT8 speed: the same equivalence code, the same runners.

``evaluate`` runs ``pillsnap.equivalence.run_equivalence`` with ``compare.precision:
int8`` (the ``int8`` gates of ``compare.gates``) and the float32 ONNX as the
reference, on the gate's sample (``quantize.gate_mode``), leaving out every image
calibration used. It is what the stage decides with and what the exclusion loop's
task-aware score measures: the real fused CPU kernels, real validation data.

``speedup`` times float32 and INT8 ONNX Runtime sessions (``create_runner``) on one
real batch, interleaved round by round (order alternating), and returns the median
of the per-round ratios: a loaded or drifting machine slows both alike.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pillsnap.config import Config
    from pillsnap.equivalence.gates import Check
    from pillsnap.equivalence.run import EquivalenceResult

log = logging.getLogger(__name__)
ITERATIONS_PER_ROUND = 3


def gate_config(cfg: Config) -> Config:
    """``cfg`` with the int8 gate profile and the gate's sampling."""
    from pillsnap.config import apply_overrides

    q = cfg.quantize
    overrides: dict[str, Any] = {"compare.precision": "int8"}
    if q.gate_mode:
        overrides["compare.mode"] = q.gate_mode
    if q.gate_per_class_k:
        overrides["compare.per_class_k"] = q.gate_per_class_k
    return apply_overrides(cfg, overrides)


@dataclass
class GateResult:
    """One gate measurement of one or both INT8 models."""

    checks: list[Check]
    metrics: dict[str, dict[str, float]]
    """Per model (and ``end_to_end``) the metrics measured."""
    result: EquivalenceResult

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def view(self, *models: str) -> GateResult:
        """Only the checks of ``models`` (``classification``, ``detection``, ``end_to_end``)."""
        keep = [c for c in self.checks if c.name.split(".", 1)[0] in models]
        return GateResult(keep, self.metrics, self.result)

    @property
    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def excess(self) -> float:
        """How far from passing, summed over failed checks (0 when passed): a loop's score.

        Each failed check adds its miss relative to its limit (NaN counts as a big miss),
        so a step that brings a metric closer to its limit lowers it.
        """
        total = 0.0
        for c in self.failed_checks:
            if np.isnan(c.value):
                total += 100.0
                continue
            value = abs(c.value) if c.op == "|<=|" else c.value
            scale = max(abs(c.limit), 1e-6)
            miss = (c.limit - value) if c.op == ">=" else (value - c.limit)
            total += 1.0 + max(miss, 0.0) / scale
        return total

    def summary(self) -> str:
        if self.passed:
            return f"passed ({len(self.checks)} int8 gates)"
        return "FAILED: " + "; ".join(c.describe() for c in self.failed_checks)


def evaluate(
    cfg: Config,
    int8: dict[str, Path],
    reference: dict[str, Path],
    exclude: frozenset[Path],
    out_dir: str | Path | None = None,
) -> GateResult:
    """The int8 gates of the models in ``int8`` (task -> INT8 ONNX) against ``reference``."""
    from pillsnap.equivalence.run import run_equivalence

    gcfg = gate_config(cfg)
    folder = (
        Path(out_dir)
        if out_dir is not None
        else Path(tempfile.mkdtemp(prefix="pillsnap-int8-gate-"))
    )
    result = run_equivalence(
        gcfg,
        classification_onnx=int8.get("classification"),
        detection_onnx=int8.get("detection"),
        out_dir=folder,
        progress=False,
        reference=dict(reference),
        exclude=exclude,
    )
    metrics: dict[str, dict[str, float]] = {}
    if result.classification is not None:
        metrics["classification"] = dict(result.classification.metrics)
    if result.detection is not None:
        metrics["detection"] = dict(result.detection.metrics)
    if result.end_to_end is not None:
        metrics["end_to_end"] = dict(result.end_to_end.metrics)
    return GateResult(list(result.verdict.checks), metrics, result)


def fast_enough(speed: dict[str, Any], min_speedup: float) -> bool:
    """INT8 is ``min_speedup`` faster unless the whole 95 % interval of the ratio lies below it.

    The median of a few rounds moves by +-15 % with the load of a shared CPU; a release must
    not fail (or pass the exclusion loop's speed stop) on that noise alone, only when the
    measurement shows the speed-up is short.
    """
    interval = speed.get("interval")
    return speed["speedup"] >= min_speedup or bool(interval and interval[1] >= min_speedup)


def speedup(
    cfg: Config, task: str, float_path: Path, int8_path: Path, batch: np.ndarray
) -> dict[str, Any]:
    """INT8 vs float32 ORT CPU speed on ``batch``: median of per-round time ratios, 95 % interval.

    Timed by the one timing loop (``engines/timing.py``): both models warmed up, then
    ``quantize.speed_rounds`` rounds in a seeded order, ``ITERATIONS_PER_ROUND`` calls each.
    """
    from pillsnap.config import apply_overrides
    from pillsnap.engines.runners import create_runner
    from pillsnap.engines.timing import bootstrap_median, run_rounds, warm_up

    # The speed that matters is the CPU's: the INT8 kernels are CPU kernels.
    rcfg = apply_overrides(cfg, {"runtime.tensorrt_first": False})
    q = cfg.quantize
    with (
        create_runner("onnx", task, rcfg, float_path) as fp32,  # type: ignore[arg-type]
        create_runner("onnx", task, rcfg, int8_path) as int8,  # type: ignore[arg-type]
    ):
        calls = {"fp32": lambda: fp32.infer(batch), "int8": lambda: int8.infer(batch)}
        for call in calls.values():  # allocations, kernel selection
            warm_up(call, calls=2, seconds=0.0, stop_at=float("inf"))
        rounds = run_rounds(
            calls,
            rounds=q.speed_rounds,
            min_calls=ITERATIONS_PER_ROUND,
            min_seconds=0.0,
            seed=q.seed,
            key=f"int8-speed:{task}",
            budget_s=float("inf"),
        )
        providers = fp32.describe()["providers"]
    fp32_ns, int8_ns = rounds.round_medians_ns("fp32"), rounds.round_medians_ns("int8")
    ratios = fp32_ns / np.maximum(int8_ns, 1.0)
    median, low, high = bootstrap_median(ratios, seed=q.seed)
    result = {
        "speedup": round(float(median), 3),
        "interval": None if low is None else [round(low, 3), round(high, 3)],
        "ratios": [round(float(v), 3) for v in ratios],
        "fp32_ms": round(float(np.median(fp32_ns)) / 1e6, 2),
        "int8_ms": round(float(np.median(int8_ns)) / 1e6, 2),
        "batch": int(batch.shape[0]),
        "rounds": len(ratios),
        "providers": providers,
        "threads": cfg.runtime.intra_op_threads or "auto",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    log.info(
        "%s INT8 speed: %.2fx float32 (batch %d, median of %d interleaved rounds, 95%% [%s])",
        task,
        result["speedup"],
        result["batch"],
        len(ratios),
        result["interval"],
    )
    return result


def speed_batch(sample: np.ndarray, size: int) -> np.ndarray:
    """``size`` real inputs (the calibration images, repeated when there are fewer)."""
    reps = -(-size // len(sample))
    return np.ascontiguousarray(np.concatenate([sample] * reps)[:size], dtype=np.float32)
