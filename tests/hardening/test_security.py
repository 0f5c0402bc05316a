"""Issue 10, class 1 (security): no checkpoint can execute code, on any path that reads one.

Each command case runs a payload checkpoint (``os.system("touch MARKER")`` inside the
pickle) of each model through ``compare``, ``infer --engine torch``, ``release`` and a
stage notebook: the marker never appears, the command exits 2 naming the offending
global, and nothing in the project folder changed. The unit cases cover the other ways
in: code-running globals, a whole pickled model, pickle opcodes torch does not allow,
constructor calls of allow-listed classes, pickled hooks, and a polluted registry.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import torch
from _hardening import (
    REPO,
    ConstructorPayload,
    Payload,
    payload_classifier,
    payload_detector,
    project,
    tree,
)

from pillsnap.cli import main as cli_main
from pillsnap.exceptions import CheckpointError

TASKS = ("detection", "classification")


@pytest.fixture(scope="module")
def payloads(tmp_path_factory):
    """One payload checkpoint per model and the marker each would create."""
    from _tiny import tiny_release_inputs

    root = tmp_path_factory.mktemp("payloads")
    tiny = tiny_release_inputs(tmp_path_factory)
    markers = {t: root / f"PWNED_{t}" for t in TASKS}
    files = {
        "detection": payload_detector(root / "det_payload.pt", markers["detection"]),
        "classification": payload_classifier(
            root / "cls_payload.pt", markers["classification"], tiny
        ),
    }
    return files, markers


def _planted(tmp_path, tmp_path_factory, payloads, task):
    files, markers = payloads
    p = project(tmp_path / "proj", tmp_path_factory)
    ckpt = p["exp"] / "checkpoints" / f"{task}_best.pt"
    ckpt.unlink()
    ckpt.write_bytes(files[task].read_bytes())
    return p, markers[task]


def _assert_refused(rc, err, marker, before, p, global_name="posix.system"):
    assert rc == 2, err
    assert "refusing to load" in err and global_name in err, err
    assert "state_dict()" in err  # says how to re-save the weights
    assert "Traceback" not in err
    assert not marker.exists(), "the payload ran"
    assert tree(p["root"]) == before, "a refused command changed the project"


@pytest.mark.parametrize("task", TASKS)
def test_payload_never_runs_through_compare(tmp_path, tmp_path_factory, payloads, task, capsys):
    p, marker = _planted(tmp_path, tmp_path_factory, payloads, task)
    before = tree(p["root"])
    rc = cli_main(["compare", "--config", str(p["config"]), "--quiet"])
    _assert_refused(rc, capsys.readouterr().err, marker, before, p)


@pytest.mark.parametrize("task", TASKS)
def test_payload_never_runs_through_infer_torch(tmp_path, tmp_path_factory, payloads, task, capsys):
    p, marker = _planted(tmp_path, tmp_path_factory, payloads, task)
    photos = p["tiny"] / "data" / "detection" / "images" / "val"
    before = tree(p["root"])
    rc = cli_main(
        ["infer", "--engine", "torch", "--config", str(p["config"]), "--inputs", str(photos)]
        + ["--out", str(p["root"] / "results.jsonl")]
    )
    _assert_refused(rc, capsys.readouterr().err, marker, before, p)


@pytest.mark.parametrize("task", TASKS)
def test_payload_never_runs_through_release(tmp_path, tmp_path_factory, payloads, task, capsys):
    p, marker = _planted(tmp_path, tmp_path_factory, payloads, task)
    before = tree(p["root"])
    rc = cli_main(["release", "--config", str(p["config"]), "--tag", "pwn"])
    _assert_refused(rc, capsys.readouterr().err, marker, before, p)
    assert not p["out"].exists()


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_payload_never_runs_in_the_export_notebook(tmp_path, tmp_path_factory, payloads, task):
    """The stage notebook run on its own (papermill): the export cell fails, naming the global."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from pillsnap.release.stages import ensure_kernel

    p, marker = _planted(tmp_path, tmp_path_factory, payloads, task)
    out = p["root"] / "nb-out"
    with pytest.raises(PapermillExecutionError) as err:
        papermill.execute_notebook(
            str(REPO / "notebooks" / "export.ipynb"),
            str(tmp_path / "executed.ipynb"),
            parameters={"config_path": str(p["config"]), "out_dir": str(out)},
            kernel_name=ensure_kernel(),
            progress_bar=False,
            cwd=str(p["root"]),
        )
    assert err.value.ename == "CheckpointRefused" and "posix.system" in err.value.evalue
    assert "state_dict()" in err.value.evalue
    assert not marker.exists(), "the payload ran"
    assert sorted(q.name for q in out.iterdir()) == [], "nothing exported before the refusal"


# -- the other ways in, at the loaders --------------------------------------------------------


class EvalPayload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (eval, (f"__import__('os').system('touch {self.marker}')",))


class PartialPayload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (functools.partial, (os.system, f"touch {self.marker}"))


