"""``export_report.json``: the one report schema (pydantic), its JSON Schema, writer and validator.

The pydantic model below is the source of truth; ``pillsnap/schemas/export_report.schema.json``
is generated from it (``python -m pillsnap.report --write-schema``) and committed so
that other runtimes can validate a report without Python. Every report written by
``write_report`` is validated first; an invalid one is never written.

Per model the spec E-3 keys are present (``backbone``, ``num_classes``, ...,
``compare.deltas``, ``compare.notes``); keys that do not apply to a model are
null (``mse_mean`` for the detector, ``deltas`` for the classifier).

Longer than 400 lines on purpose: the whole report is one nested model, read top to bottom
beside the JSON Schema generated from it; the stage blocks (quantization, divergence,
benchmark) are a few classes each, and splitting them off would scatter one schema.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).parents[1] / "schemas" / "export_report.schema.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Nms(_Strict):
    conf_threshold: float
    iou_threshold: float
    max_detections: int
    class_agnostic: bool


class EvalThresholds(_Strict):
    conf_threshold: float
    iou_threshold: float
    max_detections: int


class Postprocess(_Strict):
    nms: Nms
    applied_in: Literal["python_common"] = "python_common"
    map_eval: EvalThresholds
    """Thresholds used only for the mAP figures (standard low confidence cut)."""


class Deltas(_Strict):
    map_0_5: float | None = Field(description="mAP@0.5 ONNX minus Torch; null for the classifier")
    map_0_5_0_95: float | None = Field(
        description="mAP@0.5:0.95 ONNX minus Torch; null for the classifier"
    )


class SkippedFile(_Strict):
    path: str
    reason: str


class Gate(_Strict):
    name: str
    value: float | None
    limit: float
    op: Literal["<=", ">=", "|<=|"]
    passed: bool
    strict_limit: float | None = None
    strict_passed: bool | None = None
    would_pass_at: float | None = None


class Cause(_Strict):
    model: str | None
    cause: str
    title: str
    score: float
    evidence: str
    advice: str


class Strict(_Strict):
    failed: bool
    reason: str | None


class Compare(_Strict):
    mode: Literal["smoke", "coverage", "full"]
    sample_policy: str
    sample_count: int
    per_class_k: int
    min_classes: int
    max_total: int
    sampled_classes: int
    sampled_images: int
    mse_mean: float | None
    mse_p99: float | None
    top1_match_rate: float | None
    top1_mismatch_count: int | None
    failed: bool
    failure_reason: str | None
    deltas: Deltas
    notes: list[str]
    precision: Literal["fp32", "fp16", "int8"]
    at_risk_count: int | None = Field(
        description="samples whose probability difference could reorder their top two"
    )
    metrics: dict[str, float | None]
    gates: list[Gate]
    strict: Strict
    likely_causes: list[Cause]
    per_class_mismatch_top10: list[dict[str, Any]]
    borderline_cases: list[dict[str, Any]]
    hardness_bins: dict[str, dict[str, int]]
    thresholds: dict[str, dict[str, float]]
    skipped_count: int
    skipped_files: list[SkippedFile]
    empty_classes: list[str]
    seed: int
    reference: str | None = Field(
        None,
        description="what the model was compared with: 'torch checkpoint', or 'onnx float32: "
        "<file>' for INT8 models (compare.precision=int8)",
    )


class Int8Exclusion(_Strict):
    node: str
    kind: Literal[
        "shape_arithmetic", "dfl", "box_decode", "sigmoid", "output_concat", "configured", "search"
    ]
    reason: str
    group: str = Field("", description="the layer group (the search reverts whole groups)")


class Quantization(_Strict):
    """The INT8 stage's outcome for one model (full detail in ``quantization.json``)."""

    shipped: bool = Field(description="the release holds this model's INT8 file")
    required: bool = Field(description="quantize.required: a failure fails the release")
    failed: bool
    reason: str | None
    verdict: Literal["passed", "failed", "shipped_without_int8"]
    int8_onnx: str | None
    int8_sha256: str | None
    source_onnx: str = Field(description="the float32 ONNX it was quantized from and gated against")
    recipe: dict[str, Any] = Field(description="the recipe as applied (reduce_range resolved)")
    recipes_tried: list[dict[str, Any]]
    calibration: dict[str, Any] = Field(
        description="split, fallback (seeded half of val), count, strata, sha256 of the file list"
    )
    excluded: list[Int8Exclusion] = Field(description="nodes kept float, each with its reason")
    excluded_counts: dict[str, int]
    search: list[dict[str, Any]] = Field(
        description="every step: recipe tried, group reverted or candidates that did not help; "
        "gate metrics and speed after it"
    )
    gates: list[Gate]
    metrics: dict[str, float | None]
    speedup: float | None = Field(description="float32 time / INT8 time, ORT CPU, median of rounds")
    speed: dict[str, Any]
    cpu: dict[str, Any] = Field(description="model, INT8 class, flags the gate ran with")
    seconds: float


