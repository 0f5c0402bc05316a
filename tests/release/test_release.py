"""Release driver: promotion, failure records, interrupted runs, verify, diff, export_onnx.sh.

These tests drive ``run_release`` with tiny fake stage notebooks written into
``tmp_path`` (a real papermill + kernel run each, ~1-2 s); the end-to-end test on
the embedded synthetic experiment is at the bottom.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nbformat
import pytest
import yaml
from _hardening import PARAMS  # the stage notebooks' parameters cell
from _tiny import SMALL_COMPARE_ARGS, python3_notebook, tiny_project_config

from pillsnap.config import load_config
from pillsnap.exceptions import MissingPathError, ReleaseError, UserInputError
from pillsnap.release.cli import main as release_main
from pillsnap.release.diff import diff_releases, format_diff
from pillsnap.release.manifest import find_newest_release, read_manifest, verify_release
from pillsnap.release.promote import release_lock
from pillsnap.release.run import run_release
from pillsnap.report.record import read_records

REPO = Path(__file__).resolve().parents[2]

WRITE_OUTPUTS = """
import hashlib
import json
from pathlib import Path
from pillsnap.report.record import record
out = Path(out_dir)
report = json.loads(Path(REPORT_TEMPLATE).read_text())
for task in ("detection", "classification"):
    data = b"fake onnx " + task.encode() * 64
    (out / f"{task}-{version_tag}.onnx").write_bytes(data)
    report["models"][task].update(onnx_path=str(out / f"{task}-{version_tag}.onnx"),
                                  onnx_sha256=hashlib.sha256(data).hexdigest())
