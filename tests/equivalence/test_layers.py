"""The one per-layer comparison (``equivalence/layers.py``, ``layer_map.py``).

Three levels: the error measures and the table on hand-made tensors; the ONNX-name
-> Torch-module mapping on a small model exported here with the TorchScript exporter
(a folded and an unfolded BatchNorm, a module shared by two call sites, a module
called twice, a ``ModuleList``); then both fixture models as released (timm through
``torch.onnx``, YOLO through Ultralytics' exporter and onnxslim) on real val samples,
and the float-vs-candidate ONNX comparison the INT8 sensitivity uses.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pillsnap.equivalence.layer_map import ModuleTree, scope_of, unqualified
from pillsnap.equivalence.layers import (
    LayerDiff,
    LayerTable,
    Tap,
    compare_onnx_models,
    compare_tensors,
    compare_torch_onnx,
    describe,
    onnx_taps,
    relative_error,
    sqnr_db,
)

# -- measures and the table ---------------------------------------------------------------------


def test_relative_error_and_sqnr():
    ref = np.arange(1, 9, dtype=np.float32).reshape(2, 4)
    assert relative_error(ref, ref) == 0.0 and sqnr_db(ref, ref) == math.inf
    assert relative_error(ref, ref * 1.1) == pytest.approx(0.1, rel=1e-5)
    assert sqnr_db(ref, ref * 1.1) == pytest.approx(20.0, rel=1e-4)


def _row(position: int, err: float, before: float | None, upstream=()) -> LayerDiff:
    return LayerDiff(
        position,
        f"t{position}",
        f"/m{position}/Conv",
        "Conv",
        (1,),
        err,
        0.0,
        err,
        f"m{position}",
        before,
        upstream,
    )


def test_first_divergent_jump_worst_and_nan():
    rows = [_row(0, 1e-6, 0.0), _row(1, 5e-4, 1e-6), _row(2, 2e-3, 5e-4), _row(3, 0.5, 2e-3)]
    table = LayerTable(rows, Counter({"inside a module": 2}))
    assert table.first_divergent(1e-3).position == 2  # the first above the tolerance
    assert table.first_divergent(1e-3, jump=10.0).position == 3  # the first that introduces it
    assert table.worst().position == 3
    assert table.tapped_count == 6 and table.match_rate == pytest.approx(4 / 6)
    broken = LayerTable([_row(0, 1e-6, 0.0), _row(1, float("nan"), 1e-6)])
    assert broken.first_divergent(1e-3).position == 1  # NaN is divergent, never "within tolerance"
    assert broken.worst().position == 1 and describe(broken.worst())["rel_error"] is None
    frame = table.to_frame()
    assert list(frame["module"]) == ["m0", "m1", "m2", "m3"] and frame["before"].iloc[3] == 2e-3


def test_compare_tensors_before_is_the_error_of_what_a_layer_reads():
    ref = {n: np.full((2, 3), v, np.float32) for n, v in (("a", 1.0), ("b", 2.0), ("c", 3.0))}
    cand = {"a": ref["a"] * 1.01, "b": ref["b"] * 1.5, "c": ref["c"].copy()}
    taps = [
        Tap(0, "a", "/a/Conv", "Conv", upstream=()),
        Tap(1, "b", "/b/Conv", "Conv", upstream=("a",)),
        Tap(2, "c", "/c/Add", "Add", upstream=("a", "b")),
        Tap(3, "gone", "/d/Conv", "Conv", upstream=("c",)),
    ]
    table = compare_tensors(ref, cand, taps)
    a, b, c = table.rows
    assert a.before == 0.0 and a.upstream == ()
    assert b.before == pytest.approx(0.01, rel=1e-4) and c.before == pytest.approx(0.5, rel=1e-4)
    assert c.rel_error == 0.0 and table.skipped == Counter({"no counterpart": 1})


# -- names -> modules, on a model exported here -------------------------------------------------


def test_scope_names_follow_torch_onnx():
    """``unqualified`` is torch.onnx's ``_unqualified_variable_name`` (nested inside its
    ``_setup_trace_module_map``, so not importable): from the last non-numeric atom on."""
    assert scope_of("/model.6/m.0/cv1/conv/Conv") == ("model.6", "m.0", "cv1", "conv")
    assert scope_of("/blocks/blocks.2/blocks.2.0/conv_pw/Conv") == (
        "blocks",
        "blocks.2",
        "blocks.2.0",
        "conv_pw",
    )
    assert scope_of("/Concat") is None and scope_of("planted_0") is None
    for name, expected in (
        ("blocks.2.0", "blocks.2.0"),
        ("model.6.m.0", "m.0"),
        ("a.b.conv", "conv"),
    ):
        assert unqualified(name) == expected
    assert unqualified("__main__.Foo.bar.0") == "bar.0"  # the exporter docstring's own example


def _tiny_model():
    import torch
    from torch import nn

    shared = nn.SiLU()  # one instance at two call sites, like Ultralytics' Conv.default_act

    class Block(nn.Module):
        def __init__(self, c: int):
            super().__init__()
            self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(c)
            self.act = shared

        def forward(self, x):
            return x + self.act(self.bn(self.conv(x)))

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(8)
            self.act = nn.SiLU()
            self.blocks = nn.Sequential(Block(8), Block(8))
            self.pool = nn.MaxPool2d(3, 1, 1)  # called twice
            self.heads = nn.ModuleList([nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 1)])

        def forward(self, x):
            x = self.blocks(self.act(self.bn(self.stem(x))))
            x = self.pool(self.pool(x))
            return torch.cat([h(x) for h in self.heads], 1)

    torch.manual_seed(0)
    model = Tiny().eval()
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-1, 1)
    return model


def _export(model, path: Path, fold: bool) -> Path:
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, 16, 16),),
            str(path),
            input_names=["input"],
            output_names=["out"],
            opset_version=17,
            dynamic_axes={"input": {0: "batch"}, "out": {0: "batch"}},
            do_constant_folding=fold,
            dynamo=False,
        )
    return path


@pytest.mark.parametrize("fold", [True, False], ids=["batchnorm-folded", "batchnorm-kept"])
def test_tiny_model_maps_only_what_is_certain(tmp_path, fold):
    model = _tiny_model()
    path = _export(model, tmp_path / "tiny.onnx", fold)
    x = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    table = compare_torch_onnx(model, path, x)
    modules = [r.module for r in table.rows]
    expected = [
        "stem",
        "act",
        "blocks.0.conv",
        "blocks.0",
        "blocks.1.conv",
        "blocks.1",
        "heads.0",
        "heads.1",
        "",
    ]
    if not fold:  # the graph kept its BatchNormalization nodes: they are layers of their own
        expected = [
            "stem",
            "bn",
            "act",
            "blocks.0.conv",
            "blocks.0.bn",
            "blocks.0",
            "blocks.1.conv",
        ]
        expected += ["blocks.1.bn", "blocks.1", "heads.0", "heads.1", ""]
    assert modules == expected
    # Torch's stem output is taken after the BatchNorm exactly when the exporter folded it.
    assert max(r.rel_error for r in table.rows) < 1e-5, table.to_frame()
    # Left out, never guessed: the SiLU halves, the shared SiLU (2 call sites), the pool called
    # twice (its second call is scope "pool_1", which names no module).
    assert table.skipped == Counter(
        {"inside a module": 3, "module called several times": 3, "no confident module match": 1}
    )
    assert table.samples == 2
    # A memory budget below one sample's activations still compares one sample.
    assert compare_torch_onnx(model, path, x, max_bytes=1).samples == 1
    assert table.rows[0].upstream == () and table.rows[-1].upstream == (
        "/heads.0/Conv_output_0",
        "/heads.1/Conv_output_0",
    )


def test_module_tree_resolves_through_uncalled_containers_only():
    tree = ModuleTree.of(_tiny_model())
    assert tree.resolve(("heads.1",)) == "heads.1"  # ModuleList: no scope of its own
    assert tree.resolve(("blocks", "blocks.0", "conv")) == "blocks.0.conv"
    assert tree.resolve(("blocks", "conv")) is None  # blocks.0 is called: it would be in the path
    assert tree.resolve(("pool_1",)) is None


def test_a_planted_layer_is_found_by_the_onnx_to_onnx_comparison(tmp_path):
    """``compare_onnx_models`` (the INT8 sensitivity's call): rows by shared tensor name."""
    import onnx
    from onnx import numpy_helper

    model = _tiny_model()
    ref = _export(model, tmp_path / "ref.onnx", True)
    bad = onnx.load(str(ref))
    conv = next(n for n in bad.graph.node if n.name == "/blocks/blocks.1/conv/Conv")
    init = next(i for i in bad.graph.initializer if i.name == conv.input[1])
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.5, init.name))
    onnx.save(bad, str(tmp_path / "bad.onnx"))
    x = np.random.default_rng(1).random((2, 3, 16, 16), dtype=np.float32)
    table = compare_onnx_models(ref, tmp_path / "bad.onnx", x)
    assert len(table.rows) == len(onnx_taps(ref)) and not table.skipped
    first = table.first_divergent(1e-3)
    assert first.node == "/blocks/blocks.1/conv/Conv" and first.before < 1e-6
    assert table.first_divergent(1e-3, jump=10.0) == first
    only_convs = compare_onnx_models(ref, tmp_path / "bad.onnx", x, op_types=["Conv"])
    assert {r.op_type for r in only_convs.rows} == {"Conv"}


