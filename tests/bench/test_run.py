"""run_benchmark on the fixture release with tiny budgets: every row has figures or a reason.

The release folder holds the exported fixture models, an INT8 classifier made the way the
quantize stage names it (``classification-<tag>.int8.onnx``, the product's recipe functions
calibrated on real crops, ``benchmarks/int8_models.py``) and a schema-valid
``export_report.json``.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from _demo_release import demo_release
from _report_example import example_report

from pillsnap.bench import run_benchmark
from pillsnap.bench.schema import validate_record
from pillsnap.bench.tables import (
    cold_start_table,
    environment_table,
    goal_text,
    pipeline_table,
    ratio_table,
    results_table,
    status_text,
)
from pillsnap.config import apply_overrides
from pillsnap.engines.timing import round_order
from pillsnap.report.schema import validate_report

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from int8_models import calibration_batch, quantize_int8

pytestmark = pytest.mark.slow
TAG = "20250101-000000-test000"
CONFIGS = [
    "torch-cpu-fp32",
    "torch-cuda-fp16",
    "ort-cpu-fp32",
    "ort-cpu-int8",
    "ort-cuda-fp32",
    "tensorrt-fp16",
    "tensorrt-int8",
    "openvino-cpu",
]
TINY = {
    "benchmark.configurations": CONFIGS,
    "benchmark.batch_sizes": [1, 2],
    "benchmark.rounds": 3,
    "benchmark.min_calls": 1,
    "benchmark.min_seconds": 0.0,
    "benchmark.warmup_calls": 1,
    "benchmark.warmup_seconds": 0.0,
    "benchmark.accuracy_images": 24,
    "benchmark.accuracy_photos": 4,
    "benchmark.pipeline_photos": 4,
    "benchmark.pipeline_batch_size": 2,
    "benchmark.max_seconds": 60,
    "benchmark.bootstrap_resamples": 200,
}


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    cfg, exports = demo_release(tmp_path_factory)
    folder = tmp_path_factory.mktemp("bench-release") / TAG
    folder.mkdir()
    for res in exports.values():
        shutil.copy(res.onnx_path, folder)
    fp32 = folder / f"classification-{TAG}.onnx"
    quantize_int8(fp32, calibration_batch(cfg, "classification", 16), "classification", cfg=cfg)
    (folder / "export_report.json").write_text(json.dumps(example_report()))
    return apply_overrides(cfg, TINY), folder


@pytest.fixture(scope="module")
def result(release):
    cfg, folder = release
    return run_benchmark(cfg, folder, progress=False)


def test_every_row_has_its_figures_or_a_reason(result):
    record = result.record
    assert not result.failed and validate_record(record) == []
    rows = record["rows"]
    assert len(rows) == len(CONFIGS) * 2 * 2  # configurations x models x batch sizes
    for row in rows:
        if row["status"] == "measured":
            lat = row["latency"]
            assert lat["calls"] >= lat["rounds"] >= 1 and lat["duration_s"] > 0
            assert 0 < lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["max_ms"]
            assert row["throughput"]["images_per_s"]["median"] > 0 and row["reason"] is None
        else:
            assert row["latency"] is None and row["reason"], row
    status = {(r["configuration"], r["model"]): r["status"] for r in rows}
    for name in ("torch-cpu-fp32", "ort-cpu-fp32"):
        assert status[(name, "classification")] == status[(name, "detection")] == "measured"
    # the INT8 classifier is found by its release name; the detector has none, and says so
    assert status[("ort-cpu-int8", "classification")] == "measured"
    reasons = {(r["configuration"], r["model"]): r["reason"] for r in rows}
    assert "no INT8 detection model" in reasons[("ort-cpu-int8", "detection")]
    if "CUDAExecutionProvider" not in record["environment"]["onnxruntime_providers"]:
        assert "onnxruntime-gpu not installed" in reasons[("ort-cuda-fp32", "classification")]
        assert "onnxruntime-gpu not installed" in reasons[("tensorrt-fp16", "detection")]
    if record["environment"]["gpu"] is None:
        assert "no CUDA device" in reasons[("torch-cuda-fp16", "classification")]
    if record["environment"]["openvino"] is None:
        assert reasons[("openvino-cpu", "classification")].startswith("openvino not installed")
    else:
        assert status[("openvino-cpu", "classification")] == "measured"


def test_models_runs_record_cold_start_memory_providers_and_accuracy(result):
    runs = {c["name"]: c for c in result.record["configurations"]}
    cpu = runs["ort-cpu-fp32"]["models"]["classification"]
    assert cpu["providers"] == ["CPUExecutionProvider"] and cpu["model_size_mb"] > 1
    assert cpu["cold_start"]["session_s"] > 0 and cpu["cold_start"]["first_inference_s"] > 0
    assert cpu["memory"]["rss_peak_above_baseline_mb"] >= 0 and cpu["memory"]["samples"] > 0
    assert cpu["accuracy"]["metric"] == "top1" and cpu["accuracy"]["images"] == 24
    assert cpu["accuracy"]["agreement"] == 1.0  # fp32 ONNX agrees with Torch fp32
    torch_run = runs["torch-cpu-fp32"]["models"]["detection"]
    assert (
        torch_run["model_file"] == "detection_best.pt" and torch_run["accuracy"]["agreement"] == 1.0
    )
    assert torch_run["accuracy"]["metric"] == "map50_95" and torch_run["accuracy"]["value"] > 0.5
    int8 = runs["ort-cpu-int8"]["models"]["classification"]
    assert int8["model_file"] == f"classification-{TAG}.int8.onnx"
    assert (
        int8["model_size_mb"] < 0.5 * cpu["model_size_mb"] and int8["accuracy"]["agreement"] > 0.8
    )
    assert runs["ort-cpu-int8"]["status"] == "partly"
    assert runs["tensorrt-fp16"]["status"] == "unavailable" and runs["tensorrt-fp16"]["reason"]


def test_interleaving_order_is_the_seeded_one(result):
    record = result.record
    orders = record["round_orders"]
    for key in ("classification@1", "classification@2", "detection@1", "detection@2", "pipeline"):
        assert orders[key], key
    ran = [
        c["name"]
        for c in record["configurations"]
        if c["models"]["classification"]["status"] == "ran"
    ]
    got = orders["classification@1"]
    assert got == round_order(ran, len(got), record["settings"]["seed"], "classification@1")


def test_ratios_pipeline_goal_and_tables(result):
    record = result.record
    pairs = {(r["model"], r["batch"], r["configuration"], r["versus"]) for r in record["ratios"]}
    assert ("classification", 1, "ort-cpu-int8", "ort-cpu-fp32") in pairs
    assert ("detection", 2, "ort-cpu-fp32", "torch-cpu-fp32") in pairs
    pipe = {p["configuration"]: p for p in record["pipeline"]}
    assert pipe["ort-cpu-fp32"]["status"] == "measured" and pipe["ort-cpu-fp32"]["pills"] > 0
    assert set(pipe["ort-cpu-fp32"]["phases_ms_per_photo"]) >= {"detector", "nms", "classifier"}
    assert "no INT8 detection model" in pipe["ort-cpu-int8"]["reason"]
    assert record["goal"]["candidates"] and "goal:" in goal_text(record)
    for frame in (
        results_table(record),
        cold_start_table(record),
        environment_table(record),
        pipeline_table(record),
    ):
        assert len(frame) and not frame.isna().any().any()
    assert len(ratio_table(record, "torch-cpu-fp32"))
    text = status_text(record)
    assert text.startswith("benchmark passed") and "ms" not in text


def test_record_and_report_summary_are_written(result, release):
    _, folder = release
    assert result.path == folder / "benchmark.json"
    assert json.loads(result.path.read_text()) == result.record
    report = json.loads((folder / "export_report.json").read_text())
    assert validate_report(report) == []
    summary = report["benchmark"]
    assert summary["file"] == "benchmark.json" and "ort-cpu-int8" in summary["ran"]
    assert "tensorrt-fp16" in summary["unavailable"]
    assert any(s["configuration"] == "ort-cpu-int8" for s in summary["speed"])


def test_a_required_configuration_that_did_not_run_fails(release, tmp_path):
    cfg, folder = release
    strict = apply_overrides(
        cfg,
        {
            "benchmark.models": ["classification"],
            "benchmark.configurations": ["torch-cpu-fp32", "tensorrt-fp16"],
            "benchmark.require": ["tensorrt-fp16"],
            "benchmark.batch_sizes": [1],
            "benchmark.accuracy_images": 0,
            "benchmark.max_seconds": 3,
            "benchmark.rounds": 5000,  # far more than 3 s hold on any machine
        },
    )
    failed = run_benchmark(strict, folder, tmp_path, progress=False)
    if failed.record["configurations"][1]["status"] == "ran":
        pytest.skip("this machine runs TensorRT")
    assert failed.failed and "tensorrt-fp16" in failed.failure_reason
    assert "benchmark.require" in failed.failure_reason
    written = json.loads((tmp_path / "benchmark.json").read_text())
    assert written["failed"] and validate_record(written) == []
    assert status_text(written).startswith("benchmark FAILED") and "(required)" in status_text(
        written
    )
    # the budget is real: rounds stop when it is spent, and the record says so
    assert (
        len(written["round_orders"]["classification@1"]) < 5000 and written["budget"]["truncated"]
    )
    assert any("rounds fit the budget" in n for n in written["budget"]["notes"])
