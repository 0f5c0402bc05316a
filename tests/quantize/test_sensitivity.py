"""Per-layer sensitivity: both SQNRs through equivalence.layers, and the group that introduces error first.

A tiny real model (three convolutions) is built with onnx.helper and quantized by the
stage's own functions; an outlier channel is planted in the middle group (Add 1000 to
one channel, subtract it again): per-tensor INT8 of that tensor wipes out the other
channels, so the middle group loses SQNR and the last one only inherits the damage.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pillsnap.config.quantize import Recipe
from pillsnap.quantize import calibrate, exclusions, recipes, sensitivity

CPU = {"int8_class": "vnni", "flags": {}}


def tiny_model(path: Path, outlier: bool) -> Path:
    rng = np.random.default_rng(0)
    inits, nodes = [], []

    def conv(name: str, src: str, cin: int, cout: int) -> str:
        w = numpy_helper.from_array(
            rng.normal(0, 0.3, (cout, cin, 3, 3)).astype(np.float32), f"{name}.w"
        )
        b = numpy_helper.from_array(rng.normal(0, 0.1, cout).astype(np.float32), f"{name}.b")
        inits.extend([w, b])
        nodes.append(
            helper.make_node(
                "Conv",
                [src, w.name, b.name],
                [f"{name}_c"],
                name=f"/{name}/conv/Conv",
                pads=[1, 1, 1, 1],
            )
        )
        nodes.append(
            helper.make_node("Relu", [f"{name}_c"], [f"{name}_r"], name=f"/{name}/act/Relu")
        )
        return f"{name}_r"

    x = conv("layer1", "input", 3, 8)
    x = conv("layer2", x, 8, 8)
    if outlier:
        shift = np.zeros((1, 8, 1, 1), np.float32)
        shift[0, 3] = 1000.0
        inits.append(numpy_helper.from_array(shift, "shift"))
        nodes.append(helper.make_node("Add", [x, "shift"], ["shifted"], name="/layer2/planted/Add"))
        nodes.append(
            helper.make_node("Sub", ["shifted", "shift"], ["restored"], name="/layer2/planted/Sub")
        )
        x = "restored"
    x = conv("layer3", x, 8, 4)
    nodes.append(
        helper.make_node("GlobalAveragePool", [x], ["pooled"], name="/pool/GlobalAveragePool")
    )
    nodes.append(helper.make_node("Flatten", ["pooled"], ["logits"], name="/pool/Flatten"))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def reader_for(count: int) -> calibrate.CalibrationReader:
    data = np.random.default_rng(1).normal(0, 1, (count, 3, 16, 16)).astype(np.float32)
    paths = [Path(f"img{i}") for i in range(count)]
    return calibrate.CalibrationReader(paths, "input", lambda p: data[int(p.name[3:])], 4)


def quantized(tmp_path: Path, outlier: bool) -> tuple[Path, Path, dict]:
    float_path = tiny_model(tmp_path / f"tiny-{outlier}.onnx", outlier)
    pre = recipes.preprocess_model(float_path, tmp_path / f"pre-{outlier}.onnx")
    model = onnx.load(str(pre))
    groups = exclusions.layer_groups(model)
    recipe = Recipe.minmax_per_channel()
    out = recipes.quantize_model(
        pre,
        tmp_path / f"q-{outlier}.onnx",
        recipe,
        CPU,
        reader_for(16),
        tmp_path / f"cal-{outlier}.json",
        [],
    )
    return pre, out, groups


def test_both_sqnrs_per_tensor_and_groups(tmp_path):
    pre, q, groups = quantized(tmp_path, outlier=False)
    assert set(groups) == {"/layer1/conv", "/layer2/conv", "/layer3/conv"}
    assert groups["/layer3/conv"][-1] == "/pool/GlobalAveragePool"  # epilogue joins its layer
    result = sensitivity.measure(pre, q, reader_for(8).first_images(8), groups)
    layers = result.layers
    assert {"layer1_r", "layer2_r", "layer3_r", "logits"} <= set(
        layers["tensor"]
    )  # Conv+Relu fused
    assert (layers["xmodel_sqnr_db"] > 15).all()  # a healthy INT8 copy
    assert (layers["channel_sqnr_db"] > 15).all()
    assert layers["qdq_sqnr_db"].notna().sum() >= 3  # tensors wrapped by a Q/DQ pair
    assert list(result.groups.columns[:5]) == [
        "group",
        "nodes",
        "in_sqnr_db",
        "out_sqnr_db",
        "lost_db",
    ]


def test_the_group_that_introduces_the_error_ranks_first(tmp_path):
    pre, q, groups = quantized(tmp_path, outlier=True)
    assert "/layer2/planted/Add" in groups["/layer2/conv"]  # Sub: ONNX Runtime does not quantize it
    result = sensitivity.measure(pre, q, reader_for(8).first_images(8), groups)
    ranked = result.groups.set_index("group")
    assert result.ranked()[0] == "/layer2/conv"
    assert ranked.loc["/layer2/conv", "lost_db"] > 10 + ranked.loc["/layer3/conv", "lost_db"]
    assert ranked.loc["/layer3/conv", "out_sqnr_db"] < 20  # the damage reaches the output
    assert result.ranked({"/layer2/conv"})[0] != "/layer2/conv"
    # kept float, the planted group no longer hurts
    out = recipes.quantize_model(
        pre,
        tmp_path / "fixed.onnx",
        Recipe.minmax_per_channel(),
        CPU,
        reader_for(16),
        tmp_path / "cal-True.json",
        groups["/layer2/conv"],
    )
    fixed = sensitivity.measure(pre, out, reader_for(8).first_images(8), groups)
    logits = fixed.layers.set_index("tensor").loc["logits", "xmodel_sqnr_db"]
    assert logits > ranked.loc["/layer3/conv", "out_sqnr_db"] + 10


def test_channel_sqnr_is_layers_sqnr_per_channel():
    from pillsnap.equivalence.layers import sqnr_db

    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, (2, 3, 4, 4))
    cand = ref + rng.normal(0, [[[[0.01]], [[0.1]], [[1.0]]]], ref.shape)
    want = np.mean([sqnr_db(ref[:, c], cand[:, c]) for c in range(3)])
    assert sensitivity.channel_sqnr_db(ref, cand) == pytest.approx(want)
    # an outlier channel dominates the whole-tensor SQNR, not the per-channel mean
    ref[:, 0] *= 1000
    cand[:, 0] = ref[:, 0]
    assert sqnr_db(ref, cand) > sensitivity.channel_sqnr_db(ref, cand) + 15
