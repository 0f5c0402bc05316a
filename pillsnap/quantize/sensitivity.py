"""Per-layer sensitivity of an INT8 model: ``qdq_loss_debug``'s two SQNRs, then layer groups ranked.

Built on the project's one per-layer comparison (``pillsnap.equivalence.layers``):

* ``xmodel`` -- each tensor of the float32 model against the same tensor of the QDQ
  model (the quantizer keeps the names of the tensors it wraps: what
  ``compare_onnx_models`` lines up), i.e. the error accumulated up to that layer;
* ``qdq`` -- inside the QDQ model, each tensor against its own QuantizeLinear ->
  DequantizeLinear round trip: the rounding and clipping of that one tensor.

Both come from ``onnx_taps`` / ``run_onnx_taps`` / ``compare_tensors`` in two runs (the
QDQ model's run exposes each tensor and its dequantized copy at once), not three.

Both run the graph with every tapped tensor exposed, so ONNX Runtime cannot fuse
around them: this is the simulated INT8 arithmetic, blind to the saturation of the
real fused U8S8 kernels. The exclusion loop therefore uses the ranking below only
to choose which groups to try, and measures each try on the real kernels.

A group's score is the SQNR it loses: the worst SQNR of the tensors it reads minus
the worst of the tensors it hands on (dB), with each tensor's SQNR averaged over its
channels (``channel_sqnr_db``: an outlier channel that sets a per-tensor scale hides
the channels it wipes out from the whole-tensor figure). A group that introduces
error ranks first; one that only inherits it from upstream does not.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)
INPUT_SQNR_DB = 100.0
"""SQNR assumed for constants and an unquantized graph input (nothing lost yet); also the cap."""


@dataclass
class Sensitivity:
    """Per tensor (``layers``) and per layer group (``groups``, worst first)."""

    layers: pd.DataFrame
    """tensor, node, op_type, group, position, xmodel / channel / qdq SQNR (dB), rel_error."""
    groups: pd.DataFrame
    """group, nodes, in_sqnr_db, out_sqnr_db, lost_db, qdq_min_db; sorted by lost_db."""
    images: int

    def ranked(self, skip: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Group names, most damaging first, leaving out ``skip``."""
        return [g for g in self.groups["group"] if g not in skip]

    def to_record(self, top: int = 15) -> dict[str, Any]:
        from pillsnap.report.record import to_jsonable

        return {
            "images": self.images,
            "tensors": len(self.layers),
            "worst_groups": to_jsonable(self.groups.head(top)),
        }


def _finite(v: float) -> float:
    return INPUT_SQNR_DB if not math.isfinite(v) else min(float(v), INPUT_SQNR_DB)


def qdq_pairs(int8_path: str | Path) -> dict[str, str]:
    """Tensor -> the output of its QuantizeLinear -> DequantizeLinear pair in the QDQ model."""
    import onnx

    graph = onnx.load(str(int8_path), load_external_data=False).graph
    q_of = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    return {
        q_of[n.input[0]]: n.output[0]
        for n in graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in q_of
    }


