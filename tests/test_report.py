"""export_report.json schema: committed file is current, reports are validated before writing."""

from __future__ import annotations

import copy
import json

import jsonschema
import pytest
from _report_example import COMPARE_KEYS_E3, MODEL_KEYS_E3

from pillsnap import report as rp


def _compare(**kw) -> dict:
    base = {
        "mode": "smoke",
        "sample_policy": "smoke",
        "sample_count": 32,
        "per_class_k": 1,
        "min_classes": 1000,
        "max_total": 5000,
        "sampled_classes": 5,
        "sampled_images": 32,
        "mse_mean": 1e-12,
        "mse_p99": 2e-12,
        "top1_match_rate": 1.0,
        "top1_mismatch_count": 0,
        "failed": False,
        "failure_reason": None,
        "deltas": {"map_0_5": None, "map_0_5_0_95": None},
        "notes": [],
        "precision": "fp32",
        "at_risk_count": 0,
        "metrics": {"mse_mean": 1e-12, "kl_mean": None},
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
    return {**base, **kw}


def minimal_report() -> dict:
    model = {
        "task": "classification",
        "backbone": "efficientnetv2_s",
        "num_classes": 5,
        "ckpt_path": "/c.pt",
        "ckpt_sha256": "0" * 64,
        "onnx_path": "/m.onnx",
        "onnx_sha256": "1" * 64,
        "exported_at_utc": "2026-01-02T03:04:05Z",
        "git_sha": "abc1234",
        "input_shape": [1, 3, 384, 384],
        "opset": 17,
        "dynamic_axes": {"input": {"0": "batch"}},
        "input_names": ["input"],
        "output_names": ["logits"],
        "params_million": 20.2,
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
        "compare": _compare(),
    }
    return {
        "schema_version": 1,
        "version_tag": "20260102-030405-abc1234",
        "git_sha": "abc1234",
        "git_dirty": False,
        "exported_at_utc": "2026-01-02T03:04:05Z",
        "compared_at_utc": "2026-01-02T03:05:05Z",
        "failed": False,
        "failure_reason": None,
        "models": {"classification": model},
        "end_to_end": {"compared": False, "note": "needs both models"},
        "verdict": {
            "failed": False,
            "failure_reason": None,
            "failed_checks": [],
            "summary": "passed",
            "strict": {"failed": False, "reason": None},
            "likely_causes": [],
        },
        "environment": rp.environment(),
        "config": {},
        "timing": {"wall_s": 1.0},
    }


def test_committed_schema_is_the_generated_one():
    assert rp.SCHEMA_PATH.read_text() == rp.schema_text(), (
        "run `python -m pillsnap.report --write-schema`"
    )
    assert rp.main(["--check-schema"]) == 0


def test_minimal_report_is_valid_for_pydantic_and_jsonschema():
    data = minimal_report()
    assert rp.validate_report(data) == []
    jsonschema.validate(data, json.loads(rp.SCHEMA_PATH.read_text()))
    model = data["models"]["classification"]
    assert all(k in model for k in MODEL_KEYS_E3) and all(
        k in model["compare"] for k in COMPARE_KEYS_E3
    )


@pytest.mark.parametrize(
    "mutate, where",
    [
        (lambda r: r["models"]["classification"].pop("opset"), "opset"),
        (lambda r: r.update(git_sha="ABCDEFG1"), "git_sha"),
        (
            lambda r: r["models"]["classification"].update(exported_at_utc="2026-01-02 03:04:05"),
            "exported_at_utc",
        ),
        (lambda r: r["models"]["classification"]["compare"].update(mode="quick"), "mode"),
        (lambda r: r.update(surprise=1), "surprise"),
    ],
)
def test_invalid_reports_are_explained(mutate, where):
    data = copy.deepcopy(minimal_report())
    mutate(data)
    problems = rp.validate_report(data)
    assert problems and any(where in p for p in problems)


def test_write_report_refuses_invalid_and_writes_valid(tmp_path):
    bad = minimal_report()
    bad["failed"] = "maybe"
    with pytest.raises(ValueError, match="failed"):
        rp.write_report(tmp_path / "r.json", bad)
    assert not (tmp_path / "r.json").exists()
    path = rp.write_report(tmp_path / "r.json", minimal_report())
    assert json.loads(path.read_text())["version_tag"] == "20260102-030405-abc1234"
    assert rp.main([str(path)]) == 0


def test_non_finite_metrics_become_null():
    assert rp.finite_or_none({"a": float("nan"), "b": 1, "c": float("inf")}) == {
        "a": None,
        "b": 1.0,
        "c": None,
    }