def test_qdq_model_shares_the_float_models_tensor_names(tmp_path):
    """The INT8 case for real: a static QDQ model of the tiny model, layer by layer."""
    pytest.importorskip("onnxruntime.quantization")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    ref = _export(_tiny_model(), tmp_path / "ref.onnx", True)
    x = np.random.default_rng(2).random((4, 3, 16, 16), dtype=np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{"input": x[i : i + 1]} for i in range(len(x))])

        def get_next(self):
            return next(self.feeds, None)

    quantize_static(str(ref), str(tmp_path / "q.onnx"), Reader(), quant_format=QuantFormat.QDQ)
    table = compare_onnx_models(ref, tmp_path / "q.onnx", x)
    assert len(table.rows) == len(onnx_taps(ref))
    errors = [r.rel_error for r in table.rows]
    assert 0 < max(errors) < 0.2  # 8-bit: visible, bounded
    assert all(r.before is not None for r in table.rows)


# -- the fixture models as released ------------------------------------------------------------


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    from _demo_release import demo_release

    return demo_release(tmp_path_factory)


def _val_batch(cfg, task: str, count: int) -> np.ndarray:
    from pillsnap.preprocess import PreprocessSpec, letterbox, load_image, preprocess_one

    if task == "classification":
        spec = PreprocessSpec.from_config(cfg.classification)
        paths = sorted(Path(cfg.paths.classification_data, "val").rglob("*.jpg"))[::97][:count]
        return np.stack([preprocess_one(load_image(p), spec) for p in paths])
    import yaml

    data = yaml.safe_load(Path(cfg.paths.detection_data).read_text())
    root = Path(cfg.paths.detection_data).parent / data.get("path", ".") / data["val"]
    paths = sorted(root.rglob("*.jpg"))[::37][:count]
    return np.stack([letterbox(np.asarray(load_image(p)), cfg.detection.imgsz)[0] for p in paths])


