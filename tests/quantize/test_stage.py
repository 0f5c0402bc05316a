"""The stage from the command line: ``required: false`` ships without INT8 and says so; refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _int8 import CHEAP, copy_float
from _report_example import example_report

from pillsnap.report.schema import validate_report

CONFIG = Path(__file__).resolve().parents[2] / "examples" / "synthetic" / "config.yaml"


def _args(cfg, extra: dict) -> list[str]:
    items = {
        "paths.detection_data": cfg.paths.detection_data,
        "paths.classification_data": cfg.paths.classification_data,
        **{k: json.dumps(v) if isinstance(v, list) else v for k, v in CHEAP.items()},
        **extra,
    }
    return [a for k, v in items.items() for a in ("--set", f"{k}={v}")]


def test_a_finished_release_is_never_modified(tmp_path, capsys):
    from pillsnap.cli import main

    (tmp_path / "manifest.json").write_text("{}")
    assert main(["quantize", "--config", str(CONFIG), "--out-dir", str(tmp_path)]) == 2
    assert "finished release" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


@pytest.mark.slow
def test_required_false_ships_without_int8_and_says_so(demo, tmp_path, capsys):
    from pillsnap.cli import main
    from pillsnap.release.outputs import int8_files_consistent

    folder = tmp_path / "release"
    float_path = copy_float(demo[1], "classification", folder)
    tag = float_path.name[len("classification-") : -len(".onnx")]
    (folder / "export_report.json").write_text(json.dumps(example_report()))
    extra = {
        "quantize.required": "false",
        "quantize.min_speedup": 100,  # never reached: INT8 fails and must not ship
        "quantize.search.enabled": "false",
        "quantize.calibration_count": 8,
    }
    rc = main(
        [
            "quantize",
            "--config",
            str(CONFIG),
            "--out-dir",
            str(folder),
            "--quiet",
            *_args(demo[0], extra),
        ]
    )
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "release ships without INT8" in out.out and "min_speedup 100" in out.out
    assert not list(folder.glob("*.int8.onnx"))
    record = json.loads((folder / "quantization.json").read_text())
    assert (
        record["failed"] and not record["required"] and record["verdict"] == "shipped_without_int8"
    )
    assert record["shipped"] == {}
    model = record["models"]["classification"]
    assert model["recipes_tried"][0]["fast_enough"] is False and model["speedup"] < 100
    assert model["calibration"]["fallback"] and len(model["calibration"]["files"]) == 8
    assert {e["kind"] for e in model["excluded"]} == {"shape_arithmetic"}
    assert model["cpu"]["int8_class"] and "avx2" in model["cpu"]["flags"]
    report = json.loads((folder / "export_report.json").read_text())
    section = report["models"]["classification"]["quantization"]
    assert validate_report(report) == []
    assert section["shipped"] is False and section["verdict"] == "shipped_without_int8"
    assert section["calibration"]["sha256"] == model["calibration"]["sha256"]
    assert any(g["name"] == "classification.top1_mismatch_rate" for g in section["gates"])
    # the release driver accepts it (nothing shipped, not required) ...
    assert int8_files_consistent(folder, tag) is None
    assert (folder / "quantization" / "classification_layers.csv").is_file()
    # ... but not once the record says INT8 was required
    record["required"] = True
    (folder / "quantization.json").write_text(json.dumps(record))
    assert "records a failed INT8 stage" in int8_files_consistent(folder, tag)


def test_the_notebook_cell_raises_only_when_int8_was_required():
    from types import SimpleNamespace

    from pillsnap.exceptions import EquivalenceError
    from pillsnap.quantize.views import raise_if_failed

    cause = {"title": "calibration data (INT8 activation ranges)", "advice": "calibrate on RGB"}
    outcome = SimpleNamespace(causes=[cause])
    failed = SimpleNamespace(
        failed=True, required=True, reason="gate failed", outcomes={"c": outcome}
    )
    with pytest.raises(EquivalenceError, match="gate failed.*calibration data"):
        raise_if_failed(failed)
    raise_if_failed(SimpleNamespace(failed=True, required=False, reason="x", outcomes={}))
    raise_if_failed(SimpleNamespace(failed=False, required=True, reason=None, outcomes={}))
