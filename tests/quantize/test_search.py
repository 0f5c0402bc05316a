"""The exclusion loop on a case built to fail: it finds the layer, keeps it float, passes, records it.

The real fixture classifier gets an outlier channel planted in the middle of the network
(Add 1000 to one channel, subtract it again: float32 unchanged). Per-tensor INT8 of that
tensor wipes out its other channels, so the first quantization fails its int8 gates;
the loop must rank the group holding the planted Add first, revert it and pass.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _int8 import copy_float

pytestmark = pytest.mark.slow
TARGET = "/blocks/blocks.3/blocks.3.0/bn1/act/Mul"


def plant_outlier(path: Path) -> str:
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    node = next(n for n in model.graph.node if n.name == TARGET)
    src = node.output[0]
    inferred = onnx.shape_inference.infer_shapes(model)
    dims = next(v for v in inferred.graph.value_info if v.name == src).type.tensor_type.shape.dim
    shift = np.zeros((1, dims[1].dim_value, 1, 1), np.float32)
    shift[0, 0] = 1000.0
    for other in model.graph.node:
        for k, name in enumerate(other.input):
            if name == src:
                other.input[k] = "planted_restored"
    at = list(model.graph.node).index(node) + 1
    model.graph.node.insert(
        at,
        helper.make_node("Add", [src, "planted_shift"], ["planted_shifted"], name="/planted/Add"),
    )
    model.graph.node.insert(
        at + 1,
        helper.make_node(
            "Sub", ["planted_shifted", "planted_shift"], ["planted_restored"], name="/planted/Sub"
        ),
    )
    model.graph.initializer.append(numpy_helper.from_array(shift, "planted_shift"))
    onnx.save(model, str(path))
    return "/planted/Add"


def test_loop_reverts_the_planted_layer_and_passes(cheap_cfg, demo, tmp_path):
    from pillsnap.config import apply_overrides
    from pillsnap.quantize.calibrate import calibration_set
    from pillsnap.quantize.recipes import cpu_record
    from pillsnap.quantize.search import ModelQuantizer

    # Gates at the noise of a 120-image sample (one flip is 0.8 %): the planted layer, not
    # the sampling, must be what fails; min_speedup low: the machine may be loaded.
    loose = {
        "compare.gates.int8_top1_mismatch_rate": 0.03,
        "compare.gates.int8_accuracy_drop": 0.03,
    }
    cfg = apply_overrides(
        cheap_cfg, {"quantize.max_excluded": 3, "quantize.min_speedup": 0.5, **loose}
    )
    float_path = copy_float(demo[1], "classification", tmp_path / "release")
    planted = plant_outlier(float_path)
    work = tmp_path / "work"
    work.mkdir()
    quantizer = ModelQuantizer(
        cfg,
        "classification",
        float_path,
        work,
        calibration_set(cfg, "classification"),
        cpu_record(),
    )
    outcome = quantizer.run()

    first = outcome.steps[0]
    assert first.action == "recipe" and not first.passed  # built to fail
    assert any("top1_mismatch_rate" in c for c in first.failed_checks)
    reverts = [s for s in outcome.steps if s.action == "revert"]
    assert outcome.passed, outcome.reason
    path = [(s.action, s.group, s.passed) for s in outcome.steps]
    assert reverts and reverts[-1].passed, path
    assert sorted(reverts[-1].float_groups) == outcome.search_groups
    searched = [e for e in outcome.exclusions if e.kind == "search"]
    assert planted in {e.node for e in searched}  # the record names the layer kept float
    assert all(e.group in outcome.search_groups and e.reason for e in searched)
    group = next(e.group for e in searched if e.node == planted)
    assert outcome.sensitivity is not None
    # every step recorded with its gate metrics and speed
    for step in outcome.steps:
        assert step.metrics and step.speedup is not None and step.excluded_nodes > 0
    # the group with the planted Add was the worst of the first ranking (the SQNR it loses)
    assert reverts[0].group == group and reverts[0].tried[0]["group"] == group
    # and the INT8 file carries its exclusions in its metadata
    import json

    from pillsnap.models.common import META_INT8_EXCLUDED, read_onnx_metadata

    kept = json.loads(read_onnx_metadata(outcome.int8_path)[META_INT8_EXCLUDED])
    assert {"node": planted, "reason": "search"} in kept