report["models"]["classification"]["compare"]["mse_mean"] = MSE
report["version_tag"] = version_tag
Path(out, "export_report.json").write_text(json.dumps(report))
record("written", sorted(p.name for p in out.iterdir()))
"""


def write_stage(nb_dir: Path, name: str, body: str, **subs: object) -> Path:
    for key, value in subs.items():
        body = body.replace(key, repr(value))
    nb = python3_notebook(textwrap.dedent(body), parameters=PARAMS)
    path = nb_dir / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="session")
def report_template(tmp_path_factory) -> Path:
    """A schema-valid export_report.json (built by the report module's own example)."""
    from _report_example import example_report

    path = tmp_path_factory.mktemp("report") / "report.json"
    path.write_text(json.dumps(example_report()))
    return path


@pytest.fixture
def project(tmp_path, report_template, tmp_path_factory):
    """A config with real (tiny, random-weight) checkpoints and val data, so the release's
    preflight passes, an out_dir and a notebooks dir holding a passing stage."""
    raw = tiny_project_config(tmp_path_factory, tmp_path)
    nb_dir = tmp_path / "notebooks"
    nb_dir.mkdir()
    write_stage(nb_dir, "good", WRITE_OUTPUTS, REPORT_TEMPLATE=str(report_template), MSE=1e-9)
    write_stage(nb_dir, "good2", WRITE_OUTPUTS, REPORT_TEMPLATE=str(report_template), MSE=2e-9)
    write_stage(nb_dir, "boom", "raise RuntimeError('planted stage failure')")
    write_stage(nb_dir, "slow", "import time\ntime.sleep(60)")
    config = tmp_path / "config.yaml"
    raw["release"] = {"stages": ["good"], "notebooks_dir": "notebooks"}
    config.write_text(yaml.safe_dump(raw))
    return {"config": config, "out": tmp_path / "runs", "nb_dir": nb_dir, "tmp": tmp_path}


def release(project, tag, stages=("good",), **kw):
    cfg = load_config(project["config"])
    return run_release(cfg, version_tag=tag, stages=list(stages), command=["test"], **kw)


@pytest.mark.parametrize(
    "stage,record,content,why",
    [
        ("benchmark", None, None, "did not write benchmark.json (stage 'benchmark')"),
        ("quantization", None, None, "did not write quantization.json (stage 'quantization')"),
        (
            "benchmark",
            "benchmark.json",
            {"failed": True, "failure_reason": "tensorrt-fp16 did not run"},
            "benchmark.json records a failed benchmark: tensorrt-fp16 did not run",
        ),
    ],
)
def test_a_stage_whose_record_is_missing_or_failed_never_releases(
    project, report_template, stage, record, content, why
):
    """A stage notebook that 'passes' without its record (or with a failed one) fails the release."""
    body = WRITE_OUTPUTS
    if record:
        body += f"\nPath(out, {record!r}).write_text(json.dumps({content!r}))\n"
    write_stage(project["nb_dir"], stage, body, REPORT_TEMPLATE=str(report_template), MSE=1e-9)
    outcome = release(project, f"rec-{stage}{bool(record)}", stages=(stage,))
    assert not outcome.passed and why in outcome.failure, outcome.failure
    assert not (project["out"] / "latest").exists()


def test_passing_release_promotes_and_links(project):
    out = project["out"]
    outcome = release(project, "t1")
    assert outcome.passed, outcome.failure
    assert outcome.path == out / "t1" and not (out / "t1.partial").exists()
    assert os.readlink(out / "latest") == "t1"  # relative link: the runs/ folder can move
    assert (out / "latest_detection.onnx").read_bytes() == (
        out / "t1" / "detection-t1.onnx"
    ).read_bytes()
    manifest = read_manifest(out / "t1")
    assert manifest["verdict"] == "passed" and manifest["tag"] == "t1"
    for name in (
        "good.ipynb",
        "good.html",
        "config.yaml",
        "export_report.json",
        "classification-t1.onnx",
    ):
        assert "sha256" in manifest["artifacts"][name], name
    assert manifest["artifacts"]["detection.onnx"] == {"link": "detection-t1.onnx"}
    assert manifest["parameters"]["out_dir"] == str(out / "t1.partial")
    assert {"python", "papermill", "onnx"} <= set(manifest["versions"])
    assert manifest["stages"][0]["status"] == "passed"
    assert read_records(out / "t1" / "good.ipynb")["written"][:2] == [
        "classification-t1.onnx",
        "config.yaml",
    ]
    # the saved config reloads to the config that was used
    assert load_config(out / "t1" / "config.yaml").paths.exp_dir == project["tmp"] / "exp"
    assert verify_release(out / "t1").ok
    assert find_newest_release(out) == out / "t1"


def test_failed_stage_keeps_record_and_latest_does_not_move(project, capsys):
    out = project["out"]
    assert release(project, "good1").passed
    rc = release_main(
        ["--config", str(project["config"]), "--tag", "bad1", "--stages", "boom,good"]
    )
    assert rc == 1
    err = capsys.readouterr().err
    assert "planted stage failure" in err and f"Record: {out / 'bad1.failed'}" in err
    failed = out / "bad1.failed"
    assert failed.is_dir() and not (out / "bad1").exists() and not (out / "bad1.partial").exists()
    assert os.readlink(out / "latest") == "good1"
    executed = nbformat.read(failed / "boom.ipynb", as_version=4)
    errors = [o for c in executed.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert errors and errors[0].ename == "RuntimeError"
    assert "planted stage failure" in (failed / "boom.html").read_text()
    manifest = read_manifest(failed)
    assert manifest["verdict"] == "failed" and "planted stage failure" in manifest["failure_reason"]
    assert [s["status"] for s in manifest["stages"]] == ["failed", "skipped"]
    assert verify_release(failed).ok  # a failed record is still an intact record
    assert find_newest_release(out) == out / "good1"


def test_passing_stages_without_outputs_fail_the_release(project):
    write_stage(project["nb_dir"], "noop", "x = 1")
    outcome = release(project, "empty", stages=("noop",))
    assert not outcome.passed and "detection-empty.onnx" in outcome.failure
    assert outcome.path.name == "empty.failed" and not (project["out"] / "latest").exists()


def test_onnx_changed_after_comparison_fails_the_release(project):
    tamper = (
        "from pathlib import Path\n"
        "p = Path(out_dir, f'classification-{version_tag}.onnx')\n"
        "p.write_bytes(p.read_bytes() + b'x')"
    )
    write_stage(project["nb_dir"], "tamper", tamper)
    outcome = release(project, "tampered", stages=("good", "tamper"))
    assert not outcome.passed
    assert "classification-tampered.onnx changed after the comparison" in outcome.failure
    assert not (project["out"] / "latest").exists()


def test_stale_partial_from_killed_run_does_not_block(project):
    out = project["out"]
    assert release(project, "old").passed
    stale = out / "new.partial"  # same tag as the retry: the killed run is set aside first
    stale.mkdir()
    (stale / "detection-new.onnx").write_bytes(b"half written")
    outcome = release(project, "new")
    assert outcome.passed
    assert (out / "new.aborted" / "detection-new.onnx").read_bytes() == b"half written"
    assert os.readlink(out / "latest") == "new"


@pytest.mark.slow
def test_release_killed_mid_stage_leaves_latest_and_next_run_succeeds(project):
    out = project["out"]
    assert release(project, "before").passed
    cmd = [
        sys.executable,
        "-m",
        "pillsnap.cli",
        "release",
        "--config",
        str(project["config"]),
        "--tag",
        "killed",
        "--stages",
        "slow",
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=project["tmp"],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not (out / "killed.partial" / "slow.ipynb").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its kernel, mid-stage
    proc.wait()
    assert (out / "killed.partial").is_dir()
    assert os.readlink(out / "latest") == "before"
    assert find_newest_release(out) == out / "before"
    outcome = release(project, "after")
    assert outcome.passed and os.readlink(out / "latest") == "after"
    assert (out / "killed.aborted").is_dir() and not (out / "killed.partial").exists()


def test_second_concurrent_release_fails_fast(project):
    with (
        release_lock(project["out"]),
        pytest.raises(ReleaseError, match="another release is running"),
    ):
        release(project, "t2")
    assert not (project["out"] / "t2.partial").exists()


def test_input_errors_write_nothing(project):
    assert release(project, "taken").passed
    with pytest.raises(ReleaseError, match="already used"):
        release(project, "taken")
    with pytest.raises(UserInputError, match="not usable as a folder name"):
        release(project, "../x")
    with pytest.raises(MissingPathError, match="stage notebook not found.*notebooks there: boom"):
        release(project, "t3", stages=("good", "quantize"))
    (project["tmp"] / "exp" / "checkpoints" / "detection_best.pt").unlink()
    with pytest.raises(MissingPathError, match="detection checkpoint not found"):
        release(project, "t4")
    assert sorted(p.name for p in project["out"].iterdir() if not p.name.startswith(".")) == [
        "latest",
        "latest_classification.onnx",
        "latest_detection.onnx",
        "taken",
    ]


def test_verify_catches_a_changed_byte_and_extra_files(project, capsys):
    out = project["out"]
    assert release(project, "v1").passed
    onnx = out / "v1" / "classification-v1.onnx"
    data = bytearray(onnx.read_bytes())
    data[20] ^= 0x01
    onnx.write_bytes(bytes(data))
    (out / "v1" / "stray.txt").write_text("added later")
    result = verify_release(out / "v1")
    assert not result.ok
    assert result.changed == ["classification-v1.onnx"] and result.unexpected == ["stray.txt"]
    assert release_main(["verify", str(out / "v1")]) == 1
    err = capsys.readouterr().err
    assert "changed: classification-v1.onnx (sha256" in err and "not in manifest: stray.txt" in err
    # a corrupted newest release is skipped by the serving-side lookup
    assert find_newest_release(out) is None
    (out / "v1" / "stray.txt").unlink()
    (out / "v1" / "export_report.json").unlink()
    assert "missing: export_report.json" in verify_release(out / "v1").summary()


def test_verify_reports_schema_problems(project):
    out = project["out"]
    assert release(project, "s1").passed
    report = out / "s1" / "export_report.json"
    data = json.loads(report.read_text())
    data.pop("git_sha", None)
    for model in data.get("models", {}).values():
        model.pop("opset", None)
    report.write_text(json.dumps(data))
    manifest = json.loads(
        (out / "s1" / "manifest.json").read_text()
    )  # re-pin the hash: only the schema is wrong
    from pillsnap.fileio import sha256_file

    manifest["artifacts"]["export_report.json"] = {
        "sha256": sha256_file(report),
        "size": report.stat().st_size,
    }
    (out / "s1" / "manifest.json").write_text(json.dumps(manifest))
    problems = verify_release(out / "s1").problems
    assert problems and all(p.startswith("export_report.json: ") for p in problems)


def test_diff_shows_parity_and_stage_changes(project, capsys):
    out = project["out"]
    assert release(project, "d1").passed
    assert release(project, "d2", stages=("good2",)).passed
    rows = {(r.section, r.key): r for r in diff_releases(out / "d1", out / "d2") if r.changed}
    assert rows[("report", "models.classification.compare.mse_mean")].a == 1e-9
    assert rows[("report", "models.classification.compare.mse_mean")].b == 2e-9
    assert ("stage", "good") in rows and ("stage", "good2") in rows
    assert not any(section == "size" for section, _ in rows)  # same bytes, tag-normalised names
    assert release_main(["diff", str(out / "d1"), str(out / "d2")]) == 0
    text = capsys.readouterr().out
    assert "models.classification.compare.mse_mean" in text and "1e-09" in text and "2e-09" in text
    assert "no differences" in format_diff(diff_releases(out / "d1", out / "d1"), "d1", "d1")


# -- scripts/export_onnx.sh -------------------------------------------------------------------


def run_script(project, *args, env=None):
    full_env = {
        **os.environ,
        "CONFIG": str(project["config"]),
        "PYTHON": sys.executable,
        **(env or {}),
    }
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "export_onnx.sh"), *args],
        cwd=project["tmp"],
        env=full_env,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_export_script_success_prints_paths(project):
    proc = run_script(project, "--tag", "sh1", "--stages", "good", env={"OPSET": "18"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    exported = next(line for line in lines if line.startswith("[OK] Exported: "))
    assert exported.split()[2:] == [
        "runs/sh1/detection-sh1.onnx",
        "runs/sh1/classification-sh1.onnx",
    ]
    assert "Report: runs/sh1/export_report.json" in lines
    assert read_manifest(project["out"] / "sh1")["config"]["export"]["opset"] == 18


def test_export_script_failure_prints_record_and_exits_1(project):
    proc = run_script(project, "--tag", "sh2", "--stages", "boom")
    assert proc.returncode == 1
    assert "runs/sh2.failed" in proc.stderr and "planted stage failure" in proc.stderr


def test_export_script_checks_checkpoints_first(project):
    (project["tmp"] / "exp" / "checkpoints" / "classification_best.pt").unlink()
    proc = run_script(project, "--tag", "sh3")
    assert proc.returncode == 2
    assert (
        "classification checkpoint not found" in proc.stderr
        and "classification_best.pt" in proc.stderr
    )
    assert (
        not (project["out"] / "sh3.partial").exists()
        and not (project["out"] / "sh3.failed").exists()
    )


# -- the real notebooks on the demo experiment -----------------------------------------------

DEMO_CONFIG = REPO / "examples" / "synthetic" / "config.yaml"
SMALL = SMALL_COMPARE_ARGS


@pytest.fixture(scope="module")
def demo_args(tmp_path_factory):
    """CLI arguments running the demo experiment into a temporary runs/ (val data regenerated if missing)."""
    from _demo_release import _val_data, demo_available

    if not demo_available():
        pytest.skip(
            "examples/synthetic/checkpoints are not trained yet (run `pillsnap synth train`)"
        )
    root = tmp_path_factory.mktemp("demo")
    cfg = _val_data(load_config(DEMO_CONFIG), root)
    return [
        "--config",
        str(DEMO_CONFIG),
        "--out-dir",
        str(root / "runs"),
        "--set",
        f"paths.detection_data={cfg.paths.detection_data}",
        "--set",
        f"paths.classification_data={cfg.paths.classification_data}",
    ], root


@pytest.mark.slow
def test_demo_release_end_to_end(demo_args, capsys):
    args, root = demo_args
    out = root / "runs"
    # the demo's benchmark stage with a smaller budget (its own tests are in tests/bench/)
    quick = ["--set", "benchmark.max_seconds=20", "--set", "benchmark.accuracy_images=32"]
    quick += ["--set", "quantize.speed_rounds=3"]  # the INT8 speed itself is measured by make demo
    assert release_main([*args, *quick, "--tag", "e2e-good"]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert f"[OK] Exported: {out}/e2e-good/detection-e2e-good.onnx" in printed
    release_dir = out / "e2e-good"
    assert os.readlink(out / "latest") == "e2e-good" and verify_release(release_dir).ok
    manifest = read_manifest(release_dir)
    stages = load_config(DEMO_CONFIG).release.stages
    assert [s["name"] for s in manifest["stages"]] == stages and stages[-1] == "benchmark"
    assert all(s["status"] == "passed" for s in manifest["stages"])
    for name in (
        "export.html",
        "equivalence.html",
        "benchmark.html",
        "benchmark.json",
        "quantization.html",
        "quantization.json",
        "detection-e2e-good.int8.onnx",
        "classification-e2e-good.int8.onnx",
        "config.yaml",
        "equivalence/classification_rows.csv",
    ):
        assert name in manifest["artifacts"], name
    report = json.loads((release_dir / "export_report.json").read_text())
    assert report["benchmark"]["file"] == "benchmark.json" and report["benchmark"]["speed"]
    # both INT8 models passed their gates and the benchmark measured them
    for task in ("detection", "classification"):
        assert report["models"][task]["quantization"]["verdict"] == "passed", task
    bench = json.loads((release_dir / "benchmark.json").read_text())
    int8 = next(c for c in bench["configurations"] if c["name"] == "ort-cpu-int8")
    assert all(run["status"] == "ran" for run in int8["models"].values()), int8
    export_records = read_records(release_dir / "export.ipynb")
    assert export_records["verdict"]["failed"] is False
    assert all(g["pass"] for g in export_records["gates"])
    # the equivalence notebook plotted what export.ipynb measured; it did not compare again
    assert read_records(release_dir / "equivalence.ipynb")["equivalence_source"] == "loaded"
    # a passing release pays nothing for the per-layer localisation (compare.localise: on_failure)
    assert "divergence" not in json.loads((release_dir / "export_report.json").read_text())
    assert (
        out / "latest_classification.onnx"
    ).resolve() == release_dir / "classification-e2e-good.onnx"


@pytest.mark.slow
def test_demo_release_gate_failure_keeps_failed_record(demo_args, capsys):
    """A gate that the real export cannot meet: export.ipynb raises, the release ends in .failed."""
    args, root = demo_args
    out = root / "runs"
    before = os.readlink(out / "latest") if (out / "latest").is_symlink() else None
    rc = release_main(
        [*args, *SMALL, "--tag", "e2e-gate", "--set", "compare.gates.rel_logit_diff_p99=1e-15"]
    )
    assert rc == 1
    assert f"Record: {out / 'e2e-gate.failed'}" in capsys.readouterr().err
    executed = nbformat.read(out / "e2e-gate.failed" / "export.ipynb", as_version=4)
    errors = [o for c in executed.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert errors[0].ename == "EquivalenceError" and "rel_logit_diff_p99" in errors[0].evalue
    statuses = [s["status"] for s in read_manifest(out / "e2e-gate.failed")["stages"]]
    assert statuses[0] == "failed" and set(statuses[1:]) == {"skipped"} and len(statuses) > 1
    # the failed record localised the failing model layer by layer and shows the plot: a correct
    # export under an impossible gate, so no layer diverges
    report = json.loads((out / "e2e-gate.failed" / "export_report.json").read_text())
    assert report["divergence"]["classification"]["pattern"] == "none"
    plot = next(c for c in executed.cells if "plot_layer_errors" in c.source)
    assert any("image/png" in o.get("data", {}) for o in plot.outputs)
    assert (os.readlink(out / "latest") if (out / "latest").is_symlink() else None) == before


@pytest.mark.slow
def test_demo_release_corrupted_classifier_weights_fail(demo_args, tmp_path, capsys):
    """A stage after export scales the classifier's last conv weights: the release must not ship them."""
    args, root = demo_args
    out = root / "runs"
    before = os.readlink(out / "latest") if (out / "latest").is_symlink() else None
    nb_dir = tmp_path / "notebooks"
    nb_dir.mkdir()
    shutil.copy(REPO / "notebooks" / "export.ipynb", nb_dir)
    write_stage(
        nb_dir,
        "corrupt",
        """
import onnx
from onnx import numpy_helper
path = f"{out_dir}/classification-{version_tag}.onnx"
model = onnx.load(path)
conv = [n for n in model.graph.node if n.op_type == "Conv"][-1]
init = next(i for i in model.graph.initializer if i.name == conv.input[1])
init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.5, init.name))
onnx.save(model, path)
""",
    )
    rc = release_main(
        [
            *args,
            *SMALL,
            "--tag",
            "e2e-corrupt",
            "--notebooks-dir",
            str(nb_dir),
            "--stages",
            "export,corrupt",
        ]
    )
    assert rc == 1
    err = capsys.readouterr().err
    assert "classification-e2e-corrupt.onnx changed after the comparison" in err
    assert (out / "e2e-corrupt.failed" / "manifest.json").is_file()
    assert (os.readlink(out / "latest") if (out / "latest").is_symlink() else None) == before


@pytest.mark.slow
def test_nbval_fails_when_a_checked_figure_changes(tmp_path):
    """The committed NBVAL_CHECK_OUTPUT cell of export.ipynb is a regression check: change a limit, it fails."""
    from _demo_release import demo_available

    if not demo_available():
        pytest.skip(
            "examples/synthetic/checkpoints are not trained yet (run `pillsnap synth train`)"
        )
    nb = nbformat.read(REPO / "notebooks" / "export.ipynb", as_version=4)
    checked = [c for c in nb.cells if c.cell_type == "code" and "# NBVAL_CHECK_OUTPUT" in c.source]
    assert checked and "verdict: passed" in "".join(o.get("text", "") for o in checked[0].outputs)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assert "overrides: list = []" in params.source
    params.source = params.source.replace(
        "overrides: list = []", 'overrides: list = ["compare.gates.mse_mean=0.0002"]'
    ).replace('out_dir: str = ""', f'out_dir: str = "{tmp_path / "out"}"')
    copy = tmp_path / "export_changed.ipynb"
    nbformat.write(nb, copy)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--nbval-lax",
            "--nbval-current-env",
            str(copy),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert (
        "Cell outputs differ" in proc.stdout
        and "0.0002" in proc.stdout
        and "1 failed" in proc.stdout
    )
    assert (tmp_path / "out" / "export_report.json").is_file()  # the run wrote where it was told
