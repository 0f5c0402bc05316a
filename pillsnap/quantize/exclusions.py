"""What stays float, and why; and the layer groups the exclusion loop may revert.

Known exclusions, each recorded with its reason:

* shape arithmetic (both models): nodes that only compute shapes -- TF "SAME" padding
  amounts in timm's EfficientNetV2, anchor and stride grids in YOLO. Quantized, they
  round pad sizes and anchor coordinates.
* the YOLO ``Detect`` head (``quantize.detector_exclusions``): the DFL (softmax over 16
  distance bins, then a fixed 1x1 convolution), the box decode (anchor +/- distances
  in letterboxed pixels, 0..imgsz), the final class Sigmoid (scores near the 0.3 cut
  move by 1/255 steps) and the output Concat that joins box coordinates with scores:
  one INT8 scale for 0..640 and 0..1 values zeroes every score (measured on the
  fixture: mAP 0.0 with it quantized).

The head is found by structure, not by a hard-coded layer number: the ``/model.<k>/``
module that owns the ``dfl`` nodes; its conv towers (``cv2``, ``cv3``) stay INT8.

A layer group is one weighted layer with the element-wise ops that follow it
(``/model.2/m.0/cv1/conv``: a YOLO conv + SiLU; ``/blocks/blocks.1/blocks.1.0/conv_pw``:
an expansion conv + SiLU), named after the layer's module.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from pillsnap.exceptions import ConfigError

if TYPE_CHECKING:
    import onnx

    from pillsnap.config import Config

QUANTIZABLE = frozenset(
    {
        "Add",
        "AveragePool",
        "Clip",
        "Concat",
        "Conv",
        "ConvTranspose",
        "Gemm",
        "GlobalAveragePool",
        "MatMul",
        "MaxPool",
        "Mul",
        "Resize",
        "Sigmoid",
        "Softmax",
    }
)
"""Ops whose quantization changes numbers (reshapes and slices only move them)."""

REASONS = {
    "shape_arithmetic": "computes shapes (padding amounts, anchor grids), not activations: "
    "INT8 would round pad sizes and anchor coordinates",
    "dfl": "DFL decode: a softmax over 16 distance bins then a fixed 1x1 conv (an expectation); "
    "8-bit probabilities shift every box edge",
    "box_decode": "box decode: anchor points +/- distances and stride scaling in letterboxed "
    "pixels (0..imgsz), plus the per-level reshapes feeding it",
    "sigmoid": "final class Sigmoid: scores move in 1/255 steps around the deployed "
    "confidence cut, so boxes cross it",
    "output_concat": "output Concat of box coordinates (0..imgsz px) with scores (0..1): one "
    "INT8 scale for both zeroes the scores",
    "configured": "listed in quantize.nodes_to_exclude",
    "search": "reverted to float by the exclusion loop (INT8 failed the gate with it)",
}


@dataclass(frozen=True)
class Exclusion:
    node: str
    kind: str
    reason: str
    group: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load(model_or_path: Any) -> onnx.ModelProto:
    import onnx

    if hasattr(model_or_path, "graph"):
        return model_or_path
    return onnx.load(str(model_or_path), load_external_data=False)


def shape_arithmetic(model: onnx.ModelProto) -> list[str]:
    """Nodes that only compute shapes: ``Shape`` and everything fed only by shapes and constants."""
    graph = model.graph
    const = {i.name for i in graph.initializer}
    const |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    shaped: set[str] = set()
    names = []
    for node in graph.node:  # ONNX graphs are topologically sorted
        live = [i for i in node.input if i and i not in const]
        if node.op_type == "Shape" or (live and all(i in shaped for i in live)):
            names.append(node.name)
            shaped.update(node.output)
    return names


def detect_head(model: onnx.ModelProto) -> str | None:
    """``/model.<k>/``: the Ultralytics ``Detect`` module (the one owning the DFL), else None."""
    heads = {
        m.group(1)
        for n in model.graph.node
        if "/dfl/" in n.name and (m := re.match(r"(/model\.\d+/)", n.name))
    }
    return heads.pop() if len(heads) == 1 else None


def detector_exclusions(model: onnx.ModelProto, wanted: list[str]) -> list[Exclusion]:
    """The ``Detect`` head's non-convolution nodes, by kind (see the module doc)."""
    head = detect_head(model)
    if head is None:
        raise ConfigError(
            "quantize.detector_exclusions: no Ultralytics Detect head (a /model.<k>/dfl/ module) "
            "in the detector graph; set quantize.detector_exclusions: [] and list nodes in "
            "quantize.nodes_to_exclude instead"
        )
    output = model.graph.output[0].name
    found: list[Exclusion] = []
    for node in model.graph.node:
        name = node.name
        if not name.startswith(head) or name.startswith((head + "cv2", head + "cv3")):
            continue
        if name.startswith(head + "dfl/"):
            kind = "dfl"
        elif output in node.output:
            kind = "output_concat"
        elif node.op_type == "Sigmoid":
            kind = "sigmoid"
        else:
            kind = "box_decode"
        if kind in wanted:
            found.append(Exclusion(name, kind, REASONS[kind], head.rstrip("/")))
    return found


def known_exclusions(cfg: Config, task: str, model: onnx.ModelProto) -> list[Exclusion]:
    """Every node the configuration keeps float before any search, each with its reason."""
    q = cfg.quantize
    out: list[Exclusion] = []
    if q.exclude_shape_arithmetic:
        out += [
            Exclusion(n, "shape_arithmetic", REASONS["shape_arithmetic"])
            for n in shape_arithmetic(model)
        ]
    if task == "detection" and q.detector_exclusions:
        out += detector_exclusions(model, list(q.detector_exclusions))
    names = {n.name for n in model.graph.node}
    unknown = [n for n in q.nodes_to_exclude if n not in names]
    if unknown:
        raise ConfigError(
            f"quantize.nodes_to_exclude: no node named {', '.join(map(repr, unknown[:5]))} in the "
            f"{task} graph (names look like {next(iter(sorted(names)), '?')!r})"
        )
    out += [Exclusion(n, "configured", REASONS["configured"]) for n in q.nodes_to_exclude]
    seen: set[str] = set()
    return [e for e in out if not (e.node in seen or seen.add(e.node))]


WEIGHTED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def module_of(node_name: str) -> str:
    """``/blocks/blocks.1/blocks.1.0/conv_pw/Conv`` -> ``/blocks/blocks.1/blocks.1.0/conv_pw``."""
    head, _, tail = node_name.rstrip("/").rpartition("/")
    return head or node_name or tail


def layer_groups(
    model: onnx.ModelProto, skip: set[str] | frozenset[str] = frozenset()
) -> dict[str, list[str]]:
    """Group -> its quantizable nodes in graph order, leaving out the nodes in ``skip``.

    A group is one weighted layer (Conv / Gemm / MatMul, named after its module) with the
    element-wise ops that follow it (activation, SE gate, residual Add): each quantizable
    node joins the group of the node producing its first non-constant input.
    """
    graph = model.graph
    const = {i.name for i in graph.initializer}
    const |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    owner: dict[str, str] = {}
    groups: dict[str, list[str]] = defaultdict(list)
    for node in graph.node:
        if node.op_type in WEIGHTED:
            group = module_of(node.name)
        else:
            first = next((i for i in node.input if i and i not in const), "")
            group = owner.get(first) or module_of(node.name)
        for out in node.output:
            owner[out] = group
        if node.op_type in QUANTIZABLE and node.name not in skip:
            groups[group].append(node.name)
    return dict(groups)
