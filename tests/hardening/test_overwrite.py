"""Issue 10, class 2: nothing overwritten, nothing half-written.

``infer --out`` never destroys an input nor an earlier result; ``compare --out-dir`` never
writes into a release record or ``latest``; a class map that does not fit the classifier
is refused before any export; a kill between the rename and the ``latest`` swap leaves one
answer to "which release is newest" and the next run repairs it; aborted runs are listed
and cleaned; ``release verify`` sees files the manifest does not list and a manifest that
contradicts its report. Every refusal: exit 2, the problem named, the tree unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from _hardening import project, tree

from pillsnap.cli import main as cli_main
from pillsnap.fileio import sha256_file
from pillsnap.release.manifest import find_newest_release, verify_release


@pytest.fixture
def proj(tmp_path, tmp_path_factory):
    return project(tmp_path / "proj", tmp_path_factory)


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A project with one passing release ``r1`` (fake stage: seconds, not an export)."""
    p = project(tmp_path_factory.mktemp("released") / "proj", tmp_path_factory)
    assert cli_main(["release", "--config", str(p["config"]), "--tag", "r1"]) == 0
    return p


# -- infer --out ---------------------------------------------------------------------------


def _infer(p, *extra):
    crops = p["tiny"] / "data" / "classification" / "val"
    return cli_main(
        ["infer", "--config", str(p["config"]), "--task", "classify", "--inputs", str(crops)]
        + list(extra)
    )


def test_infer_out_refuses_an_input_the_config_and_a_folder(proj, capsys):
    image = next((proj["tiny"] / "data" / "classification" / "val").rglob("*.jpg"))
    before, tiny_before = tree(proj["root"]), tree(proj["tiny"])
    for out, why in (
        (image, "one of the inputs"),
        (proj["config"], "one of the inputs"),
        (proj["exp"] / "checkpoints" / "classification_best.pt", "one of the inputs"),
        (proj["root"], "is a folder"),
    ):
        assert _infer(proj, "--out", str(out), "--force") == 2
        err = capsys.readouterr().err
        assert why in err and str(out) in err, err
    assert tree(proj["root"]) == before and tree(proj["tiny"]) == tiny_before


def test_infer_out_keeps_an_existing_file_unless_forced(proj, capsys):
    out = proj["root"] / "results.jsonl"
    out.write_text("earlier result\n")
    before = tree(proj["root"])
    assert _infer(proj, "--out", str(out)) == 2
    assert "refusing to overwrite" in capsys.readouterr().err and tree(proj["root"]) == before
    assert _infer(proj, "--out", str(out), "--force") == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 5 and all(json.loads(line)["edi_code"] for line in lines)
    assert [q.name for q in proj["root"].iterdir() if q.name.startswith(".")] == []


def test_infer_that_processes_nothing_or_crashes_keeps_the_earlier_result(
    proj, capsys, monkeypatch
):
    out = proj["root"] / "results.jsonl"
    out.write_text("earlier result\n")
    notes = proj["root"] / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text("not an image")
    rc = cli_main(
        ["infer", "--config", str(proj["config"]), "--task", "classify", "--inputs", str(notes)]
        + ["--out", str(out), "--force"]
    )
    assert rc == 1 and f"{out} was not written" in capsys.readouterr().err
    assert out.read_text() == "earlier result\n"

    import pillsnap.pipeline

    calls, real = [], pillsnap.pipeline.classify_images

    def crash_on_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the first batch's results are already in the temporary file
            raise RuntimeError("killed mid-run")
        return real(*args, **kwargs)

    monkeypatch.setattr(pillsnap.pipeline, "classify_images", crash_on_second_batch)
    with pytest.raises(RuntimeError, match="killed mid-run"):
        _infer(proj, "--out", str(out), "--force", "--batch", "2")
    assert len(calls) == 2 and out.read_text() == "earlier result\n"
    assert sorted(q.name for q in proj["root"].iterdir()) == sorted(
        ["config.yaml", "exp", "notebooks", "notes", "report_template.json", "results.jsonl"]
    ), "no temporary file left behind"


