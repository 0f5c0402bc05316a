"""Known exclusions found by structure in the real exported fixture graphs, each with its reason."""

from __future__ import annotations

from collections import Counter

import onnx
import pytest

from pillsnap.config import apply_overrides
from pillsnap.exceptions import ConfigError
from pillsnap.quantize import exclusions, recipes


@pytest.fixture(scope="module")
def graphs(demo, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pre")
    return {
        task: onnx.load(str(recipes.preprocess_model(res.onnx_path, folder / f"{task}.onnx")))
        for task, res in demo[1].items()
    }


def test_detector_head_exclusions_by_kind(demo, graphs):
    model = graphs["detection"]
    found = exclusions.known_exclusions(demo[0], "detection", model)
    kinds = Counter(e.kind for e in found)
    assert kinds["shape_arithmetic"] > 50  # the anchor grid and the attention reshapes
    assert kinds["dfl"] >= 3 and kinds["sigmoid"] == 1 and kinds["output_concat"] == 1
    concat = next(e for e in found if e.kind == "output_concat")
    producer = next(n for n in model.graph.node if n.name == concat.node)
    assert producer.op_type == "Concat" and model.graph.output[0].name in producer.output
    assert all(
        e.reason and e.group == exclusions.detect_head(model).rstrip("/")
        for e in found
        if e.kind != "shape_arithmetic"
    )
    names = {e.node for e in found}
    assert not any("/cv2." in n or "/cv3." in n for n in names)  # the conv towers stay INT8
    assert len(names) == len(found)


def test_classifier_keeps_only_shape_arithmetic_float_and_groups_its_layers(demo, graphs):
    model = graphs["classification"]
    found = exclusions.known_exclusions(demo[0], "classification", model)
    assert {e.kind for e in found} == {"shape_arithmetic"}
    assert all(n.op_type != "Conv" for n in model.graph.node if n.name in {e.node for e in found})
    groups = exclusions.layer_groups(model, {e.node for e in found})
    assert "/conv_stem" in groups and "/classifier" in groups
    assert sum(n.op_type == "Conv" for n in model.graph.node) == sum(
        1 for g in groups.values() for name in g if name.endswith("/Conv")
    )


def test_configured_exclusions_are_checked(demo, graphs):
    cfg = apply_overrides(demo[0], {"quantize.nodes_to_exclude": ["/classifier/Gemm"]})
    found = exclusions.known_exclusions(cfg, "classification", graphs["classification"])
    assert ("/classifier/Gemm", "configured") in {(e.node, e.kind) for e in found}
    bad = apply_overrides(demo[0], {"quantize.nodes_to_exclude": ["/nope/Conv"]})
    with pytest.raises(ConfigError, match="no node named '/nope/Conv'"):
        exclusions.known_exclusions(bad, "classification", graphs["classification"])
