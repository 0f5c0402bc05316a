"""What one model's path records: its steps (recipe tried, group reverted, no help) and its outcome."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pillsnap.quantize.calibrate import CalibrationSet
    from pillsnap.quantize.exclusions import Exclusion
    from pillsnap.quantize.gate import GateResult
    from pillsnap.quantize.sensitivity import Sensitivity

KEY_METRICS = {
    "classification": (
        "top1_match_rate",
        "accuracy_drop",
        "mse_mean",
        "kl_mean",
        "class_recall_drop_max",
    ),
    "detection": (
        "delta_map50",
        "delta_map50_95",
        "recall_drop",
        "score_diff_p95",
        "top_score_log2_ratio",
    ),
}


@dataclass
class Step:
    """One step of a model's path: a recipe tried, a group reverted, or candidates that did not help."""

    index: int
    action: str
    """``recipe`` | ``revert`` | ``no_help``."""
    recipe: str
    group: str | None
    float_groups: list[str]
    excluded_nodes: int
    passed: bool
    excess: float
    failed_checks: list[str]
    metrics: dict[str, float]
    speedup: float | None
    tried: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        from pillsnap.report.record import to_jsonable

        return to_jsonable(asdict(self))


@dataclass
class ModelOutcome:
    task: str
    float_path: Path
    int8_path: Path | None
    """The INT8 candidate (in the work folder) of the last accepted step."""
    recipe: dict[str, Any]
    recipes: list[dict[str, Any]]
    exclusions: list[Exclusion]
    steps: list[Step]
    gate: GateResult | None
    speed: dict[str, Any]
    calibration: CalibrationSet
    calibration_stats: dict[str, Any]
    sensitivity: Sensitivity | None
    passed: bool
    reason: str | None
    causes: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def search_groups(self) -> list[str]:
        return sorted({e.group for e in self.exclusions if e.kind == "search"})


def short(checks: list[Any]) -> list[str]:
    return [c.describe() for c in checks]
