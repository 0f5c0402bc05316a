"""Is a folder a complete, passing release? The checks the driver runs before it seals one.

Each returns why not (a sentence naming the file and the fix) or ``None``: both ONNX files
present and the very files the comparison measured, a schema-valid ``export_report.json``
with no failed comparison, INT8 files only where ``quantization.json`` shipped them, and a
``benchmark.json`` that matches its committed schema.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pillsnap.names import model_file_name
from pillsnap.release.manifest import REPORT_NAME
from pillsnap.release.promote import TASKS

QUANTIZATION_RECORD = "quantization.json"


def int8_files(folder: Path, tag: str) -> dict[str, Path]:
    """The INT8 models the quantization stage shipped into ``folder`` (``<task>-<tag>.int8.onnx``)."""
    return {t: p for t in TASKS if (p := folder / model_file_name(t, tag, int8=True)).is_file()}


STAGE_RECORDS = {"quantization": "quantization.json", "benchmark": "benchmark.json"}
"""The record each of these stages writes: a release that ran the stage must hold it."""


def check_release_outputs(folder: Path, tag: str, stages: Sequence[str] = ()) -> str | None:
    """Why the folder is not a complete, passing release (None when it is)."""
    unwritten = [
        f"{STAGE_RECORDS[s]} (stage {s!r})"
        for s in stages
        if s in STAGE_RECORDS and not (folder / STAGE_RECORDS[s]).is_file()
    ]
    if unwritten:
        return f"the stages passed but did not write {', '.join(unwritten)} into {folder}"
    missing = [
        model_file_name(t, tag) for t in TASKS if not (folder / model_file_name(t, tag)).is_file()
    ]
    if missing:
        return f"the stages passed but did not write {', '.join(missing)} into {folder}"
    report = folder / REPORT_NAME
    if not report.is_file():
        return f"the stages passed but did not write {REPORT_NAME} into {folder}"
    from pillsnap.release.manifest import validate_report_file

    problems = validate_report_file(report)
    if problems:
        return f"{REPORT_NAME} does not match the schema: " + "; ".join(problems[:5])
    data = json.loads(report.read_text())
    failed = report_failures(data)
    if failed:
        return f"{REPORT_NAME} records a failed comparison: " + "; ".join(failed)
    return (
        compared_files_unchanged(folder, tag, data)
        or int8_files_consistent(folder, tag)
        or check_benchmark_record(folder)
    )


def int8_files_consistent(folder: Path, tag: str) -> str | None:
    """INT8 files only where ``quantization.json`` shipped them, each the very file it gated."""
    from pillsnap.fileio import sha256_file

    found = int8_files(folder, tag)
    record_path = folder / QUANTIZATION_RECORD
    if not record_path.is_file():
        return (
            f"{', '.join(p.name for p in found.values())} in {folder} without {QUANTIZATION_RECORD}"
            if found
            else None
        )
    record = json.loads(record_path.read_text())
    shipped = record.get("shipped") or {}
    if record.get("failed") and record.get("required", True):
        return f"{QUANTIZATION_RECORD} records a failed INT8 stage: {record.get('failure_reason')}"
    for task in TASKS:
        name = shipped.get(task)
        if name is None:
            if task in found:
                return f"{found[task].name} is in the release but {QUANTIZATION_RECORD} did not ship it"
            continue
        entry = (record.get("models") or {}).get(task) or {}
        path = folder / name
        if not path.is_file():
            return f"{QUANTIZATION_RECORD} shipped {name}, which is not in {folder}"
        if sha256_file(path) != entry.get("int8_sha256"):
            return f"{name} changed after its INT8 gate (sha256 differs from {QUANTIZATION_RECORD})"
    return None


def compared_files_unchanged(folder: Path, tag: str, report: dict[str, Any]) -> str | None:
    """The ONNX files released must be the very files the comparison measured (sha256 in the report)."""
    from pillsnap.fileio import sha256_file

    for task in TASKS:
        entry = (report.get("models") or {}).get(task)
        if not entry:
            return f"{REPORT_NAME} has no {task} model: the comparison did not cover it"
        path = folder / model_file_name(task, tag)
        if Path(entry.get("onnx_path", "")).name != path.name:
            return f"{REPORT_NAME} compared {entry.get('onnx_path')!r} for {task}, not {path.name}"
        if sha256_file(path) != entry.get("onnx_sha256"):
            return (
                f"{path.name} changed after the comparison (sha256 differs from {REPORT_NAME}); "
                "a later stage or another process modified it: rerun the release"
            )
    return None


def report_failures(report: dict[str, Any]) -> list[str]:
    """Every ``compare`` block in the report that says ``failed: true``, with its reason."""
    found = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            compare = node.get("compare")
            if isinstance(compare, dict) and compare.get("failed"):
                found.append(
                    f"{where or 'report'}: {compare.get('failure_reason') or 'no reason given'}"
                )
            for key, value in node.items():
                if key != "compare":
                    walk(value, f"{where}.{key}" if where else key)

    walk(report, "")
    if report.get("failed") and not found:
        found.append(str(report.get("failure_reason") or "report.failed is true"))
    return found


BENCHMARK_NAME = "benchmark.json"
BENCHMARK_SCHEMA = Path(__file__).parents[1] / "schemas" / "benchmark.schema.json"


def check_benchmark_record(folder: Path) -> str | None:
    """A ``benchmark.json`` written by the benchmark stage must match its committed JSON Schema.

    Validated with ``jsonschema`` against ``pillsnap/schemas/benchmark.schema.json`` (generated
    from ``pillsnap.bench.schema``), so the driver checks the record without running a model.
    """
    path = folder / BENCHMARK_NAME
    if not path.is_file():
        return None
    import jsonschema

    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        return f"{BENCHMARK_NAME} is not readable JSON: {exc}"
    if isinstance(data, dict) and data.get("failed"):
        return f"{BENCHMARK_NAME} records a failed benchmark: {data.get('failure_reason')}"
    validator = jsonschema.Draft202012Validator(json.loads(BENCHMARK_SCHEMA.read_text()))
    problems = [
        f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
        for e in validator.iter_errors(data)
    ]
    if problems:
        return f"{BENCHMARK_NAME} does not match its schema: " + "; ".join(problems[:5])
    return None