class ModelReport(_Strict):
    task: Literal["detection", "classification"]
    backbone: str = Field(description="timm backbone or Ultralytics architecture")
    num_classes: int
    ckpt_path: str
    ckpt_sha256: str | None
    onnx_path: str
    onnx_sha256: str
    exported_at_utc: str = Field(pattern=r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
    git_sha: str = Field(pattern=r"^([0-9a-f]{7}|nogit)$")
    input_shape: list[int]
    opset: int
    dynamic_axes: dict[str, dict[str, str]]
    input_names: list[str]
    output_names: list[str]
    params_million: float
    providers: list[str]
    torch_device: str
    metadata: dict[str, str]
    postprocess: Postprocess
    compare: Compare
    quantization: Quantization | None = Field(
        None, description="the INT8 stage's outcome (absent before or without that stage)"
    )


class Models(_Strict):
    detection: ModelReport | None = None
    classification: ModelReport | None = None


class EndToEnd(_Strict):
    compared: bool
    note: str | None = None
    photos: int | None = None
    pills: int | None = None
    pill_agreement: float | None = None
    photo_agreement: float | None = None
    borderline_pills: int | None = None
    disagreements: list[dict[str, Any]] = []
    failed: bool = False
    failure_reason: str | None = None


class Verdict(_Strict):
    failed: bool
    failure_reason: str | None
    failed_checks: list[str]
    summary: str
    strict: Strict
    likely_causes: list[Cause]


class LayerRow(_Strict):
    position: int = Field(description="place among the tapped tensors, in execution order")
    layer: str = Field(description="ONNX node that produced the tensor")
    module: str = Field(description="Torch module whose output it is ('' for the model output)")
    tensor: str
    op_type: str
    shape: list[int]
    rel_error: float | None = Field(description="||torch - onnx|| / ||torch||; null: not finite")
    sqnr_db: float | None = Field(description="signal to noise ratio in dB; null when identical")
    max_abs: float | None
    before: float | None = Field(
        description="largest rel_error of the nearest compared layers it reads (0: the input)"
    )


class LayerPoint(_Strict):
    position: int
    layer: str = Field(description="Torch module path, else the ONNX node name")
    op_type: str
    rel_error: float | None
    before: float | None


class LayerDivergence(_Strict):
    model: Literal["detection", "classification"]
    tolerance: float = Field(description="compare.layer_tolerance")
    jump_ratio: float = Field(description="a layer introduces the error at >= this x its inputs'")
    pattern: Literal["none", "input", "interior", "accumulating", "unlocalised"]
    first_divergent: LayerRow | None = Field(
        description="first layer that jumps above the tolerance (else the first above it)"
    )
    worst: LayerRow | None
    summary: str
    samples: int
    tapped: int = Field(description="float tensors of the ONNX graph considered")
    matched: int = Field(description="of those, matched to a Torch module output and compared")
    match_rate: float
    skipped: dict[str, int] = Field(description="unmatched tensors by reason (never guessed)")
    elapsed_s: float
    layers: list[LayerPoint] = Field(description="every compared layer, in execution order")


class Divergences(_Strict):
    detection: LayerDivergence | None = None
    classification: LayerDivergence | None = None


class Environment(_Strict):
    python: str
    platform: str
    libraries: dict[str, str]


class ExportReport(_Strict):
    schema_version: Literal[1] = SCHEMA_VERSION
    version_tag: str
    git_sha: str = Field(pattern=r"^([0-9a-f]{7}|nogit)$")
    git_dirty: bool | None
    exported_at_utc: str = Field(pattern=r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
    compared_at_utc: str = Field(pattern=r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
    failed: bool
    failure_reason: str | None
    models: Models
    end_to_end: EndToEnd
    verdict: Verdict
    environment: Environment
    config: dict[str, Any]
    timing: dict[str, float | str] = Field(
        description="wall_s of the comparison, seconds spent inside each runner, and how the "
        "engines shared the CPU (engines: side by side | in turn, thread counts)"
    )
    divergence: Divergences | None = Field(
        None,
        description="per-layer Torch/ONNX localisation per model: on a failed classification or "
        "detection gate, or with compare.localise=always; absent when it did not run",
    )
    benchmark: BenchmarkSummary | None = Field(
        None, description="speed summary written by the benchmark stage (benchmark.ipynb)"
    )


class BenchmarkInterval(_Strict):
    median: float | None
    low: float | None
    high: float | None


class BenchmarkSpeed(_Strict):
    model: Literal["detection", "classification"]
    configuration: str
    batch: int
    latency_ms: BenchmarkInterval = Field(
        description="median over rounds of the per-round median latency, bootstrap 95 % bounds"
    )
    images_per_s: float | None
    noisy: bool


class BenchmarkSummary(_Strict):
    """What ``benchmark.ipynb`` measured (the full record is ``benchmark.json``)."""

    file: str
    benchmarked_at_utc: str = Field(pattern=r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
    failed: bool
    failure_reason: str | None
    threads: int
    cpu: str
    int8_class: str
    ran: list[str]
    unavailable: dict[str, str] = Field(description="configuration -> why it did not run")
    speed: list[BenchmarkSpeed]
    pipeline_ms_per_photo: dict[str, BenchmarkInterval]
    goal_met: bool | None


# -- helpers -----------------------------------------------------------------------------------


def schema() -> dict[str, Any]:
    return ExportReport.model_json_schema()


def schema_text() -> str:
    return json.dumps(schema(), indent=2, sort_keys=True) + "\n"


def validate_report(data: dict[str, Any]) -> list[str]:
    """Every schema problem of a report (``[]`` when valid), as ``location: message``."""
    return validation_problems(ExportReport, data)


def validation_problems(model: type[BaseModel], data: dict[str, Any]) -> list[str]:
    """Every problem ``model`` finds in ``data`` (``[]`` when valid), as ``location: message``."""
    try:
        model.model_validate(data)
    except ValidationError as exc:
        return [
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        ]
    return []


def finite_or_none(values: dict[str, Any]) -> dict[str, float | None]:
    """Metrics for JSON: NaN / inf become null (JSON has no NaN), numpy scalars become floats."""
    out: dict[str, float | None] = {}
    for key, value in values.items():
        v = float(value)
        out[key] = v if math.isfinite(v) else None
    return out


def write_report(path: str | Path, report: dict[str, Any] | ExportReport) -> Path:
    """Validate, then write atomically; raises ``ValueError`` listing every problem of an invalid report."""
    from pillsnap.fileio import save_json

    data = report.model_dump(mode="json") if isinstance(report, ExportReport) else report
    problems = validate_report(data)
    if problems:
        raise ValueError(
            "refusing to write an invalid export_report.json (this is a pillsnap bug):\n  "
            + "\n  ".join(problems[:20])
        )
    return save_json(path, data)


def main(argv: list[str] | None = None) -> int:
    """``python -m pillsnap.report --write-schema | --check-schema | FILE...`` (validate reports)."""
    return schema_main(
        argv, "pillsnap.report", SCHEMA_PATH, schema_text, validate_report, "export_report.json"
    )


def schema_main(
    argv: list[str] | None,
    module: str,
    schema_path: Path,
    text: Any,
    validate: Any,
    record_name: str,
) -> int:
    """The ``--write-schema | --check-schema | FILE...`` command of a record's schema module."""
    import argparse

    parser = argparse.ArgumentParser(
        prog=f"python -m {module}",
        description=f"write or check {schema_path.name}; validate {record_name} files",
    )
    parser.add_argument(
        "--write-schema", action="store_true", help=f"regenerate {schema_path.name}"
    )
    parser.add_argument(
        "--check-schema", action="store_true", help="exit 1 if the committed schema is stale"
    )
    parser.add_argument("records", nargs="*", type=Path, help=f"{record_name} files to validate")
    args = parser.parse_args(argv)
    status = 0
    if args.write_schema:
        from pillsnap.fileio import atomic_write_bytes

        atomic_write_bytes(schema_path, text().encode())
        print(f"wrote {schema_path}")
    if args.check_schema and (not schema_path.exists() or schema_path.read_text() != text()):
        print(f"{schema_path} is stale: run `python -m {module} --write-schema`", file=sys.stderr)
        status = 1
    for path in args.records:
        problems = validate(json.loads(path.read_text()))
        print(f"{path}: " + ("valid" if not problems else "INVALID\n  " + "\n  ".join(problems)))
        status = status or int(bool(problems))
    return status
