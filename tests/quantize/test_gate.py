"""The INT8 gate stops real faults: a wrong calibration, a planted INT8 weight fault.

* calibration images fed unnormalised (0..1 pixels; the CLI, the stage as it runs): the
  gate fails, the cause names the calibration, exit 1, no INT8 file is left in the folder.
  (BGR calibration images, tried too, did *not* fail this fixture's gate with per-tensor
  MinMax ranges: the INT8 model they give is fine, and the gate says so; the diagnosis of
  a reversed channel order is checked in ``test_diagnose.py``);
* an INT8 model whose weight scale of one convolution was multiplied by 1.5:
  ``pillsnap compare --set compare.precision=int8 --classification-onnx INT8.onnx``
  exits 1, while the same INT8 model unplanted passes (no false alarm).
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from _int8 import CHEAP, copy_float

pytestmark = pytest.mark.slow


def _sets(cfg, extra: dict) -> list[str]:
    """``--set`` arguments reproducing the session's data paths and the cheap settings."""
    items = {
        "paths.detection_data": str(cfg.paths.detection_data),
        "paths.classification_data": str(cfg.paths.classification_data),
        **{k: json.dumps(v) if isinstance(v, list) else v for k, v in CHEAP.items()},
        **extra,
    }
    out = []
    for key, value in items.items():
        out += ["--set", f"{key}={value}"]
    return out


def unnormalised_loader(cfg):
    """Calibration images as 0..1 pixels: the config's mean/std never applied."""
    from dataclasses import replace

    from pillsnap.preprocess import PreprocessSpec, load_image, preprocess_one

    spec = replace(PreprocessSpec.from_config(cfg.classification), mean=(0, 0, 0), std=(1, 1, 1))
    return lambda path: preprocess_one(load_image(path), spec)


def test_unnormalised_calibration_fails_the_stage_with_exit_1_naming_calibration(
    demo, tmp_path, monkeypatch, capsys
):
    from pillsnap.cli import main
    from pillsnap.quantize import stage

    cfg = demo[0]
    folder = tmp_path / "release"
    copy_float(demo[1], "classification", folder)
    planted = functools.partial(
        stage.quantize_release, loaders={"classification": unnormalised_loader(cfg)}
    )
    monkeypatch.setattr(stage, "quantize_release", planted)
    config = Path(__file__).resolve().parents[2] / "examples" / "synthetic" / "config.yaml"
    rc = main(
        ["quantize", "--config", str(config), "--out-dir", str(folder), "--quiet"] + _sets(cfg, {})
    )
    err = capsys.readouterr().err
    assert rc == 1, err
    assert "calibration" in err and "other normalisation" in err
    assert not list(folder.glob("*.int8.onnx"))  # a failed INT8 never stays in the release
    record = json.loads((folder / "quantization.json").read_text())
    assert record["failed"] and record["verdict"] == "failed"
    assert "calibration" in record["failure_reason"]
    causes = record["models"]["classification"]["causes"]
    assert causes[0]["cause"] == "calibration" and "spread ratio" in causes[0]["evidence"]
    first = record["models"]["classification"]["search"][0]
    assert first["action"] == "recipe" and not first["passed"]  # measured before it was named


def scale_conv_weight(src: Path, dst: Path, factor: float) -> str:
    """Multiply the dequantization scale of a middle Conv's INT8 weight by ``factor``."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: i for i in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    conv = convs[len(convs) // 2]
    dq = producers[conv.input[1]]
    assert dq.op_type == "DequantizeLinear"
    scale = inits[dq.input[1]]
    scale.CopyFrom(
        numpy_helper.from_array(numpy_helper.to_array(scale) * np.float32(factor), scale.name)
    )
    onnx.save(model, str(dst))
    return conv.name


def test_planted_int8_weight_fault_fails_compare_precision_int8(
    demo, int8_classifier, tmp_path, capsys
):
    from pillsnap.cli import main

    cfg = demo[0]
    float_path, int8 = int8_classifier
    folder = tmp_path / "made-elsewhere"
    folder.mkdir()
    shutil.copy2(float_path, folder / float_path.name)  # its float32 reference beside it
    faulty = folder / int8.name
    scale_conv_weight(int8, faulty, 1.5)
    config = Path(__file__).resolve().parents[2] / "examples" / "synthetic" / "config.yaml"
    args = ["--config", str(config), "--mode", "coverage", "--quiet"]
    args += ["--set", "compare.precision=int8", "--set", "compare.per_class_k=3"]
    args += ["--set", "compare.min_classes=40", "--set", "compare.hard_per_bin=0"]
    args += ["--set", f"paths.classification_data={cfg.paths.classification_data}"]
    rc = main(
        ["compare", *args, "--classification-onnx", str(faulty), "--out-dir", str(tmp_path / "bad")]
    )
    captured = capsys.readouterr()
    assert rc == 1, captured.err
    report = json.loads((tmp_path / "bad" / "export_report.json").read_text())
    compare = report["models"]["classification"]["compare"]
    assert (
        compare["precision"] == "int8"
        and compare["reference"] == f"onnx float32: {float_path.name}"
    )
    failed = [g["name"] for g in compare["gates"] if not g["passed"]]
    assert "classification.top1_mismatch_rate" in failed
    assert "INT8 quantization of some layers" in captured.err  # the input range is fine
    # the same INT8 model, unplanted, passes: the gate does not cry wolf
    shutil.copy2(int8, folder / int8.name)
    rc = main(
        [
            "compare",
            *args,
            "--classification-onnx",
            str(folder / int8.name),
            "--out-dir",
            str(tmp_path / "good"),
        ]
    )
    assert rc == 0, capsys.readouterr().err


def test_speed_fails_only_when_the_whole_interval_is_short():
    from pillsnap.quantize.gate import fast_enough

    assert fast_enough({"speedup": 1.3, "interval": [1.2, 1.4]}, 1.2)
    # a loaded round pulled the median under: the interval still reaches the aim
    assert fast_enough({"speedup": 1.13, "interval": [1.05, 1.35]}, 1.2)
    assert not fast_enough({"speedup": 1.1, "interval": [1.0, 1.15]}, 1.2)
    assert not fast_enough({"speedup": 1.1, "interval": None}, 1.2)  # too few rounds: the median
