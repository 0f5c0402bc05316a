"""Issue 10, class 1 (paths): no user-given name becomes a path outside its folder.

Version tags, stage names, notebook parameters and the names a release creates are
refused when absolute, holding ``..`` or a separator, or one of the release layout's own
names (``latest``, ``latest_*.onnx``, ``*.partial``, ``*.failed``, ``*.aborted``,
``scratch``); an ONNX file whose external data lies outside its folder is refused. Every
case: exit 2 (or the library's ``UserInputError``), a message naming the value and the
problem, and the project tree unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from _hardening import project, tree

from pillsnap.cli import main as cli_main
from pillsnap.exceptions import UserInputError


@pytest.fixture
def proj(tmp_path, tmp_path_factory):
    return project(tmp_path / "proj", tmp_path_factory)


BAD_NAMES = [
    ("../escape", "'..'"),
    ("/tmp/absolute", "absolute"),
    ("a/b", "separator"),
    ("latest", "reserved"),
    ("LATEST", "reserved"),
    ("scratch", "reserved"),
    ("t1.partial", "run record"),
    ("t1.failed", "run record"),
    ("t1.aborted", "run record"),
    ("latest_detection.onnx", "latest_<task>.onnx"),
    ("-dash", "only letters, digits"),
    ("tab\tname", "control characters"),
]


@pytest.mark.parametrize("name,why", BAD_NAMES)
def test_release_tag_must_be_a_plain_unreserved_name(proj, capsys, name, why):
    before = tree(proj["root"])
    rc = cli_main(["release", "--config", str(proj["config"]), f"--tag={name}"])
    err = capsys.readouterr().err
    assert rc == 2 and f"release tag {name!r}" in err and why in err, err
    assert tree(proj["root"]) == before


@pytest.mark.parametrize(
    "stages,why",
    [
        ("../../etc/passwd", "'..'"),
        ("/abs/notebook", "absolute"),
        ("sub/good", "separator"),
        ("latest", "reserved"),
        ("good,good", "listed twice"),
        ("good.failed", "run record"),
    ],
)
def test_stage_names_are_notebook_stems_only(proj, capsys, stages, why):
    before = tree(proj["root"])
    rc = cli_main(["release", "--config", str(proj["config"]), "--stages", stages])
    err = capsys.readouterr().err
    assert rc == 2 and why in err, err
    assert tree(proj["root"]) == before


def test_stage_names_from_the_config_are_checked_too(tmp_path, tmp_path_factory, capsys):
    p = project(tmp_path / "proj", tmp_path_factory, release={"stages": ["good", "../x"]})
    before = tree(p["root"])
    assert cli_main(["release", "--config", str(p["config"])]) == 2
    err = capsys.readouterr().err
    assert "stage name '../x'" in err and "release.stages" in err
    assert tree(p["root"]) == before


def test_a_stage_notebook_linking_outside_its_folder_is_refused(proj, tmp_path, capsys):
    outside = tmp_path / "elsewhere.ipynb"
    outside.write_bytes((proj["notebooks"] / "good.ipynb").read_bytes())
    (proj["notebooks"] / "linked.ipynb").symlink_to(outside)
    before = tree(proj["root"])
    rc = cli_main(["release", "--config", str(proj["config"]), "--stages", "linked"])
    err = capsys.readouterr().err
    assert rc == 2 and "outside" in err and "linked" in err
    assert tree(proj["root"]) == before


def test_notebook_version_tag_parameter_cannot_escape(proj, tmp_path):
    from pillsnap.report.notebook import open_stage

    before = tree(tmp_path)
    with pytest.raises(UserInputError, match=r"'\.\./\.\./x'.*version_tag"):
        open_stage("export", str(proj["config"]), out_dir="", version_tag="../../x")
    with pytest.raises(UserInputError, match="reserved"):
        open_stage("export", str(proj["config"]), str(tmp_path / "o"), version_tag="latest")
    assert tree(tmp_path) == before


def test_exporters_refuse_a_tag_that_would_leave_the_folder(proj, tmp_path):
    from pillsnap.config import load_config
    from pillsnap.models.export import export_classification_onnx, export_models

    cfg = load_config(proj["config"])
    out = tmp_path / "exports"
    with pytest.raises(UserInputError, match="'../x'"):
        export_models(cfg, out, tag="../x")
    with pytest.raises(UserInputError, match="absolute"):
        export_classification_onnx(cfg, None, out, tag="/etc/x")
    assert not out.exists() and not (tmp_path / "x.onnx").exists()


def test_compare_out_dir_with_a_record_suffix_is_refused(proj, capsys):
    before = tree(proj["root"])
    out = proj["root"] / "runs" / "mine.partial"
    rc = cli_main(["compare", "--config", str(proj["config"]), "--out-dir", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "mine.partial" in err and "run record" in err
    assert tree(proj["root"]) == before


# -- ONNX external data --------------------------------------------------------------------


def _external_onnx(folder: Path, location: str, offset: int = 0) -> Path:
    """A small valid graph (Y = X * W) whose W is stored externally at ``location``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnx.external_data_helper import set_external_data

    w = numpy_helper.from_array(np.full((1, 3, 1, 1), 2.0, np.float32), "W")
    set_external_data(w, location=location, offset=offset, length=12)
    w.data_location = TensorProto.EXTERNAL
    w.ClearField("raw_data")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["input", "W"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 64, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3, 64, 64])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "model.onnx"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    assert onnx.load(str(path), load_external_data=False).graph.initializer[0].data_location == 1
    return path


def _secret(tmp_path: Path) -> Path:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(3, dtype=np.float32).tobytes())
    return secret


@pytest.mark.parametrize("case", ["dotdot", "absolute", "symlink", "hardlink", "offset"])
def test_onnx_external_data_outside_its_folder_is_refused(proj, tmp_path, capsys, case):
    secret = _secret(tmp_path)
    folder = tmp_path / "model"
    folder.mkdir()
    location = {"dotdot": "../secret.bin", "absolute": str(secret)}.get(case, "w.bin")
    if case == "symlink":
        (folder / "w.bin").symlink_to(secret)
    elif case == "hardlink":
        os.link(secret, folder / "w.bin")
    elif case == "offset":
        (folder / "w.bin").write_bytes(b"\0" * 12)
    path = _external_onnx(folder, location, offset=100 if case == "offset" else 0)
    before, secret_bytes = tree(proj["root"]), secret.read_bytes()
    for argv in (
        ["compare", "--config", str(proj["config"]), "--classification-onnx", str(path)],
        ["infer", "--config", str(proj["config"]), "--engine", "onnx", "--task", "classify"]
        + ["--model", str(path), "--inputs", str(proj["tiny"] / "data" / "classification")],
    ):
        rc = cli_main(argv)
        err = capsys.readouterr().err
        assert rc == 2 and "keeps its data in" in err and "inside the model's folder" in err, err
        assert "Traceback" not in err
    assert tree(proj["root"]) == before and secret.read_bytes() == secret_bytes


def test_onnx_symlinked_model_with_external_data_is_refused(tmp_path):
    from pillsnap.models.onnx_files import UnsafeOnnxError, check_external_data

    real = _external_onnx(tmp_path / "real", "w.bin")
    (tmp_path / "real" / "w.bin").write_bytes(b"\0" * 12)
    (tmp_path / "link.onnx").symlink_to(real)
    assert check_external_data(real) == ["w.bin"]  # a plain file inside: fine
    with pytest.raises(UnsafeOnnxError, match="symlink"):
        check_external_data(tmp_path / "link.onnx")
