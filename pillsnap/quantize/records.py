"""The stage's records: ``quantization.json``, per-layer tables, the report's ``quantization`` sections.

* ``quantization.json`` -- everything: per model the calibration list (files and
  sha256), the recipes tried, the exclusions with reasons, every step of the loop,
  the per-layer ranking, the speed, the gate; the final gate; the CPU and its flags.
* ``quantization/<task>_layers.csv`` -- the per-layer SQNR table (both SQNRs).
* ``export_report.json`` gains ``models.<task>.quantization`` (recipe, calibration
  digest, excluded nodes with reasons, gate metrics, speedup, verdict), validated
  against the one report schema before it is written.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pillsnap.config import Config
    from pillsnap.quantize.search import ModelOutcome
    from pillsnap.quantize.stage import QuantizationResult

log = logging.getLogger(__name__)


def verdict_of(result: QuantizationResult) -> str:
    if not result.failed:
        return "passed"
    return "failed" if result.required else "shipped_without_int8"


def model_section(
    result: QuantizationResult, task: str, outcome: ModelOutcome, cpu: dict[str, Any]
) -> dict[str, Any]:
    """``models.<task>.quantization`` of ``export_report.json`` (``report.schema.Quantization``)."""
    from pillsnap.fileio import sha256_file
    from pillsnap.report.schema import finite_or_none

    shipped = result.shipped.get(task)
    gate = result.final if result.final is not None else outcome.gate
    checks = [c for c in (gate.checks if gate else []) if c.name.startswith(task + ".")]
    metrics = (gate.metrics.get(task, {}) if gate else {}) or {}
    cal = outcome.calibration.to_record()
    cal.pop("files")
    return {
        "shipped": shipped is not None,
        "required": result.required,
        "failed": result.failed,
        "reason": outcome.reason or (result.reason if result.failed else None),
        "verdict": verdict_of(result),
        "int8_onnx": shipped.name if shipped else None,
        "int8_sha256": sha256_file(shipped) if shipped else None,
        "source_onnx": outcome.float_path.name,
        "recipe": outcome.recipe,
        "recipes_tried": outcome.recipes,
        "calibration": cal,
        "excluded": [e.to_dict() for e in outcome.exclusions],
        "excluded_counts": dict(Counter(e.kind for e in outcome.exclusions)),
        "search": [s.to_dict() for s in outcome.steps],
        "gates": [c.to_dict() for c in checks],
        "metrics": finite_or_none(metrics),
        "speedup": outcome.speed.get("speedup"),
        "speed": {k: v for k, v in outcome.speed.items() if k != "measured_at"},
        "cpu": {**cpu, "reduce_range": bool(outcome.recipe.get("reduce_range"))},
        "seconds": outcome.seconds,
    }


def write_records(cfg: Config, result: QuantizationResult, cpu: dict[str, Any]) -> dict[str, Any]:
    """Write every record of the stage into the release folder; returns ``quantization.json``."""
    from pillsnap.fileio import atomic_write_bytes, ensure_dir, save_json
    from pillsnap.quantize.stage import FOLDER, RECORD_FORMAT, RECORD_NAME, REPORT_NAME
    from pillsnap.report.record import to_jsonable

    folder = ensure_dir(result.release_dir / FOLDER)
    sections = {t: model_section(result, t, o, cpu) for t, o in result.outcomes.items()}
    for task, outcome in result.outcomes.items():
        if outcome.sensitivity is not None:
            csv = outcome.sensitivity.layers.to_csv(index=False).encode()
            atomic_write_bytes(folder / f"{task}_layers.csv", csv)
            groups = outcome.sensitivity.groups.to_csv(index=False).encode()
            atomic_write_bytes(folder / f"{task}_groups.csv", groups)
    final = result.final
    record = {
        "format": RECORD_FORMAT,
        "version_tag": result.tag,
        "failed": result.failed,
        "failure_reason": result.reason,
        "required": result.required,
        "verdict": verdict_of(result),
        "shipped": {t: p.name for t, p in result.shipped.items()},
        "cpu": cpu,
        "seconds": result.seconds,
        "final_gate": None
        if final is None
        else {
            "passed": final.passed,
            "summary": final.summary(),
            "gates": [c.to_dict() for c in final.checks],
            "report": f"{FOLDER}/{REPORT_NAME}",
        },
        "models": {
            t: {
                **sections[t],
                "calibration": o.calibration.to_record(),
                "calibration_stats": o.calibration_stats,
                "causes": o.causes,
                "sensitivity": o.sensitivity.to_record() if o.sensitivity is not None else None,
            }
            for t, o in result.outcomes.items()
        },
        "config": cfg.quantize.model_dump(mode="json"),
    }
    record = to_jsonable(record)
    save_json(result.release_dir / RECORD_NAME, record)
    _add_to_report(result.release_dir / REPORT_NAME, sections)
    return record


def _add_to_report(path: Path, sections: dict[str, dict[str, Any]]) -> None:
    """Add ``quantization`` to each model of the release's report (absent report: nothing to add)."""
    from pillsnap.report.record import to_jsonable
    from pillsnap.report.schema import write_report

    if not path.is_file():
        log.info(
            "no %s in %s: the quantization sections live in quantization.json only",
            path.name,
            path.parent,
        )
        return
    report = json.loads(path.read_text())
    for task, section in sections.items():
        entry = (report.get("models") or {}).get(task)
        if entry is not None:
            entry["quantization"] = to_jsonable(section)
    write_report(path, report)
