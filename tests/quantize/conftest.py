"""Fixtures of the INT8 tests: the demo export, a cheap config, one INT8 classifier (session-wide)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from _demo_release import demo_release
from _int8 import CHEAP, copy_float

from pillsnap.config import apply_overrides


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """``(cfg, exports)`` of the demo experiment (one export per session, shared)."""
    return demo_release(tmp_path_factory)


@pytest.fixture
def cheap_cfg(demo):
    return apply_overrides(demo[0], CHEAP)


@pytest.fixture(scope="session")
def int8_classifier(demo, tmp_path_factory) -> tuple[Path, Path]:
    """``(float32, INT8)`` classifier files side by side, the INT8 one built by the stage's quantizer."""
    from pillsnap.quantize.calibrate import calibration_set
    from pillsnap.quantize.recipes import cpu_record
    from pillsnap.quantize.search import ModelQuantizer

    cfg = apply_overrides(demo[0], CHEAP)
    folder = tmp_path_factory.mktemp("int8-classifier")
    float_path = copy_float(demo[1], "classification", folder)
    work = folder / "work"
    work.mkdir()
    quantizer = ModelQuantizer(
        cfg,
        "classification",
        float_path,
        work,
        calibration_set(cfg, "classification"),
        cpu_record(),
    )
    built, _ = quantizer.build(cfg.quantize.recipes[0], [])
    int8 = folder / float_path.name.replace(".onnx", ".int8.onnx")
    shutil.move(built, int8)
    shutil.rmtree(work)
    return float_path, int8
