"""``pillsnap infer --quantize int8``: the release's INT8 files, or the given float model quantized and cached."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from _int8 import CHEAP

from pillsnap.config import apply_overrides
from pillsnap.models.common import (
    META_INT8_CPU_CLASS,
    META_INT8_GATE,
    META_INT8_RECIPE,
    META_PRECISION,
    read_onnx_metadata,
)
from pillsnap.quantize import infer as int8_infer
from pillsnap.quantize.metadata import cpu_class_warning


def test_cpu_class_warning(monkeypatch):
    from pillsnap import environment

    meta = {META_PRECISION: "int8", META_INT8_CPU_CLASS: "vnni"}
    monkeypatch.setattr(environment, "cpu_info", lambda: {"int8_class": "avx2"})
    text = cpu_class_warning(meta, "m.int8.onnx")
    assert "'vnni' CPU, this one is 'avx2'" in text and "pillsnap quantize" in text
    monkeypatch.setattr(environment, "cpu_info", lambda: {"int8_class": "vnni"})
    assert cpu_class_warning(meta, "m") is None
    assert cpu_class_warning({}, "float.onnx") is None  # float models are not INT8


def test_release_int8_files_are_used(demo, int8_classifier, tmp_path):
    float_path, int8 = int8_classifier
    release = tmp_path / "runs" / "t1"
    release.mkdir(parents=True)
    shutil.copy2(float_path, release / float_path.name)
    shutil.copy2(int8, release / int8.name)
    (release / "manifest.json").write_text("{}")
    os.symlink(int8.name, release / "classification.int8.onnx")
    os.symlink("t1", tmp_path / "runs" / "latest")
    cfg = apply_overrides(demo[0], {"paths.out_dir": str(tmp_path / "runs")})
    # a release's float file -> the INT8 file it shipped beside it
    assert (
        int8_infer.resolve(cfg, "classification", release / float_path.name) == release / int8.name
    )
    # no --model: the newest release's INT8 models
    models, warnings = int8_infer.int8_models(cfg, "classify", [], "onnx")
    assert models == [(release / int8.name).resolve()] and warnings == []
    with pytest.raises(Exception, match="detection.int8.onnx"):
        int8_infer.int8_models(cfg, "pipeline", [], "onnx")


@pytest.mark.slow
def test_infer_quantizes_a_float_model_once_and_caches_it(demo, tmp_path, capsys):
    from pillsnap.cli import main

    cfg = demo[0]
    src = Path(demo[1]["classification"].onnx_path)
    float_path = Path(shutil.copy2(src, tmp_path / src.name))
    crops = sorted(Path(cfg.paths.classification_data, "val").rglob("*.jpg"))[:6]
    inputs = tmp_path / "crops"
    inputs.mkdir()
    for crop in crops:
        shutil.copy2(crop, inputs / f"{crop.parent.name}-{crop.name}")
    config = Path(__file__).resolve().parents[2] / "examples" / "synthetic" / "config.yaml"
    sets = ["--set", f"paths.classification_data={cfg.paths.classification_data}"]
    sets += ["--set", f"quantize.calibration_count={CHEAP['quantize.calibration_count']}"]
    argv = ["infer", "--config", str(config), *sets, "--task", "classify", "--quantize", "int8"]
    argv += [
        "--model",
        str(float_path),
        "--inputs",
        str(inputs),
        "--out",
        str(tmp_path / "a.jsonl"),
    ]
    assert main(argv) == 0, capsys.readouterr().err
    cached = tmp_path / src.name.replace(".onnx", ".int8.onnx")
    meta = read_onnx_metadata(cached)
    assert meta[META_PRECISION] == "int8" and meta[META_INT8_GATE] == "not_gated"
    err = capsys.readouterr().err
    assert "onnxruntime" in err and "6 image(s) processed" in err
    rows = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(r["edi_code"].startswith("990") for r in rows)
    stamp = cached.stat().st_mtime_ns
    assert main(argv[:-1] + [str(tmp_path / "b.jsonl")]) == 0
    assert cached.stat().st_mtime_ns == stamp  # reused, not quantized again
    # the float model changed: the cache no longer matches its source and is rebuilt
    float_path.write_bytes(float_path.read_bytes())  # same bytes: still valid
    assert int8_infer.resolve(apply_overrides(cfg, CHEAP), "classification", float_path) == cached
    assert cached.stat().st_mtime_ns == stamp
    # another configured recipe: the cache no longer fits and is quantized again
    other = ["--set", "quantize.recipes=[minmax_pc_u8]", "--out", str(tmp_path / "c.jsonl")]
    assert main(argv[:-2] + other) == 0
    assert cached.stat().st_mtime_ns != stamp
    assert json.loads(read_onnx_metadata(cached)[META_INT8_RECIPE])["per_channel"] is True
