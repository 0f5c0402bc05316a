"""``benchmark.json``: its pydantic schema (the source of truth), JSON Schema, writer and validator.

``pillsnap/schemas/benchmark.schema.json`` is generated from ``BenchmarkRecord``
(``python -m pillsnap.bench --write-schema``) and committed, so that the release driver
and other tools validate a record without importing this package. ``write_record``
validates first; an invalid record is never written.

Times are milliseconds per call of one batch unless the key says otherwise; every
interval is the median over rounds with its percentile-bootstrap 95 % bounds
(``low`` / ``high`` are null below three rounds).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1
RECORD_NAME = "benchmark.json"
SCHEMA_PATH = Path(__file__).parents[1] / "schemas" / "benchmark.schema.json"
Task = Literal["detection", "classification"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Interval(_Strict):
    median: float | None
    low: float | None
    high: float | None


class Latency(_Strict):
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    calls: int = Field(description="timed calls over all rounds")
    duration_s: float = Field(description="time spent in the timed calls")
    rounds: int
    round_median_ms: list[float]
    median_ms: Interval = Field(description="median over rounds of each round's median")
    cov: float | None = Field(description="coefficient of variation of the per-round medians")
    noisy: bool


class Throughput(_Strict):
    images_per_s: Interval
    round_images_per_s: list[float]


class Row(_Strict):
    """One model x configuration x batch size: its figures, or why there are none."""

    model: Task
    configuration: str
    batch: int
    status: Literal["measured", "unavailable", "failed"]
    reason: str | None
    latency: Latency | None
    throughput: Throughput | None


class ColdStart(_Strict):
    session_s: float = Field(description="load / session creation / compilation")
    first_inference_s: float
    engine_build_cold_s: float | None = Field(
        description="TensorRT: session + first inference with an empty engine/timing cache"
    )
    engine_build_warm_s: float | None = Field(description="TensorRT: the same with that cache")


class Memory(_Strict):
    rss_baseline_mb: float
    rss_peak_above_baseline_mb: float
    samples: int
    interval_ms: float
    gpu_peak_above_baseline_mb: float | None


class Accuracy(_Strict):
    metric: Literal["top1", "map50_95"]
    value: float | None
    reference_value: float | None = Field(description="the same metric of Torch float32")
    agreement_metric: Literal["top1_agreement", "box_agreement"]
    agreement: float | None = Field(description="agreement with Torch float32")
    images: int


class ModelRun(_Strict):
    """One configuration on one model: what ran, where, at what cost."""

    status: Literal["ran", "unavailable", "failed"]
    reason: str | None
    model_file: str | None
    model_size_mb: float | None
    providers: list[str] = Field(description="what the session really used (get_providers())")
    execution_precision: str | None
    cold_start: ColdStart | None
    memory: Memory | None
    warmup_calls: int | None
    warmup_s: float | None
    accuracy: Accuracy | None


class ConfigurationRecord(_Strict):
    name: str
    engine: str
    device: str
    precision: str
    description: str
    required: bool
    status: Literal["ran", "partly", "unavailable", "failed"]
    reason: str | None
    models: dict[str, ModelRun]


class Ratio(_Strict):
    """Speed-up of ``configuration`` over ``versus``: per round their median ratio, then over rounds."""

    model: str
    batch: int
    configuration: str
    versus: str
    speedup: Interval
    rounds: int


class PipelineRow(_Strict):
    configuration: str
    status: Literal["measured", "unavailable", "failed"]
    reason: str | None
    photos: int
    pills: int | None
    batch: int
    rounds: int
    per_photo_ms: Interval | None
    round_per_photo_ms: list[float]
    phases_ms_per_photo: dict[str, float] = Field(description="median over rounds, per phase")
    cov: float | None
    noisy: bool


class GoalEntry(_Strict):
    configuration: str
    batch: int
    vs_openvino: Interval | None
    vs_torch: Interval | None
    agreement: float | None
    meets: bool
    shortfall: str | None


class Goal(_Strict):
    model: Literal["classification"] = "classification"
    targets: dict[str, float]
    candidates: list[GoalEntry]
    best: dict[str, str | None] = Field(description="per batch size, the fastest candidate")
    met: bool
    summary: str


class Budget(_Strict):
    max_seconds: float
    used_s: float
    truncated: bool
    notes: list[str]


class Settings(_Strict):
    threads: int = Field(description="CPU threads of every CPU configuration")
    threads_requested: int = Field(description="benchmark.threads (0 = all usable cores)")
    warmup_calls: int
    warmup_seconds: float
    min_calls: int
    min_seconds: float
    rounds: int
    seed: int
    max_cov: float
    bootstrap_resamples: int
    batch_sizes: list[int]
    models: list[str]
    accuracy_images: int
    accuracy_photos: int
    pipeline_photos: int


class Environment(_Strict):
    cpu: dict[str, Any]
    gpu: dict[str, Any] | None
    libraries: dict[str, str]
    onnxruntime_providers: list[str]
    openvino: str | None
    torch_threads: int
    platform: str
    python: str
    load_average_start: list[float]
    load_average_end: list[float]
    process_peak_rss_mb: float = Field(
        description="ru_maxrss of the whole benchmark process: an upper bound for any one row"
    )
    threading: dict[str, Any] = Field(
        description="OMP_WAIT_POLICY (and whether it was set before torch loaded), ORT spinning"
    )


class BenchmarkRecord(_Strict):
    schema_version: Literal[1] = SCHEMA_VERSION
    version_tag: str
    benchmarked_at_utc: str = Field(pattern=r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
    release_dir: str
    failed: bool
    failure_reason: str | None
    settings: Settings
    budget: Budget
    environment: Environment
    configurations: list[ConfigurationRecord]
    rows: list[Row]
    round_orders: dict[str, list[list[str]]] = Field(
        description="per '<model>@<batch>' (and 'pipeline'), the configurations' order in each round"
    )
    ratios: list[Ratio]
    pipeline: list[PipelineRow]
    goal: Goal | None


def schema_text() -> str:
    return json.dumps(BenchmarkRecord.model_json_schema(), indent=2, sort_keys=True) + "\n"


def validate_record(data: dict[str, Any]) -> list[str]:
    """Every schema problem of a benchmark record (``[]`` when valid)."""
    from pillsnap.report.schema import validation_problems

    return validation_problems(BenchmarkRecord, data)


def write_record(path: str | Path, data: dict[str, Any]) -> Path:
    """Validate, then write atomically; raises ``ValueError`` listing the problems otherwise."""
    from pillsnap.fileio import save_json

    problems = validate_record(data)
    if problems:
        raise ValueError(
            f"refusing to write an invalid {RECORD_NAME} (this is a pillsnap bug):\n  "
            + "\n  ".join(problems[:20])
        )
    return save_json(path, data)


def main(argv: list[str] | None = None) -> int:
    """``python -m pillsnap.bench --write-schema | --check-schema | FILE...``"""
    from pillsnap.report.schema import schema_main

    return schema_main(
        argv, "pillsnap.bench", SCHEMA_PATH, schema_text, validate_record, RECORD_NAME
    )
