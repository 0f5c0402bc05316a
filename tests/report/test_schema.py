"""export_report.json schema: committed file is current, reports are validated before writing."""

from __future__ import annotations

import copy
import json

import jsonschema
import pytest
from _report_example import COMPARE_KEYS_E3, MODEL_KEYS_E3, example_report

from pillsnap.report import schema as rp


def minimal_report() -> dict:
    report = example_report()
    report["version_tag"] = "20260102-030405-abc1234"
    return report


def test_committed_schema_is_the_generated_one():
    assert rp.SCHEMA_PATH.read_text() == rp.schema_text(), (
        "run `python -m pillsnap.report.schema --write-schema`"
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
