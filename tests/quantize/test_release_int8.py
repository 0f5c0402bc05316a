"""INT8 files in a release: aliases, manifest, verification against quantization.json, diff rows.

Fake stage notebooks (as in tests/release/) write the float files, a schema-valid
report and INT8 files with their ``quantization.json``; no model runs here.
"""

from __future__ import annotations

import json
import os
import textwrap

import nbformat
import pytest
import yaml
from _hardening import PARAMS  # the stage notebooks' parameters cell
from _report_example import example_report
from _tiny import python3_notebook, tiny_project_config

from pillsnap.config import load_config
from pillsnap.release.diff import diff_releases
from pillsnap.release.manifest import read_manifest, verify_release
from pillsnap.release.run import run_release

STAGE = """
import hashlib, json
from pathlib import Path
out = Path(out_dir)
report = json.loads(Path(REPORT).read_text())
report["version_tag"] = version_tag
record = {"failed": False, "required": True, "verdict": "passed", "shipped": {}, "models": {},
          "cpu": {"int8_class": "vnni"}}
for task in ("detection", "classification"):
    data = b"fake onnx " + task.encode() * 64
    (out / f"{task}-{version_tag}.onnx").write_bytes(data)
    report["models"][task].update(onnx_path=str(out / f"{task}-{version_tag}.onnx"),
                                  onnx_sha256=hashlib.sha256(data).hexdigest())
    int8 = b"fake int8 " + task.encode() * SPEED
    name = f"{task}-{version_tag}.int8.onnx"
    (out / name).write_bytes(int8)
    record["shipped"][task] = name
    sha = hashlib.sha256(int8).hexdigest() if not TAMPER else "0" * 64
    record["models"][task] = {"int8_sha256": sha, "speedup": SPEED / 10, "recipe": {"name": "minmax_pc_u8"},
                              "excluded_counts": {"shape_arithmetic": 3}, "gates": [], "search": []}
Path(out, "export_report.json").write_text(json.dumps(report))
Path(out, "quantization.json").write_text(json.dumps(record))
"""


@pytest.fixture
def project(tmp_path, tmp_path_factory):
    """Real tiny checkpoints, class map and val data (the release's preflight loads them) and
    fake stage notebooks that write INT8 files and quantization.json."""
    raw = tiny_project_config(tmp_path_factory, tmp_path)
    (tmp_path / "report.json").write_text(json.dumps(example_report()))
    nb_dir = tmp_path / "notebooks"
    nb_dir.mkdir()
    for name, speed, tamper in (("quant", 15, False), ("quant2", 17, False), ("tamper", 15, True)):
        body = STAGE.replace("REPORT", repr(str(tmp_path / "report.json")))
        body = body.replace("SPEED", str(speed)).replace("TAMPER", str(tamper))
        nbformat.write(
            python3_notebook(textwrap.dedent(body), parameters=PARAMS), nb_dir / f"{name}.ipynb"
        )
    config = tmp_path / "config.yaml"
    raw["release"] = {"stages": ["quant"], "notebooks_dir": "notebooks"}
    config.write_text(yaml.safe_dump(raw))
    return {"config": config, "out": tmp_path / "runs"}


def release(project, tag, stage):
    return run_release(
        load_config(project["config"]), version_tag=tag, stages=[stage], command=["test"]
    )


def test_int8_files_are_release_artifacts_with_aliases(project):
    out = project["out"]
    outcome = release(project, "q1", "quant")
    assert outcome.passed, outcome.failure
    assert set(outcome.int8_files) == {"detection", "classification"}
    assert os.readlink(out / "q1" / "detection.int8.onnx") == "detection-q1.int8.onnx"
    artifacts = read_manifest(out / "q1")["artifacts"]
    assert "sha256" in artifacts["classification-q1.int8.onnx"]
    assert artifacts["classification.int8.onnx"] == {"link": "classification-q1.int8.onnx"}
    assert verify_release(out / "q1").ok
    assert release(project, "q2", "quant2").passed
    rows = {(r.section, r.key): r for r in diff_releases(out / "q1", out / "q2") if r.changed}
    assert rows[("quantization", "detection.speedup")].a == 1.5
    assert rows[("quantization", "detection.speedup")].b == 1.7
    assert ("size", "detection-<tag>.int8.onnx") in rows


def test_an_int8_file_unlike_its_gated_one_fails_the_release(project):
    outcome = release(project, "bad", "tamper")
    assert not outcome.passed and "changed after its INT8 gate" in outcome.failure
    assert not (project["out"] / "latest").exists()