def measure(
    float_path: str | Path,
    int8_path: str | Path,
    batch: np.ndarray,
    groups: dict[str, list[str]],
    providers: list[str] | None = None,
) -> Sensitivity:
    """Both SQNRs of every shared tensor on ``batch``, and the groups ranked by SQNR lost.

    ``float_path`` must be the graph that was quantized (after ``quant_pre_process``),
    so that tensor names line up. Two runs in all: the float model with its tensors
    exposed, the QDQ model with the same tensors and their DequantizeLinear outputs.
    """
    import onnx
    import pandas as pd

    from pillsnap.equivalence.layers import Tap, compare_tensors, onnx_taps, run_onnx_taps

    int8_graph = onnx.load(str(int8_path), load_external_data=False).graph
    produced = {o for n in int8_graph.node for o in n.output}
    shared = [t for t in onnx_taps(float_path) if t.name in produced]
    pairs = qdq_pairs(int8_path)
    wrapped = [t for t in shared if t.name in pairs]
    reference = run_onnx_taps(float_path, batch, shared, providers)
    feed = int8_graph.input[0].name
    input_taps = [Tap(-1, pairs[feed], "", "DequantizeLinear")] if feed in pairs else []
    candidate = run_onnx_taps(
        int8_path,
        batch,
        shared
        + [Tap(t.position, pairs[t.name], t.node, "DequantizeLinear") for t in wrapped]
        + input_taps,
        providers,
    )
    # The graph input is quantized too: its own rounding is what the first layer starts from.
    inputs_db = {feed: channel_sqnr_db(batch, candidate[pairs[feed]])} if input_taps else {}
    # qdq_loss_debug's xmodel_err: the float tensor against the INT8 model's dequantized copy
    # (a removed Relu lives on only in its QuantizeLinear, so the raw tensor would mislead).
    post = {t.name: candidate[pairs.get(t.name, t.name)] for t in shared}
    xmodel = compare_tensors(reference, post, shared)
    channel_db = {t.name: channel_sqnr_db(reference[t.name], post[t.name]) for t in shared}
    own = compare_tensors(
        {t.name: candidate[t.name] for t in wrapped},
        {t.name: candidate[pairs[t.name]] for t in wrapped},
        wrapped,
    )
    qdq_db = {r.name: r.sqnr_db for r in own.rows}
    group_of = {node: g for g, nodes in groups.items() for node in nodes}
    layers = pd.DataFrame(
        [
            {
                "position": r.position,
                "tensor": r.name,
                "node": r.node,
                "op_type": r.op_type,
                "group": group_of.get(r.node, ""),
                "xmodel_sqnr_db": _finite(r.sqnr_db),
                "channel_sqnr_db": channel_db[r.name],
                "qdq_sqnr_db": _finite(qdq_db[r.name]) if r.name in qdq_db else float("nan"),
                "rel_error": r.rel_error,
            }
            for r in xmodel.rows
        ],
        columns=[
            "position",
            "tensor",
            "node",
            "op_type",
            "group",
            "xmodel_sqnr_db",
            "channel_sqnr_db",
            "qdq_sqnr_db",
            "rel_error",
        ],
    )
    graph = onnx.load(str(float_path), load_external_data=False).graph
    table = _rank(graph, groups, layers, inputs_db)
    log.info(
        "per-layer SQNR on %d images: %d tensors compared, worst group %s (%.1f dB lost)",
        len(batch),
        len(layers),
        table["group"].iloc[0] if len(table) else "-",
        table["lost_db"].iloc[0] if len(table) else float("nan"),
    )
    return Sensitivity(layers, table, len(batch))


def channel_sqnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Mean over channels (axis 1) of ``layers.sqnr_db`` per channel, each capped at 100 dB.

    The whole-tensor SQNR is dominated by the channels with the most energy: one outlier
    channel that sets a per-tensor INT8 scale hides every other channel it wipes out
    (and YOLO's box coordinates hide its scores). Per channel, channels without energy
    in the reference skipped, that damage shows.
    """
    ref = np.asarray(reference, np.float64)
    if ref.ndim < 2:
        return INPUT_SQNR_DB
    ref = np.moveaxis(ref, 1, 0).reshape(ref.shape[1], -1)
    cand = np.moveaxis(np.asarray(candidate, np.float64), 1, 0).reshape(ref.shape)
    signal = np.linalg.norm(ref, axis=1)
    noise = np.linalg.norm(ref - cand, axis=1)
    live = signal > 0
    if not live.any():
        return INPUT_SQNR_DB
    with np.errstate(divide="ignore"):
        db = 20.0 * np.log10(signal[live] / noise[live])
    return float(np.minimum(db, INPUT_SQNR_DB).mean())


def _rank(
    graph: Any, groups: dict[str, list[str]], layers: pd.DataFrame, inputs_db: dict[str, float]
) -> pd.DataFrame:
    import pandas as pd

    sqnr = {**inputs_db, **dict(zip(layers["tensor"], layers["channel_sqnr_db"]))}
    qdq = dict(zip(layers["tensor"], layers["qdq_sqnr_db"]))
    nodes = {n.name: n for n in graph.node}
    produced_by = {o: n.name for n in graph.node for o in n.output}
    rows = []
    for group, names in groups.items():
        members = set(names)
        ins = [
            i
            for name in names
            for i in nodes[name].input
            if i and produced_by.get(i) not in members
        ]
        outs = [o for name in names for o in nodes[name].output if o in sqnr]
        if not outs:
            continue
        in_db = min((sqnr.get(i, INPUT_SQNR_DB) for i in ins), default=INPUT_SQNR_DB)
        out_db = min(sqnr[o] for o in outs)
        own = [qdq[o] for o in outs if not math.isnan(qdq.get(o, float("nan")))]
        rows.append(
            {
                "group": group,
                "nodes": len(names),
                "in_sqnr_db": round(in_db, 3),
                "out_sqnr_db": round(out_db, 3),
                "lost_db": round(max(in_db - out_db, 0.0), 3),
                "qdq_min_db": round(min(own), 3) if own else float("nan"),
            }
        )
    table = pd.DataFrame(
        rows, columns=["group", "nodes", "in_sqnr_db", "out_sqnr_db", "lost_db", "qdq_min_db"]
    )
    return table.sort_values(["lost_db", "out_sqnr_db"], ascending=[False, True]).reset_index(
        drop=True
    )