class ConvPayload:
    def __reduce__(self):
        from ultralytics.nn.modules.conv import Conv

        return (Conv, (3, 16))


def _tiny_cfg(tmp_path_factory):
    from _tiny import tiny_release_inputs

    from pillsnap.config import load_config

    return load_config(tiny_release_inputs(tmp_path_factory) / "exp" / "config.yaml")


def _good_detector(tmp_path_factory):
    from pillsnap.models.detector import load_detection_checkpoint

    cfg = _tiny_cfg(tmp_path_factory)
    return load_detection_checkpoint(cfg.checkpoint_path("detection"))


@pytest.mark.parametrize(
    "kind,expected",
    [
        ("eval", "builtins.eval"),
        ("partial", "functools.partial"),
        ("whole_module", "pickled model object"),
        ("protocol4", "<opcode"),
        ("module_with_payload", "posix.system"),
    ],
)
def test_classifier_refuses_crafted_files(tmp_path, tmp_path_factory, kind, expected):
    from pillsnap.models.classifier import build_classification_model, load_classification_model

    cfg = _tiny_cfg(tmp_path_factory)
    marker = tmp_path / "PWNED"
    state = build_classification_model("tf_efficientnetv2_b0", 5).state_dict()
    path = tmp_path / f"{kind}.pt"
    if kind == "eval":
        torch.save({"model": state, "meta": EvalPayload(marker)}, path)
    elif kind == "partial":
        torch.save({"model": state, "x": PartialPayload(marker)}, path)
    elif kind == "whole_module":
        torch.save(build_classification_model("tf_efficientnetv2_b0", 5), path)
    elif kind == "protocol4":
        torch.save({"model": state, "x": Payload(marker)}, path, pickle_protocol=4)
    else:
        model = build_classification_model("tf_efficientnetv2_b0", 5)
        model.note = Payload(marker)
        torch.save(model, path)
    with pytest.raises(CheckpointError) as err:
        load_classification_model(cfg, path)
    assert expected in str(err.value) and "nothing from it was executed" in str(err.value)
    assert "model.state_dict()" in str(err.value)  # how to re-save the weights
    assert not marker.exists()


@pytest.mark.parametrize(
    "kind,expected",
    [
        ("train_args", "posix.system"),
        ("model_attr", "posix.system"),
        ("constructor", "calls the constructor of ultralytics.nn.tasks.DetectionModel"),
        ("conv_constructor", "calls the constructor of ultralytics.nn.modules.conv.Conv"),
        ("forward_hook", "_forward_pre_hooks"),
    ],
)
def test_detector_refuses_crafted_files(tmp_path, tmp_path_factory, kind, expected):
    from pillsnap.models.detector import build_detection_model, load_detection_model

    cfg = _tiny_cfg(tmp_path_factory)
    marker = tmp_path / "PWNED"
    model = build_detection_model("yolo11n", 1).half()
    ckpt = {"model": model, "ema": None, "train_args": {"task": "detect", "imgsz": 160}}
    if kind == "train_args":
        ckpt["train_args"]["x"] = Payload(marker)
    elif kind == "model_attr":
        model.note = Payload(marker)
    elif kind == "constructor":
        ckpt["model"] = ConstructorPayload(marker)
    elif kind == "conv_constructor":
        ckpt["extra"] = ConvPayload()
    else:
        model._forward_pre_hooks[0] = torch.Size  # an allowed callable, as a pickled hook
    path = tmp_path / f"{kind}.pt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError) as err:
        load_detection_model(cfg, path)
    assert expected in str(err.value) and "executed" in str(err.value)
    assert not marker.exists()


def test_a_polluted_registry_does_not_reopen_constructor_calls(tmp_path, tmp_path_factory):
    """Ultralytics' own safe mode registers the real DetectionModel for the life of the process;
    our load must still resolve the name to the constructor-refusing proxy, and leave the
    registry as it found it."""
    from ultralytics.nn.tasks import torch_safe_load

    from pillsnap.models.detector import load_detection_checkpoint

    cfg = _tiny_cfg(tmp_path_factory)
    torch_safe_load(str(cfg.checkpoint_path("detection")), safe_only=True)
    registered = set(map(repr, torch.serialization.get_safe_globals()))
    assert any("DetectionModel" in r for r in registered)
    marker = tmp_path / "PWNED"
    path = tmp_path / "ctor.pt"
    torch.save({"model": ConstructorPayload(marker), "train_args": {}}, path)
    for _ in range(3):  # the registry's order is not deterministic: never once
        with pytest.raises(CheckpointError, match="calls the constructor"):
            load_detection_checkpoint(path)
    assert not marker.exists()
    assert set(map(repr, torch.serialization.get_safe_globals())) == registered


