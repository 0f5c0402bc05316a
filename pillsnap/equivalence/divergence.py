"""Where Torch and ONNX part: the first layer whose error jumps above ``compare.layer_tolerance``.

What a user does by hand with Polygraphy (mark every tensor as an output, then
bisect), done on the gate's own probe samples (a handful) with the one per-layer
comparison (``layers.compare_torch_onnx``). It runs only when a classification or
detection gate failed, or on request (``compare.localise: always``), so a passing
release pays nothing.

Reading the per-layer table (relative error per matched layer, in execution order;
``before`` is the largest error among the nearest compared layers it reads):

* ``none``: no layer above the tolerance; Torch and ONNX agree layer by layer;
* ``input``: the first layer above the tolerance reads only the graph input (the
  first convolution): the graph treats its input differently (pre-processing);
* ``interior``: one interior layer *introduces* the error (it is ``JUMP_RATIO``
  times what it reads, or more): that layer was converted differently;
* ``accumulating``: no layer introduces it, small differences grow along depth
  until they cross the tolerance: numeric precision;
* ``unlocalised``: only the model output differs among the compared tensors because
  nothing between input and output matched a Torch layer (an ONNX whose node names
  come from another tool): no layer can be named.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pillsnap.equivalence.layers import (
    LayerDiff,
    LayerTable,
    compare_torch_onnx,
    describe,
    json_number,
)

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np

    from pillsnap.config import Config

log = logging.getLogger(__name__)

JUMP_RATIO = 10.0
"""A layer whose error is at least this many times its inputs' error introduced it."""
MEMORY_BUDGET = 1 << 30
"""Bytes of activations both engines may hold at once: production-size models compare one sample."""
PATTERNS = ("none", "input", "interior", "accumulating", "unlocalised")


@dataclass
class Divergence:
    """One model's per-layer Torch <-> ONNX table and what it says."""

    model: str
    tolerance: float
    table: LayerTable
    samples: int
    elapsed_s: float = 0.0

    @property
    def crossing(self) -> LayerDiff | None:
        """The first layer above the tolerance, jump or not."""
        return self.table.first_divergent(self.tolerance)

    @property
    def first(self) -> LayerDiff | None:
        """The first layer that jumps above the tolerance; else the first that crosses it."""
        return self.table.first_divergent(self.tolerance, jump=JUMP_RATIO) or self.crossing

    @property
    def worst(self) -> LayerDiff | None:
        return self.table.worst()

    @property
    def pattern(self) -> str:
        first = self.first
        if first is None:
            return "none"
        if not _jumps(first):
            return "accumulating"
        if first.upstream == ():
            # Only the model output reads the input directly: nothing between was matched.
            return "input" if first.module else "unlocalised"
        return "interior"

    def headline(self) -> str:
        """The first divergent layer with its error before and after, and the worst layer."""
        first, worst = self.first, self.worst
        if first is None:
            top = f" (worst {worst.label}: {_num(worst.rel_error)})" if worst else ""
            return f"{self.model}: every layer within relative error {self.tolerance:g}{top}"
        if self.pattern == "unlocalised":
            return (
                f"{self.model}: not localised, the output differs (relative error "
                f"{_num(first.rel_error)}) but no ONNX tensor before it matched a Torch layer "
                f"({len(self.table.rows)} of {self.table.tapped_count} matched: node names of "
                "another exporter?)"
            )
        text = (
            f"{self.model}: first divergent layer {_where(first)}, relative error "
            f"{_num(first.before)} before -> {_num(first.rel_error)} after (tolerance {self.tolerance:g})"
        )
        if self.pattern == "accumulating":
            text += (
                f", no single layer introduces it (none reaches {JUMP_RATIO:g}x its input's error)"
            )
        if worst is not None and worst.position != first.position:
            text += f"; worst {_where(worst)}: {_num(worst.before)} before -> {_num(worst.rel_error)} after"
        return text

    def summary(self) -> str:
        """``headline`` plus how many tensors were matched (the log line, the report's summary)."""
        t = self.table
        return f"{self.headline()} [{len(t.rows)} of {t.tapped_count} ONNX tensors matched to Torch layers]"

    def to_section(self) -> dict[str, Any]:
        """The report's ``divergence.<model>`` block (``pillsnap.report.schema.LayerDivergence``)."""
        t = self.table
        return {
            "model": self.model,
            "tolerance": self.tolerance,
            "jump_ratio": JUMP_RATIO,
            "pattern": self.pattern,
            "first_divergent": describe(self.first),
            "worst": describe(self.worst),
            "summary": self.summary(),
            "samples": self.samples,
            "tapped": t.tapped_count,
            "matched": len(t.rows),
            "match_rate": round(t.match_rate, 4),
            "skipped": dict(sorted(t.skipped.items())),
            "elapsed_s": round(self.elapsed_s, 3),
            "layers": [
                {
                    "position": r.position,
                    "layer": r.label,
                    "op_type": r.op_type,
                    "rel_error": json_number(r.rel_error),
                    "before": json_number(r.before),
                }
                for r in t.rows
            ],
        }


