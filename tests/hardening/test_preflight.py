"""Issue 10, class 3 (preflight): every bad input is exit 2 before any work, nothing written.

``compare``, ``release``, ``infer`` and ``scripts/export_onnx.sh`` run the same preflight:
checkpoints (weights-only, architecture, class count), class map, data folders, output
folder, ONNX files given. Each case: exit 2, the message names the problem and the key
to fix, and the project tree is unchanged (no ``runs/``, no ONNX, no ``.failed``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _hardening import REPO, project, tree

from pillsnap.cli import main as cli_main


@pytest.fixture
def proj(tmp_path, tmp_path_factory):
    return project(tmp_path / "proj", tmp_path_factory)


def _replace_checkpoint(p, task, data: bytes):
    ckpt = p["exp"] / "checkpoints" / f"{task}_best.pt"
    ckpt.unlink()
    ckpt.write_bytes(data)


def _run(command, p, *extra):
    argv = {
        "compare": ["compare", "--config", str(p["config"])],
        "release": ["release", "--config", str(p["config"]), "--tag", "t1"],
        "infer": ["infer", "--config", str(p["config"])]
        + ["--inputs", str(p["tiny"] / "data" / "detection" / "images" / "val")],
    }[command]
    return cli_main(argv + list(extra))


def _refused(p, capsys, command, *needles, extra=()):
    before = tree(p["root"])
    rc = _run(command, p, *extra)
    err = capsys.readouterr().err
    assert rc == 2, err
    for needle in needles:
        assert needle in err, f"{needle!r} not in:\n{err}"
    assert "Traceback" not in err
    assert tree(p["root"]) == before, "the preflight must refuse before writing anything"
    return err


@pytest.mark.parametrize("command", ["compare", "release", "infer"])
def test_missing_class_map(proj, capsys, command):
    (proj["exp"] / "class_map.json").unlink()
    _refused(proj, capsys, command, "class map not found", "paths.class_map")


@pytest.mark.parametrize("command", ["compare", "release", "infer"])
def test_truncated_checkpoint(proj, capsys, command):
    good = (proj["tiny"] / "exp" / "checkpoints" / "classification_best.pt").read_bytes()
    _replace_checkpoint(proj, "classification", good[: len(good) // 2])
    _refused(proj, capsys, command, "cannot read checkpoint", "classification_best.pt")


@pytest.mark.parametrize(
    "section,key,value,needles",
    [
        ("classification", "num_classes", 7, ["wrong num_classes", "classification.num_classes=5"]),
        ("classification", "backbone", "mobilenetv3_small_050", ["wrong backbone"]),
        ("detection", "num_classes", 3, ["detection.num_classes=1"]),
        ("detection", "architecture", "yolo11s", ["detection.architecture=yolo11n"]),
    ],
)
def test_checkpoint_that_does_not_fit_the_config(
    tmp_path, tmp_path_factory, capsys, section, key, value, needles
):
    from _tiny import TINY

    p = project(tmp_path / "proj", tmp_path_factory, **{section: {**TINY[section], key: value}})
    if key == "num_classes" and section == "classification":  # keep the class map consistent
        from _tiny import tiny_class_map

        tiny_class_map(value).save(p["exp"] / "class_map.json")
    _refused(p, capsys, "release", *needles)


@pytest.mark.parametrize(
    "case,needles",
    [
        (
            "no_cls_data",
            ["the classification data not found", "paths.classification_data"],
        ),
        ("unreadable", ["not readable", "paths.classification_data"]),
        ("no_det_yaml", ["detection data YAML not found", "paths.detection_data"]),
    ],
)
def test_data_folders_must_hold_readable_images(tmp_path, tmp_path_factory, capsys, case, needles):
    data = tmp_path / "data"
    paths: dict = {}
    if case == "no_cls_data":
        paths["classification_data"] = str(data / "missing")
    elif case == "unreadable":
        from _tiny import tiny_class_map

        for c in tiny_class_map(5).classes:
            (data / "val" / c.class_dir).mkdir(parents=True)
            (data / "val" / c.class_dir / "0.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
        paths["classification_data"] = str(data)
    else:
        paths["detection_data"] = str(data / "nope.yaml")
    p = project(tmp_path / "proj", tmp_path_factory, paths=paths)
    before_data = tree(data)
    _refused(p, capsys, "compare", *needles)
    assert tree(data) == before_data


def test_output_folder_that_is_a_file_or_under_one(proj, capsys):
    blocker = proj["root"] / "afile"
    blocker.write_text("x")
    _refused(proj, capsys, "compare", "is a file, not a folder", extra=["--out-dir", str(blocker)])
    _refused(
        proj, capsys, "compare", f"{blocker} is a file", extra=["--out-dir", str(blocker / "x")]
    )


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder this process cannot write: chmod for a normal user; a read-only tmpfs for root
    (root ignores permission bits). Skipped, with the reason, where neither is possible."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"running as root without mount rights: {proc.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_output_folder_that_is_read_only(tmp_path, tmp_path_factory, capsys, read_only_dir):
    p = project(tmp_path / "proj", tmp_path_factory, paths={"out_dir": str(read_only_dir / "runs")})
    err = _refused(p, capsys, "release", "is not writable", "paths.out_dir")
    assert str(read_only_dir) in err
    _refused(p, capsys, "compare", "is not writable", extra=["--out-dir", str(read_only_dir)])


def _tiny_onnx(path: Path, outputs: list, data: bytes | None = None) -> Path:
    """A real, runnable ONNX graph (global pool -> flatten -> linear) without pillsnap metadata."""
    from onnx import TensorProto, helper, numpy_helper

    n_out = outputs[-1]
    w = numpy_helper.from_array(np.ones((3, n_out), np.float32), "W")
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "W"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 64, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, outputs)],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    blob = model.SerializeToString()
    path.write_bytes(blob if data is None else data(blob))
    return path


@pytest.mark.parametrize(
    "case,needles",
    [
        ("random", ["is not a readable ONNX model", "--classification-onnx"]),
        ("truncated", ["is not a readable ONNX model"]),
        ("empty", ["is not a readable ONNX model"]),
        ("wrong_classes", ["has shape ['N', 7]", "[N, 5]", "classification.num_classes=7"]),
        ("detector_shape", ["has shape ['N', 5, 2100]", "[N, 5]"]),
    ],
)
def test_onnx_files_given_must_parse_and_fit_their_task(proj, capsys, case, needles):
    path = proj["root"] / "given.onnx"
    if case == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif case == "truncated":
        _tiny_onnx(path, ["N", 5], data=lambda b: b[: len(b) // 2])
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "wrong_classes":
        _tiny_onnx(path, ["N", 7])
    else:
        _tiny_onnx(path, ["N", 5, 2100])
    _refused(proj, capsys, "compare", *needles, extra=["--classification-onnx", str(path)])
    infer = ["--engine", "onnx", "--task", "classify", "--model", str(path)]
    _refused(proj, capsys, "infer", needles[0], extra=infer)


def test_every_problem_is_listed_in_one_error(tmp_path, tmp_path_factory, capsys):
    p = project(
        tmp_path / "proj",
        tmp_path_factory,
        paths={"classification_data": str(tmp_path / "nothing")},
        detection={"architecture": "yolo11n", "imgsz": 160, "num_classes": 2},
    )
    (p["exp"] / "class_map.json").write_text(json.dumps({"classes": "broken"}))
    err = _refused(
        p,
        capsys,
        "release",
        "3 problem(s) found before any work; nothing was written",
        "class map",
        "detection.num_classes=1",
        "paths.classification_data",
    )
    assert err.count("\n  - ") == 3


@pytest.mark.slow
def test_export_script_runs_the_preflight_first(proj):
    _replace_checkpoint(proj, "detection", b"PK\x03\x04 not really a zip")
    before = tree(proj["root"])
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "export_onnx.sh"), "--tag", "sh1"],
        cwd=proj["root"],
        env={**os.environ, "CONFIG": str(proj["config"]), "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "cannot read checkpoint" in proc.stderr and "detection_best.pt" in proc.stderr
    assert "the preflight refused the release" in proc.stderr and "Traceback" not in proc.stderr
    assert tree(proj["root"]) == before
