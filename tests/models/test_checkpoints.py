"""Checkpoint loading (every accepted layout, strict errors with causes) and model helpers."""

from __future__ import annotations

import pytest
import torch
from _tiny import TINY, build_tiny_experiment

from pillsnap.config import apply_overrides
from pillsnap.exceptions import CheckpointError, MissingPathError
from pillsnap.models.classifier import (
    build_classification_model,
    load_classification_model,
    save_classification_checkpoint,
)
from pillsnap.models.common import count_params
from pillsnap.models.detector import load_detection_model

pytestmark = pytest.mark.slow  # builds and loads real timm / Ultralytics models


@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory):
    # Always the tiny experiment: these tests write deliberately broken variants of its checkpoint.
    return build_tiny_experiment(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def reference_state(tiny_cfg):
    return load_classification_model(tiny_cfg).state_dict()


def _same_weights(model, reference) -> bool:
    return all(torch.equal(model.state_dict()[k], v) for k, v in reference.items())


def test_project_format_half_checkpoint_loads_as_float32_eval(tiny_cfg):
    raw = torch.load(tiny_cfg.checkpoint_path("classification"), weights_only=True)
    assert raw["model"]["conv_stem.weight"].dtype == torch.float16  # saved in half precision
    model = load_classification_model(tiny_cfg)
    assert not model.training
    assert {p.dtype for p in model.parameters()} == {torch.float32}


@pytest.mark.parametrize(
    "layout", ["raw", "state_dict", "model", "module_prefix", "orig_mod_prefix"]
)
def test_common_checkpoint_layouts_load_identically(tiny_cfg, reference_state, tmp_path, layout):
    state = {k: v.clone() for k, v in reference_state.items()}
    wrapped = {
        "raw": state,
        "state_dict": {"state_dict": state, "epoch": 3},
        "model": {"model": state, "optimizer": None},
        "module_prefix": {"state_dict": {f"module.{k}": v for k, v in state.items()}},
        "orig_mod_prefix": {f"_orig_mod.{k}": v for k, v in state.items()},
    }[layout]
    path = tmp_path / f"{layout}.pt"
    torch.save(wrapped, path)
    assert _same_weights(load_classification_model(tiny_cfg, path), reference_state)


def test_wrong_num_classes_names_expected_and_found(tiny_cfg, tmp_path):
    path = save_classification_checkpoint(
        tmp_path / "c9.pt", build_classification_model(TINY["classification"]["backbone"], 9), {}
    )
    with pytest.raises(CheckpointError) as err:
        load_classification_model(tiny_cfg, path)
    msg = str(err.value)
    assert "wrong num_classes" in msg and "9 classes" in msg and "expects 5" in msg
    assert "classifier.weight checkpoint [9," in msg


def test_wrong_backbone_is_named(tiny_cfg, tmp_path):
    other = build_classification_model("mobilenetv3_small_050", 5)
    path = save_classification_checkpoint(
        tmp_path / "mnv3.pt", other, {"backbone": "mobilenetv3_small_050"}
    )
    with pytest.raises(CheckpointError) as err:
        load_classification_model(tiny_cfg, path)
    msg = str(err.value)
    assert "wrong backbone" in msg and "classification.backbone=mobilenetv3_small_050" in msg
    assert "missing keys" in msg and "unexpected keys" in msg


def test_partial_module_prefix_is_diagnosed(tiny_cfg, reference_state, tmp_path):
    state = {
        (f"module.{k}" if k.startswith("blocks.0") else k): v for k, v in reference_state.items()
    }
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="`module.` prefix"):
        load_classification_model(tiny_cfg, tmp_path / "partial.pt")


def test_unreadable_and_missing_checkpoints(tiny_cfg, tmp_path):
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(tiny_cfg.checkpoint_path("classification").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_classification_model(tiny_cfg, bad)
    with pytest.raises(MissingPathError, match="nope.pt"):
        load_classification_model(tiny_cfg, tmp_path / "nope.pt")


def test_detection_model_is_fused_float_eval_and_returns_raw_head(tiny_cfg):
    model = load_detection_model(tiny_cfg)
    assert not model.training and {p.dtype for p in model.parameters()} == {torch.float32}
    assert not any(hasattr(m, "bn") for m in model.modules()), (
        "BatchNorm should be fused into the convolutions"
    )
    with torch.inference_mode():
        out = model(torch.zeros(2, 3, 160, 160))
    raw = out[0] if isinstance(out, (tuple, list)) else out
    assert tuple(raw.shape) == (2, 4 + 1, 20 * 20 + 10 * 10 + 5 * 5)  # strides 8, 16, 32 at 160 px


def test_detection_checkpoint_errors(tiny_cfg, tmp_path):
    with pytest.raises(CheckpointError, match="detection.num_classes=1"):
        load_detection_model(apply_overrides(tiny_cfg, {"detection.num_classes": 3}))
    with pytest.raises(CheckpointError, match="Ultralytics"):
        load_detection_model(tiny_cfg, tiny_cfg.checkpoint_path("classification"))


def test_count_params_in_millions():
    layer = torch.nn.Linear(1000, 1000)  # 1,001,000 parameters
    assert count_params(layer) == pytest.approx(1.001)


def test_class_map_other_than_the_trained_one_is_warned(tiny_cfg, tmp_path, caplog):
    model = build_classification_model(TINY["classification"]["backbone"], 5)
    path = save_classification_checkpoint(
        tmp_path / "digest.pt", model, {"class_map_digest": "0" * 64}
    )
    load_classification_model(tiny_cfg, path)
    assert "trained with class map digest 000000000000" in caplog.text
