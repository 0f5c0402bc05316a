"""The benchmark record: assembled from the measurements, validated, written; its report summary.

``benchmark.json`` holds everything (``bench/schema.py``); ``export_report.json`` of the
release gets a ``benchmark`` summary (one line per model x configuration x batch: the
median latency with its interval), which is what ``pillsnap release diff`` compares.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pillsnap.bench import stats
from pillsnap.bench.catalogue import CATALOGUE
from pillsnap.bench.schema import RECORD_NAME, write_record

if TYPE_CHECKING:
    from pillsnap.bench.artifacts import ReleaseModels
    from pillsnap.bench.run import Slot
    from pillsnap.config import Config
    from pillsnap.engines.timing import Deadline

log = logging.getLogger(__name__)
REPORT_NAME = "export_report.json"


def _model_run(slot: Slot) -> dict[str, Any]:
    size = (
        slot.model_file.stat().st_size / 1e6
        if slot.model_file and slot.model_file.is_file()
        else None
    )
    return {
        "status": slot.status,
        "reason": slot.reason,
        "model_file": None if slot.model_file is None else slot.model_file.name,
        "model_size_mb": None if size is None else round(size, 3),
        "providers": slot.providers,
        "execution_precision": slot.execution_precision,
        "cold_start": slot.cold_start,
        "memory": slot.memory,
        "warmup_calls": slot.warmup[0] if slot.warmup else None,
        "warmup_s": slot.warmup[1] if slot.warmup else None,
        "accuracy": slot.accuracy,
    }


def _configurations(cfg: Config, slots: dict[str, list[Slot]]) -> list[dict[str, Any]]:
    out = []
    for i, name in enumerate(cfg.benchmark.configurations):
        conf = CATALOGUE[name]
        per_task = {task: group[i] for task, group in slots.items()}
        statuses = {s.status for s in per_task.values()}
        if statuses == {"ran"}:
            status = "ran"
        elif "ran" in statuses:
            status = "partly"
        elif statuses == {"unavailable"}:
            status = "unavailable"
        else:
            status = "failed"
        reasons = sorted({s.reason for s in per_task.values() if s.reason})
        out.append(
            {
                "name": name,
                "engine": conf.engine,
                "device": conf.device,
                "precision": conf.precision,
                "description": conf.description,
                "required": name in cfg.benchmark.require,
                "status": status,
                "reason": "; ".join(reasons) or None,
                "models": {task: _model_run(s) for task, s in per_task.items()},
            }
        )
    return out


def assemble_record(
    cfg: Config,
    models: ReleaseModels,
    slots: dict[str, list[Slot]],
    rows: list[dict[str, Any]],
    ratio_rows: list[dict[str, Any]],
    orders: dict[str, list[list[str]]],
    pipeline: list[dict[str, Any]],
    env: dict[str, Any],
    threads: int,
    deadline: Deadline,
    timed: dict[Any, Any],
    notes: list[str],
) -> dict[str, Any]:
    from pillsnap.versioning import iso_utc

    b = cfg.benchmark
    configurations = _configurations(cfg, slots)
    missing = [c for c in configurations if c["required"] and c["status"] != "ran"]
    failure = (
        "required configuration(s) did not run: "
        + "; ".join(f"{c['name']} ({c['reason'] or c['status']})" for c in missing)
        + ". Fix: run on a machine that has them, or change benchmark.require"
        if missing
        else None
    )
    agreements = {
        s.conf.name: (s.accuracy or {}).get("agreement") for s in slots.get("classification", [])
    }
    used = deadline.elapsed()
    truncated = any(r.truncated or r.short_rounds for r in timed.values())
    if used > b.max_seconds:
        notes.append(
            f"used {used:.0f} s of the {b.max_seconds:g} s budget: building, warm-up, the accuracy "
            "pass and the first round of each block always run"
        )
    return {
        "schema_version": 1,
        "version_tag": models.tag,
        "benchmarked_at_utc": iso_utc(),
        "release_dir": str(models.folder),
        "failed": bool(missing),
        "failure_reason": failure,
        "settings": {
            "threads": threads,
            "threads_requested": b.threads,
            "warmup_calls": b.warmup_calls,
            "warmup_seconds": b.warmup_seconds,
            "min_calls": b.min_calls,
            "min_seconds": b.min_seconds,
            "rounds": b.rounds,
            "seed": b.seed,
            "max_cov": b.max_cov,
            "bootstrap_resamples": b.bootstrap_resamples,
            "batch_sizes": list(b.batch_sizes),
            "models": list(slots),
            "accuracy_images": b.accuracy_images,
            "accuracy_photos": b.accuracy_photos,
            "pipeline_photos": b.pipeline_photos,
        },
        "budget": {
            "max_seconds": b.max_seconds,
            "used_s": round(used, 2),
            "truncated": bool(truncated or used > b.max_seconds),
            "notes": notes,
        },
        "environment": env,
        "configurations": configurations,
        "rows": rows,
        "round_orders": orders,
        "ratios": ratio_rows,
        "pipeline": pipeline,
        "goal": stats.goal(ratio_rows, agreements, list(b.batch_sizes), b)
        if "classification" in slots
        else None,
    }


def summary(record: dict[str, Any]) -> dict[str, Any]:
    """The ``benchmark`` block of ``export_report.json`` (what ``release diff`` compares)."""
    confs = record["configurations"]
    return {
        "file": RECORD_NAME,
        "benchmarked_at_utc": record["benchmarked_at_utc"],
        "failed": record["failed"],
        "failure_reason": record["failure_reason"],
        "threads": record["settings"]["threads"],
        "cpu": str(record["environment"]["cpu"].get("model", "")),
        "int8_class": str(record["environment"]["cpu"].get("int8_class", "")),
        "ran": [c["name"] for c in confs if c["status"] in ("ran", "partly")],
        "unavailable": {
            c["name"]: c["reason"] or c["status"]
            for c in confs
            if c["status"] not in ("ran", "partly")
        },
        "speed": [
            {
                "model": r["model"],
                "configuration": r["configuration"],
                "batch": r["batch"],
                "latency_ms": r["latency"]["median_ms"],
                "images_per_s": r["throughput"]["images_per_s"]["median"],
                "noisy": r["latency"]["noisy"],
            }
            for r in record["rows"]
            if r["status"] == "measured"
        ],
        "pipeline_ms_per_photo": {
            p["configuration"]: p["per_photo_ms"] for p in record["pipeline"] if p["per_photo_ms"]
        },
        "goal_met": None if record["goal"] is None else record["goal"]["met"],
    }


def write_outputs(
    record: dict[str, Any], release: Path, out_dir: str | Path | None
) -> tuple[Path | None, dict[str, Any]]:
    """Write ``benchmark.json`` (and the report summary when ``out`` is a release being made)."""
    finished = (release / "manifest.json").is_file()
    out = Path(out_dir) if out_dir is not None else (None if finished else release)
    brief = summary(record)
    if out is None:
        log.info("%s is a finished release: benchmark.json not written (pass out_dir)", release)
        return None, brief
    path = write_record(out / RECORD_NAME if out.suffix != ".json" else out, record)
    report = (out if out.suffix != ".json" else out.parent) / REPORT_NAME
    if report.is_file() and not (report.parent / "manifest.json").is_file():
        from pillsnap.report.schema import write_report

        data = json.loads(report.read_text())
        data["benchmark"] = brief
        write_report(report, data)
        log.info("benchmark summary added to %s", report)
    log.info("benchmark record -> %s", path)
    return path, brief