def test_infer_out_parent_is_created_or_named(proj, capsys):
    out = proj["root"] / "new" / "deeper" / "r.jsonl"
    assert _infer(proj, "--out", str(out)) == 0 and len(out.read_text().splitlines()) == 5
    capsys.readouterr()
    blocker = proj["root"] / "afile"
    blocker.write_text("x")
    before = tree(proj["root"])
    assert _infer(proj, "--out", str(blocker / "r.jsonl")) == 2
    err = capsys.readouterr().err
    assert f"{blocker} is a file" in err and "r.jsonl" in err
    assert tree(proj["root"]) == before


# -- compare --out-dir -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "where,why",
    [
        ("r1", "inside the release record"),
        ("latest", "reserved"),
        ("r1/inner", "inside the release record"),
        ("latest_classification.onnx", "reserved"),
    ],
)
def test_compare_out_dir_refuses_release_records(released, capsys, where, why):
    before = tree(released["root"])
    out = released["out"] / where
    rc = cli_main(["compare", "--config", str(released["config"]), "--out-dir", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and why in err and str(out) in err, err
    assert tree(released["root"]) == before
    assert verify_release(released["out"] / "r1").ok


def test_compare_never_replaces_an_earlier_comparison_without_force(released, tmp_path, capsys):
    out = tmp_path / "mine"
    (out / "equivalence").mkdir(parents=True)
    (out / "export_report.json").write_text('{"earlier": true}')
    before = tree(out)
    rc = cli_main(["compare", "--config", str(released["config"]), "--out-dir", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "earlier comparison" in err and "--force" in err and str(out) in err, err
    assert tree(out) == before


@pytest.mark.slow
def test_compare_of_a_releases_onnx_never_writes_into_the_release(
    tmp_path_factory, tmp_path, capsys
):
    """Without --out-dir the report would land next to the ONNX files: not inside a record."""
    from _demo_release import demo_release
    from _tiny import SMALL_COMPARE_ARGS

    from pillsnap.release.manifest import write_manifest

    cfg, exports = demo_release(tmp_path_factory)
    record = tmp_path / "runs" / "20250101-000000-test000"
    record.mkdir(parents=True)
    onnx = record / Path(exports["classification"].onnx_path).name
    shutil.copy(exports["classification"].onnx_path, onnx)
    write_manifest(record, {"tag": record.name, "verdict": "passed"})
    before = tree(record)
    rc = cli_main(
        ["compare", "--config", str(cfg.source), "--classification-onnx", str(onnx), "--quiet"]
        + SMALL_COMPARE_ARGS
        + [f"--set=paths.out_dir={tmp_path / 'runs'}"]
        + [f"--set=paths.classification_data={cfg.paths.classification_data}"]
    )
    err = capsys.readouterr()
    assert rc == 0, err.err
    assert tree(record) == before
    reports = list((tmp_path / "runs" / "scratch").glob("compare-*/export_report.json"))
    assert len(reports) == 1 and f"report: {reports[0]}" in err.out


# -- class map vs classifier -----------------------------------------------------------------


def _edit_class_map(p, edit):
    path = p["exp"] / "class_map.json"
    data = json.loads(path.read_text())
    edit(data["classes"])
    path.write_text(json.dumps(data))


def _dup(classes):
    classes[3]["edi_code"] = classes[1]["edi_code"]


def _arabic(classes):
    classes[2]["edi_code"] = "٩٩٠٠٠٠٠٠٢"  # Arabic-Indic digits: str.isdigit() is True


def _drop(classes):
    classes.pop()


@pytest.mark.parametrize(
    "edit,why",
    [
        (_dup, "share edi_code"),
        (_arabic, "not 9 digits (ASCII 0-9 only)"),
        (_drop, "has 4 classes, the classifier has 5 outputs"),
    ],
)
def test_class_map_that_does_not_fit_is_exit_2_before_any_export(proj, capsys, edit, why):
    _edit_class_map(proj, edit)
    before = tree(proj["root"])
    rc = cli_main(["release", "--config", str(proj["config"])])
    err = capsys.readouterr().err
    assert rc == 2 and why in err and "paths.class_map" in err, err
    assert tree(proj["root"]) == before and not proj["out"].exists()


def test_class_map_other_than_the_trained_one_is_exit_2(proj, capsys):
    """The classifier records the digest of its training class map; another map is refused."""
    import torch

    from pillsnap.classmap import ClassMap

    ckpt = proj["exp"] / "checkpoints" / "classification_best.pt"
    state = torch.load(ckpt, weights_only=True)
    digest = ClassMap.load(proj["exp"] / "class_map.json").digest()
    ckpt.unlink()
    torch.save({**state, "class_map_digest": digest}, ckpt)
    assert cli_main(["release", "preflight", "--config", str(proj["config"])]) == 0
    capsys.readouterr()
    _edit_class_map(proj, lambda classes: classes[0].update(name="renamed pill"))
    before = tree(proj["root"])
    assert cli_main(["compare", "--config", str(proj["config"])]) == 2
    err = capsys.readouterr().err
    assert "is not the one" in err and "trained with" in err and "paths.class_map" in err
    assert tree(proj["root"]) == before


# -- promote: a kill between the rename and the latest swap --------------------------------

KILLED_PROMOTION = """
import os, sys
import pillsnap.release.promote as promote
from pillsnap.config import load_config
from pillsnap.release.run import run_release

real = promote._point_latest
def die(out_dir, tag):
    if tag == "r2":
        os._exit(9)  # the process dies after the rename, before `latest` moves
    real(out_dir, tag)
promote._point_latest = die
run_release(load_config(sys.argv[1]), version_tag="r2", command=["test"])
"""


@pytest.mark.slow
def test_kill_between_rename_and_latest_swap_leaves_one_answer(proj, capsys, caplog):
    out = proj["out"]
    assert cli_main(["release", "--config", str(proj["config"]), "--tag", "r1"]) == 0
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILLED_PROMOTION), str(proj["config"])],
        cwd=proj["root"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 9, proc.stderr
    assert (out / "r2").is_dir() and os.readlink(out / "latest") == "r1"
    # runs/latest and `release latest` agree: r2 is not released until its promotion completes
    assert find_newest_release(out) == out / "r1"
    capsys.readouterr()
    assert cli_main(["release", "latest", "--config", str(proj["config"])]) == 0
    assert capsys.readouterr().out.strip() == str(out / "r1")
    # the next run completes the interrupted promotion first, then releases itself
    with caplog.at_level("WARNING"):
        assert cli_main(["release", "--config", str(proj["config"]), "--tag", "r3"]) == 0
    assert "completed the interrupted promotion of r2" in caplog.text
    assert os.readlink(out / "latest") == "r3" and find_newest_release(out) == out / "r3"
    assert not (out / ".promoting").exists() and verify_release(out / "r2").ok


@pytest.mark.slow
def test_latest_on_a_release_that_no_longer_verifies_is_repaired_first(proj, capsys):
    released, out = proj, proj["out"]  # a project of its own: this test tampers
    r1 = out / "r1"
    assert cli_main(["release", "--config", str(released["config"]), "--tag", "r1"]) == 0
    assert cli_main(["release", "--config", str(released["config"]), "--tag", "r2"]) == 0
    victim = out / "r2" / "classification-r2.onnx"
    victim.write_bytes(victim.read_bytes() + b"tampered")
    capsys.readouterr()
    assert cli_main(["release", "latest", "--config", str(released["config"])]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(r1) and "the next `pillsnap release` repairs" in captured.err
    # a run that fails still repairs `latest` before it starts
    rc = cli_main(["release", "--config", str(released["config"]), "--stages", "nope"])
    assert rc == 2  # an unknown stage: nothing run, nothing repaired yet (bad input first)
    assert os.readlink(out / "latest") == "r2"
    (released["notebooks"] / "boom.ipynb").write_bytes(
        (released["notebooks"] / "good.ipynb").read_bytes().replace(b"import hashlib", b"1/0")
    )
    assert cli_main(["release", "--config", str(released["config"]), "--stages", "boom"]) == 1
    assert os.readlink(out / "latest") == "r1" and find_newest_release(out) == r1


# -- aborted runs: listed and cleaned -------------------------------------------------------


def test_aborted_runs_are_listed_and_cleaned_and_nothing_else_is(proj, capsys):
    out = proj["out"]
    out.mkdir()
    (out / "killed.partial").mkdir()
    (out / "killed.partial" / "detection-killed.onnx").write_bytes(b"half written")
    assert cli_main(["release", "--config", str(proj["config"]), "--tag", "r1"]) == 0
    assert (out / "killed.aborted").is_dir()
    capsys.readouterr()
    assert cli_main(["release", "list", "--config", str(proj["config"])]) == 0
    listing = capsys.readouterr().out
    assert "killed.aborted" in listing and "aborted" in listing and "r1" in listing
    assert "pillsnap release clean --aborted" in listing
    before = tree(proj["root"])
    assert cli_main(["release", "clean", "--config", str(proj["config"])]) == 2
    assert "--aborted" in capsys.readouterr().err
    assert (
        cli_main(["release", "clean", "--aborted", "--dry-run", "--config", str(proj["config"])])
        == 0
    )
    assert "would remove runs/killed.aborted" in capsys.readouterr().out.replace(
        str(proj["root"]) + "/", ""
    )
    assert tree(proj["root"]) == before
    assert cli_main(["release", "clean", "--aborted", "--config", str(proj["config"])]) == 0
    after = tree(proj["root"])
    gone = {k for k in before if k not in after}
    assert gone and all(k.startswith("runs/killed.aborted") for k in gone)
    assert {k: v for k, v in before.items() if k not in gone} == after
    assert verify_release(out / "r1").ok


# -- release verify --------------------------------------------------------------------------


def _copy_release(released, tmp_path):
    copy = tmp_path / "runs" / "r1"
    shutil.copytree(released["out"] / "r1", copy, symlinks=True)
    assert verify_release(copy).ok
    return copy


@pytest.mark.parametrize("extra", [".hidden", "stray.tmp", ".export_report.json.abc.tmp", "empty/"])
def test_verify_fails_on_anything_not_in_the_manifest(released, tmp_path, capsys, extra):
    copy = _copy_release(released, tmp_path)
    if extra.endswith("/"):
        (copy / extra).mkdir()
    else:
        (copy / extra).write_text("x")
    assert cli_main(["release", "verify", str(copy)]) == 1
    assert f"not in manifest: {extra}" in capsys.readouterr().err


def _repin(copy, name):
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["artifacts"][name] = {
        "sha256": sha256_file(copy / name),
        "size": (copy / name).stat().st_size,
    }
    (copy / "manifest.json").write_text(json.dumps(manifest))


def _report_failed(report):
    report["failed"] = True
    report["failure_reason"] = "mse_mean 0.2 above 0.0001"


def _report_other_tag(report):
    report["version_tag"] = "20240101-000000-other00"


@pytest.mark.parametrize(
    "edit,why",
    [
        (_report_failed, "manifest verdict 'passed' but export_report.json records a failed"),
        (_report_other_tag, "manifest tag 'r1' but export_report.json is of release"),
    ],
)
def test_verify_fails_when_the_manifest_contradicts_the_report(
    released, tmp_path, capsys, edit, why
):
    copy = _copy_release(released, tmp_path)
    report = json.loads((copy / "export_report.json").read_text())
    edit(report)
    (copy / "export_report.json").write_text(json.dumps(report))
    _repin(copy, "export_report.json")  # the hashes agree again: only the content is wrong
    assert cli_main(["release", "verify", str(copy)]) == 1
    assert why in capsys.readouterr().err
    assert find_newest_release(copy.parent) is None


def test_verify_fails_when_the_onnx_is_not_the_one_measured(released, tmp_path, capsys):
    copy = _copy_release(released, tmp_path)
    (copy / "classification-r1.onnx").write_bytes(b"another model")
    _repin(copy, "classification-r1.onnx")
    assert cli_main(["release", "verify", str(copy)]) == 1
    assert "not the file that was measured" in capsys.readouterr().err
