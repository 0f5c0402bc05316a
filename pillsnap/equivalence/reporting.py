"""Turn parity results, gates and causes into the ``export_report.json`` dict (``pillsnap.report.schema`` schema)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pillsnap.report.schema import finite_or_none

if TYPE_CHECKING:
    from pillsnap.config import Config
    from pillsnap.equivalence.classification import ClassificationParity
    from pillsnap.equivalence.detection import DetectionParity
    from pillsnap.equivalence.end_to_end import EndToEndParity
    from pillsnap.equivalence.gates import Check, Verdict
    from pillsnap.models.common import ExportResult
    from pillsnap.sampling.sample import Sample


def _num(metrics: dict[str, float], key: str) -> float | None:
    return finite_or_none({key: metrics[key]})[key] if key in metrics else None


def compare_section(
    cfg: Config,
    task: str,
    sample: Sample,
    parity: ClassificationParity | DetectionParity,
    checks: list[Check],
    verdict: Verdict,
    notes: list[str],
) -> dict[str, Any]:
    """The spec E-3 ``compare`` block of one model plus everything measured for it."""
    c = cfg.compare
    m = parity.metrics
    is_cls = task == "classification"
    failed = any(not ch.passed for ch in checks)
    strict_missed = [ch for ch in checks if ch.strict_passed is False]
    return {
        "mode": sample.mode,
        "sample_policy": sample.policy,
        "sample_count": c.sample_count if is_cls else c.detection_sample_count,
        "per_class_k": c.per_class_k,
        "min_classes": c.min_classes,
        "max_total": c.max_total,
        "sampled_classes": sample.sampled_classes,
        "sampled_images": int(m["n"] if is_cls else m["photos"]),
        "mse_mean": _num(m, "mse_mean"),
        "mse_p99": _num(m, "mse_p99"),
        "top1_match_rate": _num(m, "top1_match_rate"),
        "top1_mismatch_count": int(m["top1_mismatch_count"]) if is_cls else None,
        "failed": failed,
        "failure_reason": verdict.failure_reason(task),
        "deltas": {
            "map_0_5": None if is_cls else _num(m, "delta_map50"),
            "map_0_5_0_95": None if is_cls else _num(m, "delta_map50_95"),
        },
        "notes": [*notes, *sample.notes, *parity.notes],
        "precision": c.precision,
        "at_risk_count": int(m["at_risk_count"]) if is_cls else None,
        "metrics": finite_or_none(m),
        "gates": [ch.to_dict() for ch in checks],
        "strict": {
            "failed": bool(strict_missed),
            "reason": "; ".join(
                f"{ch.name} = {ch.value:.4g} above the strict aim {ch.strict_limit:g}"
                for ch in strict_missed
            )
            or None,
        },
        "likely_causes": [cause for cause in verdict.causes if cause["model"] == task]
        if failed
        else [],
        "per_class_mismatch_top10": getattr(parity, "per_class_mismatch", []),
        "borderline_cases": getattr(parity, "borderline", []),
        "hardness_bins": sample.hardness,
        "thresholds": getattr(parity, "thresholds", {}),
        "skipped_count": len(sample.skipped),
        "skipped_files": [{"path": s.path, "reason": s.reason} for s in sample.skipped],
        "empty_classes": list(sample.empty_classes),
        "seed": c.seed,
    }


def model_section(
    cfg: Config,
    res: ExportResult,
    git_sha: str,
    providers: list[str],
    torch_device: str,
    compare: dict[str, Any],
) -> dict[str, Any]:
    from pillsnap.fileio import sha256_file

    pp = cfg.postprocess
    ckpt = Path(res.ckpt_path)
    return {
        "task": res.task,
        "backbone": res.arch,
        "num_classes": res.num_classes,
        "ckpt_path": str(ckpt),
        "ckpt_sha256": sha256_file(ckpt) if ckpt.is_file() else None,
        "onnx_path": str(res.onnx_path),
        "onnx_sha256": sha256_file(res.onnx_path),
        "exported_at_utc": res.exported_at_utc,
        "git_sha": git_sha,
        "input_shape": list(res.input_shape),
        "opset": res.opset,
        "dynamic_axes": {
            name: {str(k): v for k, v in axes.items()} for name, axes in res.dynamic_axes.items()
        },
        "input_names": list(res.input_names),
        "output_names": list(res.output_names),
        "params_million": res.params_million,
        "providers": providers,
        "torch_device": torch_device,
        "metadata": dict(res.metadata),
        "postprocess": {
            "nms": pp.nms.model_dump(),
            "applied_in": "python_common",
            "map_eval": {
                "conf_threshold": pp.eval_conf_threshold,
                "iou_threshold": pp.eval_iou_threshold,
                "max_detections": pp.eval_max_detections,
            },
        },
        "compare": compare,
    }


def end_to_end_section(
    e2e: EndToEndParity | None, checks: list[Check], verdict: Verdict, note: str | None
) -> dict[str, Any]:
    if e2e is None:
        return {"compared": False, "note": note}
    m = e2e.metrics
    failed = any(not ch.passed for ch in checks)
    return {
        "compared": True,
        "note": note,
        "photos": int(m["photos"]),
        "pills": int(m["pills"]),
        "pill_agreement": _num(m, "pill_agreement"),
        "photo_agreement": _num(m, "photo_agreement"),
        "borderline_pills": int(m["borderline_pills"]),
        "disagreements": e2e.disagreements,
        "failed": failed,
        "failure_reason": verdict.failure_reason("end_to_end"),
    }


def verdict_section(verdict: Verdict) -> dict[str, Any]:
    return {
        "failed": verdict.failed,
        "failure_reason": verdict.failure_reason(),
        "failed_checks": [ch.describe() for ch in verdict.failed_checks],
        "summary": verdict.summary_line(),
        "strict": {"failed": verdict.strict_failed, "reason": verdict.strict_reason()},
        "likely_causes": verdict.causes,
    }
