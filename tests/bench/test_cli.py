"""``pillsnap bench``: prints the tables, writes the record, exit 0 / 1 (required missing) / 2 (bad input)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _demo_release import demo_release

from pillsnap.bench.schema import validate_record
from pillsnap.cli import main

pytestmark = pytest.mark.slow
FAST = [
    "--set", "benchmark.rounds=3",
    "--set", "benchmark.min_calls=1",
    "--set", "benchmark.min_seconds=0",
    "--set", "benchmark.warmup_calls=1",
    "--set", "benchmark.warmup_seconds=0",
    "--set", "benchmark.accuracy_images=8",
    "--set", "benchmark.max_seconds=20",
]  # fmt: skip


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cfg, exports = demo_release(tmp_path_factory)
    folder = Path(next(iter(exports.values())).onnx_path).parent
    data = [
        "--set", f"paths.classification_data={cfg.paths.classification_data}",
        "--set", f"paths.detection_data={cfg.paths.detection_data}",
    ]  # fmt: skip
    return ["--config", str(cfg.source), *data, "--release", str(folder)], folder


def test_bench_prints_the_tables_and_writes_the_record(setup, tmp_path, capsys):
    args, folder = setup
    out = tmp_path / "b.json"
    argv = [
        "bench",
        *args,
        *FAST,
        "--only",
        "classifier",
        "--batch",
        "1",
        "--configs",
        "torch-cpu-fp32,ort-cpu-fp32",
        "--out",
        str(out),
    ]
    assert main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "ort-cpu-fp32" in printed and "speed-up over torch-cpu-fp32" in printed
    assert "ms/batch (median [95% CI])" in printed and f"record: {out}" in printed
    record = json.loads(out.read_text())
    assert validate_record(record) == [] and record["settings"]["models"] == ["classification"]
    assert {r["batch"] for r in record["rows"]} == {1}
    assert not (folder / "benchmark.json").exists()  # the release itself is left alone
    assert main(argv) == 2  # a record is never overwritten
    assert "exists" in capsys.readouterr().err


def test_required_configuration_missing_exits_1(setup, tmp_path, capsys):
    args, _ = setup
    argv = ["bench", *args, *FAST, "--only", "classifier", "--batch", "1", "--configs", "torch-cpu-fp32,tensorrt-fp16",
            "--set", "benchmark.require=[tensorrt-fp16]", "--set", "benchmark.accuracy_images=0", "--out", str(tmp_path / "r.json")]  # fmt: skip
    code = main(argv)
    err = capsys.readouterr().err
    if code == 0:
        pytest.skip("this machine runs TensorRT")
    assert code == 1 and "[FAILED] required configuration(s) did not run: tensorrt-fp16" in err
    assert json.loads((tmp_path / "r.json").read_text())["failed"] is True


def test_bad_input_exits_2_before_measuring(setup, tmp_path, capsys):
    args, _ = setup
    assert main(["bench", *args, "--batch", "one"]) == 2
    assert "--batch 'one': expected integers" in capsys.readouterr().err
    assert main(["bench", *args, "--configs", "tensorrt-fp8"]) == 2
    assert "unknown configuration" in capsys.readouterr().err
    assert main(["bench", "--config", args[1], "--release", str(tmp_path / "none")]) == 2
    assert "no release at" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
