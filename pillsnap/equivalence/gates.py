"""Pass/fail from measured parity: one ``Check`` per gated metric, decided apart from measuring.

Limits come from ``cfg.compare.gates`` (fp16 runs use the relaxed fp16 limits, int8 runs
the ``int8_*`` profile: INT8 against the float32 ONNX, not against Torch).
The user's stricter aims give a second, informational verdict that never fails
a release. A metric that could not be measured (NaN) fails its gate: a check
that can be silenced is not a check.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pillsnap.config import GatesConfig


@dataclass
class Check:
    name: str
    """``<model>.<metric>``, e.g. ``classification.mse_mean``."""
    value: float
    limit: float
    op: str
    """``<=`` (value at most limit), ``>=`` (at least) or ``|<=|`` (absolute value at most)."""
    passed: bool
    strict_limit: float | None = None
    strict_passed: bool | None = None
    would_pass_at: float | None = None
    """The loosest-looking round limit this value would have passed (only on failure)."""

    def describe(self) -> str:
        shown = "not measurable (NaN)" if math.isnan(self.value) else f"{self.value:.4g}"
        text = f"{self.name} = {shown}, limit {self.op.replace('|', '')} {self.limit:g}"
        if self.op == "|<=|":
            text = f"|{self.name}| = {abs(self.value):.4g}, limit <= {self.limit:g}"
        if self.would_pass_at is not None:
            text += f" (would pass with {self.op.replace('|', '')} {self.would_pass_at:g})"
        return text

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["value"] = None if math.isnan(self.value) else self.value
        return d


def _passes(value: float, limit: float, op: str) -> bool:
    if math.isnan(value):
        return False
    if op == "<=":
        return value <= limit
    if op == ">=":
        return value >= limit
    return abs(value) <= limit


def tolerance_that_passes(value: float, op: str) -> float | None:
    """The next 1-2-5 step at or beyond ``value`` (e.g. 3.2e-3 -> 5e-3); None for NaN."""
    if math.isnan(value):
        return None
    v = abs(value) if op == "|<=|" else value
    if op == ">=":
        return math.floor(v * 1000) / 1000
    if v <= 0:
        return 0.0
    exp = math.floor(math.log10(v))
    for step in (1, 2, 5, 10):
        if step * 10.0**exp >= v:
            return float(f"{step * 10.0**exp:.3g}")
    return v


def check(
    name: str, value: float, limit: float, op: str = "<=", strict_limit: float | None = None
) -> Check:
    value = float("nan") if value is None else float(value)
    passed = _passes(value, limit, op)
    strict = None if strict_limit is None else _passes(value, strict_limit, op)
    return Check(
        name,
        value,
        limit,
        op,
        passed,
        strict_limit,
        strict,
        None if passed else tolerance_that_passes(value, op),
    )


def classification_checks(
    metrics: dict[str, float], gates: GatesConfig, precision: str = "fp32"
) -> list[Check]:
    if precision == "int8":
        return int8_classification_checks(metrics, gates)
    fp16 = precision == "fp16"
    mse_mean = gates.fp16_mse_mean if fp16 else gates.mse_mean
    mismatch = gates.fp16_top1_mismatch_rate if fp16 else gates.top1_mismatch_rate
    logit = gates.fp16_rel_logit_diff_p99 if fp16 else gates.rel_logit_diff_p99
    return [
        check(
            "classification.mse_mean", metrics["mse_mean"], mse_mean, "<=", gates.strict_mse_mean
        ),
        check("classification.mse_p99", metrics["mse_p99"], gates.mse_p99, "<="),
        check(
            "classification.top1_mismatch_rate",
            metrics["top1_mismatch_rate"],
            mismatch,
            "<=",
            gates.strict_top1_mismatch_rate,
        ),
        check("classification.rel_logit_diff_p99", metrics["rel_logit_diff_p99"], logit, "<="),
    ]


def detection_checks(
    metrics: dict[str, float], gates: GatesConfig, precision: str = "fp32"
) -> list[Check]:
    if precision == "int8":
        return int8_detection_checks(metrics, gates)
    fp16 = precision == "fp16"
    return [
        check("detection.delta_map50", metrics["delta_map50"], gates.map50_delta, "|<=|"),
        check("detection.delta_map50_95", metrics["delta_map50_95"], gates.map50_95_delta, "|<=|"),
        check("detection.iou_diff_p95", metrics["iou_diff_p95"], gates.iou_diff_p95, "<="),
        check(
            "detection.score_diff_p95",
            metrics["score_diff_p95"],
            gates.fp16_score_diff_p95 if fp16 else gates.score_diff_p95,
            "<=",
        ),
        check("detection.unmatched_rate", metrics["unmatched_rate"], gates.unmatched_rate, "<="),
    ]


def end_to_end_checks(
    metrics: dict[str, float], gates: GatesConfig, precision: str = "fp32"
) -> list[Check]:
    limit = gates.int8_e2e_agreement_min if precision == "int8" else gates.e2e_agreement_min
    return [check("end_to_end.pill_agreement", metrics["pill_agreement"], limit, ">=")]


def int8_classification_checks(metrics: dict[str, float], gates: GatesConfig) -> list[Check]:
    """The ``int8`` profile: INT8 against float32 (agreement, accuracy, probabilities, worst class)."""
    g = gates
    return [
        check(
            "classification.top1_mismatch_rate",
            metrics["top1_mismatch_rate"],
            g.int8_top1_mismatch_rate,
        ),
        check("classification.accuracy_drop", metrics["accuracy_drop"], g.int8_accuracy_drop),
        check("classification.mse_mean", metrics["mse_mean"], g.int8_mse_mean),
        check("classification.mse_p99", metrics["mse_p99"], g.int8_mse_p99),
        check("classification.kl_mean", metrics["kl_mean"], g.int8_kl_mean),
        check("classification.at_risk_rate", metrics["at_risk_rate"], g.int8_at_risk_rate),
        check(
            "classification.class_recall_drop_max",
            metrics["class_recall_drop_max"],
            g.int8_class_recall_drop,
        ),
    ]


def int8_detection_checks(metrics: dict[str, float], gates: GatesConfig) -> list[Check]:
    """The ``int8`` profile: mAP after the common NMS, recall at the deployed cut, boxes, scores."""
    g = gates
    return [
        check("detection.delta_map50", metrics["delta_map50"], g.int8_map50_delta, "|<=|"),
        check("detection.delta_map50_95", metrics["delta_map50_95"], -g.int8_map50_95_drop, ">="),
        check("detection.recall_drop", metrics["recall_drop"], g.int8_recall_drop),
        check("detection.iou_diff_p95", metrics["iou_diff_p95"], g.int8_iou_diff_p95),
        check("detection.score_diff_p95", metrics["score_diff_p95"], g.int8_score_diff_p95),
        check("detection.unmatched_rate", metrics["unmatched_rate"], g.int8_unmatched_rate),
        check(
            "detection.top_score_log2_ratio",
            metrics["top_score_log2_ratio"],
            g.int8_top_score_log2_ratio,
            "|<=|",
        ),
    ]


@dataclass
class Verdict:
    checks: list[Check]
    causes: list[dict[str, Any]] = field(default_factory=list)
    localised: dict[str, str] = field(default_factory=dict)
    """Per model, the sentence naming its first divergent layer and the worst (``divergence.py``)."""

    @property
    def failed(self) -> bool:
        return any(not c.passed for c in self.checks)

    @property
    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    @property
    def strict_failed(self) -> bool:
        return any(c.strict_passed is False for c in self.checks)

    def failure_reason(self, model: str | None = None) -> str | None:
        """Every failed metric with value, limit and passing tolerance, then the top likely cause."""
        failed = [c for c in self.failed_checks if model is None or c.name.startswith(model + ".")]
        if not failed:
            return None
        text = "; ".join(c.describe() for c in failed)
        causes = [c for c in self.causes if model is None or c.get("model") in (model, None)]
        if causes:
            text += f". Likely cause: {causes[0]['title']} ({causes[0]['evidence']})"
        failed_models = {c.name.split(".")[0] for c in failed}
        where = [v for k, v in self.localised.items() if k in failed_models]
        if where:
            text += ". Layer by layer: " + "; ".join(where)
        return text

    def strict_reason(self) -> str | None:
        missed = [c for c in self.checks if c.strict_passed is False]
        if not missed:
            return None
        return "; ".join(
            f"{c.name} = {c.value:.4g} above the strict aim {c.strict_limit:g}" for c in missed
        )

    def summary_line(self) -> str:
        n_fail = len(self.failed_checks)
        head = (
            f"FAILED ({n_fail} of {len(self.checks)} gates)"
            if self.failed
            else f"passed ({len(self.checks)} gates)"
        )
        strict = "strict aims missed" if self.strict_failed else "strict aims met"
        return f"equivalence {head}; {strict}"