def test_good_checkpoints_load_as_ultralytics_and_timm_would(tmp_path, tmp_path_factory):
    """The committed fixture detector loads to the very weights Ultralytics' own (full-unpickling)
    loader gives for this trusted file; training leftovers (Namespace, numpy scalars, paths,
    optimizer state) load for the classifier."""
    import argparse

    import numpy as np
    from _hardening import DEMO
    from ultralytics.nn.tasks import load_checkpoint

    from pillsnap.models.classifier import _torch_load, extract_state_dict
    from pillsnap.models.detector import load_detection_checkpoint

    ours, _ = load_detection_checkpoint(DEMO / "checkpoints" / "detection_best.pt")
    theirs, _ = load_checkpoint(str(DEMO / "checkpoints" / "detection_best.pt"), fuse=False)
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert ours.names == theirs.names and ours.yaml == theirs.yaml
    x = torch.rand(1, 3, 160, 160)
    with torch.inference_mode():
        assert torch.equal(ours.eval()(x)[0], theirs.eval()(x)[0])

    state = {"w": torch.ones(2), "b": torch.zeros(2)}
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.ones(2))])
    leftovers = {
        "state_dict": state,
        "args": argparse.Namespace(lr=0.1, out=Path("/tmp/run")),
        "metric": np.float64(0.93),
        "epoch": np.int64(7),
        "optimizer": opt.state_dict(),
    }
    path = tmp_path / "timm_like.pt"
    torch.save(leftovers, path)
    loaded = _torch_load(path)
    assert loaded["args"].lr == 0.1 and float(loaded["metric"]) == pytest.approx(0.93)
    assert set(extract_state_dict(loaded, path)) == {"w", "b"}


def test_unstripped_ultralytics_checkpoint_loads(tmp_path):
    """An epoch / last.pt checkpoint keeps ``ema`` with IterableSimpleNamespace args."""
    from ultralytics.utils import IterableSimpleNamespace

    from pillsnap.models.detector import build_detection_model, load_detection_checkpoint

    ema = build_detection_model("yolo11n", 1).half()
    ema.args = IterableSimpleNamespace(imgsz=160, task="detect")
    opt = torch.optim.SGD(ema.parameters(), lr=0.01)
    path = tmp_path / "last.pt"
    state = {"model": None, "ema": ema, "optimizer": opt.state_dict(), "updates": 3}
    torch.save({**state, "train_args": {"imgsz": 160}}, path)
    model, ckpt = load_detection_checkpoint(path)
    assert ckpt["updates"] == 3 and model is ckpt["ema"]
    assert model.args["imgsz"] == 160  # train_args merged over Ultralytics' defaults, as it does


def test_no_unsafe_loading_anywhere_in_the_package():
    """The only torch.load is the weights-only one in safe_load.py; Ultralytics' loaders (which
    unpickle everything) are never called on a checkpoint (synth/ trains and measures its own)."""
    import ast

    offenders = []
    for path in sorted((REPO / "pillsnap").rglob("*.py")):
        if "synth" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            unsafe = [
                k
                for k in node.keywords
                if k.arg == "weights_only"
                and not (isinstance(k.value, ast.Constant) and k.value.value is True)
            ]
            if unsafe:
                offenders.append(f"{where}: weights_only is not literally True")
            if name in ("YOLO", "load_checkpoint", "torch_safe_load", "attempt_load_weights"):
                offenders.append(f"{where}: {name}()")
            if name == "load" and getattr(func, "value", None) is not None:
                base = getattr(func.value, "id", "")
                if base == "torch" and path.name != "safe_load.py":
                    offenders.append(f"{where}: torch.load outside safe_load.py")
                if base == "torch" and not any(k.arg == "weights_only" for k in node.keywords):
                    offenders.append(f"{where}: torch.load without weights_only=True")
    assert not offenders, offenders


def test_text_file_named_pt_is_a_clear_error_not_a_traceback(tmp_path, tmp_path_factory, capsys):
    p = project(tmp_path / "proj", tmp_path_factory)
    ckpt = p["exp"] / "checkpoints" / "classification_best.pt"
    ckpt.unlink()
    ckpt.write_text("these are my notes, not weights\n")
    before = tree(p["root"])
    rc = cli_main(
        ["infer", "--config", str(p["config"]), "--task", "classify"]
        + ["--inputs", str(p["tiny"] / "data" / "classification")]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "it is a text file (starts with 'these are my notes" in err
    assert "classification_best.pt" in err and "Traceback" not in err
    assert tree(p["root"]) == before


def test_safetensors_classifier_weights_load_without_pickle(tmp_path, tmp_path_factory):
    """``.safetensors`` holds tensors only: read with safetensors, never with pickle."""
    from safetensors.torch import save_file

    from pillsnap.models.classifier import load_classification_model, read_classification_checkpoint

    cfg = _tiny_cfg(tmp_path_factory)
    _, state, _ = read_classification_checkpoint(cfg)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    model = load_classification_model(cfg, path)
    assert all(
        torch.equal(model.state_dict()[k], v.float())
        for k, v in state.items()
        if v.is_floating_point()
    )
    path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_classification_model(cfg, path)
