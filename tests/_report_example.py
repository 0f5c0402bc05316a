"""A small, schema-valid ``export_report.json`` for tests that fake the export stage.

Built by hand (not by running an export) so the release-driver tests stay fast;
``example_report`` checks itself against ``pillsnap.report.schema`` so a schema change
shows up here first, with the list of problems.
"""

from __future__ import annotations

from typing import Any

from pillsnap.report.schema import validate_report

_TS = "2025-01-01T00:00:00Z"


def _compare(task: str, mse: float | None) -> dict[str, Any]:
    cls = task == "classification"
    return {
        "mode": "smoke",
        "sample_policy": "stratified",
        "sample_count": 8,
        "per_class_k": 1,
        "min_classes": 1,
        "max_total": 8,
        "sampled_classes": 4,
        "sampled_images": 8,
        "mse_mean": mse if cls else None,
        "mse_p99": mse if cls else None,
        "top1_match_rate": 1.0 if cls else None,
        "top1_mismatch_count": 0 if cls else None,
        "failed": False,
        "failure_reason": None,
        "deltas": {"map_0_5": None if cls else 0.0, "map_0_5_0_95": None if cls else 0.0},
        "notes": [],
        "precision": "fp32",
        "at_risk_count": 0 if cls else None,
        "metrics": {},
        "gates": [],
        "strict": {"failed": False, "reason": None},
        "likely_causes": [],
        "per_class_mismatch_top10": [],
        "borderline_cases": [],
        "hardness_bins": {},
        "thresholds": {},
        "skipped_count": 0,
        "skipped_files": [],
        "empty_classes": [],
        "seed": 0,
    }


def _model(task: str, mse: float | None) -> dict[str, Any]:
    size = 384 if task == "classification" else 640
    return {
        "task": task,
        "backbone": "tiny",
        "num_classes": 4,
        "ckpt_path": f"/exp/{task}_best.pt",
        "ckpt_sha256": None,
        "onnx_path": f"/runs/t/{task}-t.onnx",
        "onnx_sha256": "0" * 64,
        "exported_at_utc": _TS,
        "git_sha": "nogit",
        "input_shape": [1, 3, size, size],
        "opset": 17,
        "dynamic_axes": {"input": {"0": "batch"}},
        "input_names": ["input"],
        "output_names": ["output"],
        "params_million": 0.1,
        "providers": ["CPUExecutionProvider"],
        "torch_device": "cpu",
        "metadata": {},
        "postprocess": {
            "nms": {
                "conf_threshold": 0.3,
                "iou_threshold": 0.5,
                "max_detections": 100,
                "class_agnostic": False,
            },
            "applied_in": "python_common",
            "map_eval": {"conf_threshold": 0.001, "iou_threshold": 0.7, "max_detections": 300},
        },
        "compare": _compare(task, mse),
    }


def example_report(mse: float = 1e-9) -> dict[str, Any]:
    report = {
        "schema_version": 1,
        "version_tag": "t",
        "git_sha": "nogit",
        "git_dirty": None,
        "exported_at_utc": _TS,
        "compared_at_utc": _TS,
        "failed": False,
        "failure_reason": None,
        "models": {
            "detection": _model("detection", None),
            "classification": _model("classification", mse),
        },
        "end_to_end": {"compared": False, "note": "fake"},
        "verdict": {
            "failed": False,
            "failure_reason": None,
            "failed_checks": [],
            "summary": "passed",
            "strict": {"failed": False, "reason": None},
            "likely_causes": [],
        },
        "environment": {"python": "3.11", "platform": "test", "libraries": {}},
        "config": {},
        "timing": {},
    }
    problems = validate_report(report)
    if problems:
        raise AssertionError(
            "tests/_report_example.py no longer matches the report schema:\n" + "\n".join(problems)
        )
    return report


# The keys spec E-3 requires for each model and its comparison.
MODEL_KEYS_E3 = (
    "backbone",
    "num_classes",
    "ckpt_path",
    "onnx_path",
    "exported_at_utc",
    "git_sha",
    "input_shape",
    "opset",
    "dynamic_axes",
    "params_million",
    "providers",
    "postprocess",
    "compare",
)
COMPARE_KEYS_E3 = (
    "mode",
    "sample_policy",
    "sample_count",
    "per_class_k",
    "min_classes",
    "max_total",
    "sampled_classes",
    "sampled_images",
    "mse_mean",
    "mse_p99",
    "top1_match_rate",
    "top1_mismatch_count",
    "failed",
    "failure_reason",
    "deltas",
    "notes",
)


def divergence_section(first: int | None) -> dict:
    """A detection divergence section whose first divergent layer is ``first`` (None: none)."""
    from collections import Counter

    from pillsnap.equivalence.divergence import Divergence
    from pillsnap.equivalence.layers import LayerDiff, LayerTable

    errors = [1e-7, 2e-7, 0.3, 0.4] if first is not None else [1e-7, 2e-7, 3e-7, 1e-7]
    rows = [
        LayerDiff(i, f"t{i}", f"/m{i}/Conv", "Conv", (1, 4), e, 10.0, e, f"m{i}", before, upstream)
        for i, e in enumerate(errors)
        for before, upstream in [(errors[i - 1], (f"t{i - 1}",)) if i else (0.0, ())]
    ]
    return Divergence("detection", 1e-3, LayerTable(rows, Counter()), samples=2).to_section()
