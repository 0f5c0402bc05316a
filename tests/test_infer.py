"""`python -m pillsnap.infer` / `pillsnap infer`: results, skipped files, exit codes, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from _tiny import DEMO, LOW_CONF, build_tiny_experiment, demo_available, write_photos

from pillsnap.cli import main as cli_main
from pillsnap.infer import main

pytestmark = pytest.mark.slow
SETS = [arg for key, value in LOW_CONF.items() for arg in ("--set", f"{key}={value}")]


@pytest.fixture(scope="module")
def config_path(tmp_path_factory):
    if demo_available():
        return DEMO / "config.yaml"
    root = tmp_path_factory.mktemp("infer")
    build_tiny_experiment(root)
    return root / "config.yaml"


@pytest.fixture(scope="module")
def photos_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    write_photos(folder, 3)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a whole jpeg")
    (folder / "notes.txt").write_text("not an image\n")
    return folder


def test_pipeline_writes_jsonl_and_skips_unreadable_files(
    config_path, photos_dir, tmp_path, capsys
):
    out = tmp_path / "results.jsonl"
    rc = main(
        [
            "--engine",
            "torch",
            "--inputs",
            str(photos_dir),
            "--batch",
            "2",
            "--config",
            str(config_path),
            "--out",
            str(out),
            *SETS,
        ]
    )
    err = capsys.readouterr().err
    assert rc == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"].rsplit("/", 1)[1] for r in lines] == [
        "photo_0.jpg",
        "photo_1.jpg",
        "photo_2.jpg",
    ]
    pills = [p for r in lines for p in r["pills"]]
    assert pills and {"box", "det_conf", "edi_code", "cls_conf", "top5"} <= set(pills[0])
    assert (
        f"skipped {photos_dir / 'broken.jpg'}" in err
        and f"skipped {photos_dir / 'notes.txt'}" in err
    )
    assert f"3 image(s) processed, 2 skipped, {len(pills)} pills" in err and "images/s" in err


def test_detect_and_classify_tasks_with_onnx(config_path, photos_dir, tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="onnxruntime is needed for --engine onnx")
    from pillsnap.config import load_config
    from pillsnap.models.export import export_models

    res = export_models(load_config(config_path), tmp_path, tag="cli")
    glob = str(photos_dir / "*.jpg")
    rc = main(
        [
            "--engine",
            "onnx",
            "--task",
            "detect",
            "--model",
            res["detection"].onnx_path,
            "--inputs",
            glob,
            "--config",
            str(config_path),
            *SETS,
        ]
    )
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert (
        rc == 0 and len(records) == 3 and "onnxruntime fp32 on CPUExecutionProvider" in captured.err
    )
    assert all(set(d) == {"box", "conf", "class_id"} for r in records for d in r["detections"])
    rc = main(
        [
            "--engine",
            "onnx",
            "--task",
            "classify",
            "--model",
            res["classification"].onnx_path,
            "--inputs",
            glob,
            "--config",
            str(config_path),
        ]
    )
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (
        rc == 0
        and len(records) == 3
        and len(records[0]["edi_code"]) == 9
        and len(records[0]["top5"]) == 5
    )


def test_nothing_readable_exits_1(config_path, photos_dir, capsys):
    rc = main(
        ["--inputs", str(photos_dir / "*.txt"), "--config", str(config_path), "--task", "classify"]
    )
    assert rc == 1 and "no image could be processed" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--quantize", "int8"], "uses the newest release's INT8 models"),
        (
            ["--quantize", "int8", "--engine", "tensorrt", "--model", "a.onnx", "b.onnx"],
            "--engine onnx",
        ),
        (["--engine", "onnx"], "needs --model DETECTOR.onnx CLASSIFIER.onnx"),
        (["--engine", "onnx", "--task", "detect", "--model", "missing.onnx"], "missing.onnx"),
        (["--engine", "openvino"], "invalid choice: 'openvino'"),
    ],
)
def test_usage_errors_exit_2_with_a_clear_message(config_path, photos_dir, capsys, argv, message):
    rc = main(["--inputs", str(photos_dir), "--config", str(config_path), *argv])
    assert rc == 2 and message in capsys.readouterr().err


def test_no_matching_inputs_is_a_usage_error(config_path, tmp_path, capsys):
    assert main(["--inputs", str(tmp_path / "*.jpg"), "--config", str(config_path)]) == 2
    assert "matches no files" in capsys.readouterr().err


def test_console_script_and_module_entry_points(config_path, photos_dir, tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    assert (
        cli_main(
            [
                "infer",
                "--task",
                "classify",
                "--inputs",
                str(photos_dir / "photo_0.jpg"),
                "--config",
                str(config_path),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert len(out.read_text().splitlines()) == 1
    proc = subprocess.run(
        [sys.executable, "-m", "pillsnap.infer", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0 and "--engine" in proc.stdout and "--quantize" in proc.stdout