def _jumps(row: LayerDiff) -> bool:
    return row.before is None or not row.rel_error < JUMP_RATIO * row.before


def _where(row: LayerDiff) -> str:
    node = f" (ONNX {row.node}, {row.op_type})" if row.module and row.node else f" ({row.op_type})"
    return f"{row.label}{node}"


def _num(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3g}"


def localise(
    model: str,
    torch_module: Any,
    onnx_path: str | Path,
    batch: np.ndarray,
    tolerance: float,
    providers: list[str] | None = None,
) -> Divergence:
    """Compare ``torch_module`` and its ONNX export layer by layer on ``batch`` (a handful of samples)."""
    started = time.perf_counter()
    table = compare_torch_onnx(torch_module, onnx_path, batch, providers, max_bytes=MEMORY_BUDGET)
    result = Divergence(model, tolerance, table, table.samples, time.perf_counter() - started)
    log.info("%s (%.1f s)", result.summary(), result.elapsed_s)
    return result


def wanted(cfg: Config, failed: dict[str, bool]) -> list[str]:
    """The models to localise: those whose own gate failed, every one with ``localise: always``."""
    mode = cfg.compare.localise
    if mode == "never":
        return []
    return [task for task, bad in failed.items() if bad or mode == "always"]


def localise_models(
    cfg: Config,
    models: dict[str, Any],
    runners: dict[str, dict[str, Any]],
    parities: dict[str, Any],
    failed: dict[str, bool],
) -> tuple[dict[str, Divergence], dict[str, str]]:
    """``localise`` each wanted model on its parity's probe samples, with its open runners.

    Returns the localised models and, per model that could not be localised, why: the
    localisation explains a verdict, so its own failure is reported (log, failure_reason)
    and never replaces the verdict.
    """
    out: dict[str, Divergence] = {}
    problems: dict[str, str] = {}
    for task in wanted(cfg, failed):
        parity = parities.get(task)
        if parity is None or not len(parity.probe_inputs):
            continue
        onnx_providers = runners[task]["onnx"].describe().get("providers") or None
        # TensorRT compiles the whole graph; with every tensor an output it would compare another engine.
        providers = [p for p in onnx_providers or [] if p != "TensorrtExecutionProvider"] or None
        try:
            out[task] = localise(
                task,
                runners[task]["torch"].module,
                models[task].onnx_path,
                parity.probe_inputs,
                cfg.compare.layer_tolerance,
                providers,
            )
        except Exception as exc:  # any failure of the diagnosis: reported below, verdict kept
            problems[task] = f"{task}: not localised ({type(exc).__name__}: {exc})"
            log.warning("%s", problems[task], exc_info=True)
    return out, problems