@pytest.mark.slow
@pytest.mark.parametrize(
    "task, count, other_skips",
    [("classification", 4, 0), ("detection", 2, 3)],
)
def test_fixture_exports_match_every_module_output(release, task, count, other_skips):
    """Both exporters' names map onto the fixture models; a correct export agrees at every layer.

    Measured: classifier 196 of 272 float tensors matched, the 76 others inside a module
    (the Sigmoid half of each SiLU, pads); detector 185 of 363, 175 inside a module, 3
    more left out (SPPF's pooling called three times).
    """
    from pillsnap.engines.runners import create_runner

    cfg, exports = release
    batch = _val_batch(cfg, task, count)
    assert len(batch) == count
    with create_runner("torch", task, cfg, exports[task].ckpt_path) as runner:
        table = compare_torch_onnx(runner.module, exports[task].onnx_path, batch)
    inside = table.skipped["inside a module"]
    assert table.skipped_count - inside <= other_skips, table.skipped
    assert len(table.rows) >= 150 and len(table.rows) / (table.tapped_count - inside) >= 0.98
    assert table.first_divergent(1e-4) is None, table.worst()
    assert {r.op_type for r in table.rows} >= {"Conv", "Mul"}
    assert table.rows[-1].module == "" and table.rows[0].upstream == ()  # model output, first conv


def test_names_of_another_tool_match_nothing_but_the_output(tmp_path):
    """Node names without a module scope are left out (counted), not guessed from the op order."""
    import onnx

    model = _tiny_model()
    path = _export(model, tmp_path / "tiny.onnx", True)
    renamed = onnx.load(str(path))
    for i, node in enumerate(renamed.graph.node):
        node.name = f"node_{i}"
    onnx.save(renamed, str(tmp_path / "renamed.onnx"))
    x = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    table = compare_torch_onnx(model, tmp_path / "renamed.onnx", x)
    assert [r.module for r in table.rows] == [""]  # the graph output is Torch's output
    assert table.skipped == Counter({"no module scope": len(onnx_taps(path)) - 1})
