import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pytest
from _report_example import example_report

from pillsnap.equivalence.store import load_details, save_details


@dataclass
class _Cls:
    rows: pd.DataFrame
    metrics: dict[str, float]
    per_class_mismatch: list[dict[str, Any]]
    borderline: list[dict[str, Any]]
    logit_fit: dict[str, float]
    notes: list[str] = field(default_factory=list)


@dataclass
class _Det:
    metrics: dict[str, float]
    iou_diffs: np.ndarray
    score_diffs: np.ndarray
    examples: list[dict[str, Any]]
    thresholds: dict[str, dict[str, float]]
    notes: list[str] = field(default_factory=list)


@dataclass
class _E2E:
    metrics: dict[str, float]
    disagreements: list[dict[str, Any]]


@dataclass
class _Result:  # the fields of EquivalenceResult that save_details reads
    classification: _Cls | None
    detection: _Det | None
    end_to_end: _E2E | None


def _result() -> _Result:
    rows = pd.DataFrame(
        {
            "path": ["a.jpg", "b.jpg"],
            "true_class": [0, 1],
            "mse": [1e-12, 2e-12],
            "top1_match": [True, False],
            "margin": [0.5, 0.01],
        }
    )
    cls = _Cls(
        rows,
        {"mse_mean": 1.5e-12, "kl_max": float("nan")},
        [{"class_index": 1, "mismatches": 1}],
        [{"path": "b.jpg", "torch_top2": [[1, 0.5], [0, 0.49]]}],
        {"slope": 1.0},
    )
    det = _Det(
        {"photos": 2.0},
        np.array([0.0, 0.002]),
        np.array([1e-6, 0.0]),
        [{"path": "p.jpg", "torch": [[0, 0, 1, 1, 0.9, 0]], "onnx": [], "labels": []}],
        {"deployed": {"conf": 0.3}},
    )
    return _Result(cls, det, _E2E({"pill_agreement": 1.0}, []))


def test_round_trip(tmp_path):
    (tmp_path / "export_report.json").write_text(json.dumps(example_report()))
    save_details(_result(), tmp_path)
    loaded = load_details(tmp_path)
    assert loaded is not None and loaded.source == "loaded"
    pd.testing.assert_frame_equal(loaded.classification_rows, _result().classification.rows)
    np.testing.assert_array_equal(loaded.iou_diffs, [0.0, 0.002])
    assert loaded.classification["metrics"] == {
        "mse_mean": 1.5e-12,
        "kl_max": None,
    }  # NaN -> null in JSON
    assert loaded.detection["examples"][0]["torch"] == [[0, 0, 1, 1, 0.9, 0]]
    assert loaded.end_to_end["metrics"]["pill_agreement"] == 1.0
    assert not loaded.failed


def test_missing_details_or_report_means_none(tmp_path):
    assert load_details(tmp_path) is None
    save_details(_result(), tmp_path)
    assert load_details(tmp_path) is None  # details without the report they belong to
    (tmp_path / "export_report.json").write_text(json.dumps(example_report()))
    details = json.loads((tmp_path / "equivalence" / "details.json").read_text())
    details["format"] = "something-else"
    (tmp_path / "equivalence" / "details.json").write_text(json.dumps(details))
    with pytest.raises(ValueError, match="expected 'pillsnap-equivalence-details-v1'"):
        load_details(tmp_path)


def test_classification_only_result(tmp_path):
    (tmp_path / "export_report.json").write_text(json.dumps(example_report()))
    result = _result()
    result.detection = result.end_to_end = None
    save_details(result, tmp_path)
    loaded = load_details(tmp_path)
    assert loaded.iou_diffs.size == 0 and loaded.detection == {} and loaded.end_to_end == {}
