"""Per-layer comparison: two models, one batch -> one table of (layer, error, SQNR) in execution order.

The one per-layer mechanism of the project (style: "one per-layer comparison"). Each
side is a mapping ``tensor name -> array`` captured on the same batch:

* an ONNX model's intermediate tensors are exposed as extra graph outputs (the
  technique of ONNX Runtime's ``qdq_loss_debug``) and read from one ONNX Runtime run
  (``run_onnx_taps``);
* a float ONNX model and its QDQ INT8 copy share the names of the tensors the
  quantizer wraps, so ``compare_onnx_models`` lines them up by name;
* Torch module outputs captured with forward hooks, mapped onto ONNX node names,
  feed the same ``compare_tensors`` (Torch <-> ONNX divergence localisation).

A tensor without a counterpart of the same shape on the other side is left out and
counted in ``LayerTable.skipped``, never guessed.
"""

from __future__ import annotations

import math
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

FLOAT_TYPES = (1, 10, 16)  # onnx.TensorProto FLOAT, FLOAT16, BFLOAT16
_EPS = float(np.finfo(np.float32).eps)


@dataclass(frozen=True)
class Tap:
    """One tensor produced inside a model, at its place in execution order."""

    position: int
    name: str
    node: str
    op_type: str


@dataclass(frozen=True)
class LayerDiff:
    """How far the candidate's tensor is from the reference's (relative L2 error, SQNR)."""

    position: int
    name: str
    node: str
    op_type: str
    shape: tuple[int, ...]
    rel_error: float
    sqnr_db: float
    max_abs: float


@dataclass
class LayerTable:
    """Matched layers in execution order, plus what could not be matched and why."""

    rows: list[LayerDiff]
    skipped: Counter = field(default_factory=Counter)

    @property
    def skipped_count(self) -> int:
        return sum(self.skipped.values())

    def first_divergent(self, tolerance: float) -> LayerDiff | None:
        """The first layer (execution order) whose relative error exceeds ``tolerance``."""
        return next((r for r in self.rows if r.rel_error > tolerance), None)

    def worst(self) -> LayerDiff | None:
        return max(self.rows, key=lambda r: r.rel_error, default=None)

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(
            [
                {
                    "position": r.position,
                    "layer": r.node or r.name,
                    "tensor": r.name,
                    "op_type": r.op_type,
                    "shape": "x".join(map(str, r.shape)),
                    "rel_error": r.rel_error,
                    "sqnr_db": r.sqnr_db,
                    "max_abs": r.max_abs,
                }
                for r in self.rows
            ]
        )


def relative_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    """``||ref - cand|| / ||ref||`` over the whole tensor (0 for identical tensors)."""
    ref = np.asarray(reference, np.float64).ravel()
    diff = ref - np.asarray(candidate, np.float64).ravel()
    return float(np.linalg.norm(diff) / max(np.linalg.norm(ref), _EPS))


def sqnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Signal to quantization-noise ratio in dB (``qdq_loss_debug``'s definition); inf when equal."""
    ref = np.asarray(reference, np.float64).ravel()
    noise = float(np.linalg.norm(ref - np.asarray(candidate, np.float64).ravel()))
    if noise == 0.0:
        return math.inf
    return 20.0 * math.log10(max(float(np.linalg.norm(ref)), _EPS) / noise)


def compare_tensors(
    reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray], taps: Iterable[Tap]
) -> LayerTable:
    """Compare the tensors named by ``taps`` (reference side's order) present on both sides."""
    rows, skipped = [], Counter()
    for tap in taps:
        ref, cand = reference.get(tap.name), candidate.get(tap.name)
        if ref is None or cand is None:
            skipped["no counterpart"] += 1
            continue
        if np.shape(ref) != np.shape(cand):
            skipped["shape differs"] += 1
            continue
        ref64 = np.asarray(ref, np.float64)
        rows.append(
            LayerDiff(
                tap.position,
                tap.name,
                tap.node,
                tap.op_type,
                tuple(int(d) for d in np.shape(ref)),
                relative_error(ref64, cand),
                sqnr_db(ref64, cand),
                float(np.max(np.abs(ref64 - np.asarray(cand, np.float64)), initial=0.0)),
            )
        )
    return LayerTable(rows, skipped)


def onnx_taps(model_path: str | Path, op_types: Iterable[str] | None = None) -> list[Tap]:
    """Every float activation (rank >= 2) a node produces, in graph order (topologically sorted)."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(model_path)))
    graph = model.graph
    infos = list(graph.value_info) + list(graph.output)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in infos}
    ranks = {
        vi.name: len(vi.type.tensor_type.shape.dim)
        for vi in infos
        if vi.type.tensor_type.HasField("shape")
    }
    wanted = set(op_types) if op_types is not None else None
    taps, position = [], 0
    for node in graph.node:
        if wanted is not None and node.op_type not in wanted:
            continue
        for out in node.output:
            # Activations only: scalars and shape arithmetic (rank < 2) are not layers.
            if out and types.get(out) in FLOAT_TYPES and ranks.get(out, 4) >= 2:
                taps.append(Tap(position, out, node.name, node.op_type))
                position += 1
    return taps


def expose_taps(model_path: str | Path, taps: Iterable[Tap], out_path: str | Path) -> Path:
    """A copy of the model whose graph also outputs every tapped tensor."""
    import onnx

    model = onnx.load(str(model_path))
    present = {o.name for o in model.graph.output}
    for tap in taps:
        if tap.name not in present:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(tap.name))
            present.add(tap.name)
    onnx.save(model, str(out_path))
    return Path(out_path)


def run_onnx_taps(
    model_path: str | Path,
    batch: np.ndarray,
    taps: list[Tap],
    providers: list[str] | None = None,
) -> dict[str, np.ndarray]:
    """The tapped tensors of one ONNX Runtime run of ``batch`` (float32 ``[N,3,H,W]``)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="pillsnap-layers-") as tmp:
        exposed = expose_taps(model_path, taps, Path(tmp) / "exposed.onnx")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(
            str(exposed), options, providers=providers or ["CPUExecutionProvider"]
        )
        names = [o.name for o in session.get_outputs()]
        values = session.run(names, {session.get_inputs()[0].name: batch})
    tapped = {t.name for t in taps}
    return {n: v for n, v in zip(names, values) if n in tapped}


def compare_onnx_models(
    reference_path: str | Path,
    candidate_path: str | Path,
    batch: np.ndarray,
    op_types: Iterable[str] | None = None,
    providers: list[str] | None = None,
) -> LayerTable:
    """Layer by layer, the reference ONNX model against a candidate sharing its tensor names.

    The INT8 case: a QDQ model keeps the float model's tensor names for the outputs of
    the nodes it wraps, so each row is the error accumulated up to that layer.
    """
    taps = onnx_taps(reference_path, op_types)
    cand_names = {t.name for t in onnx_taps(candidate_path)}
    shared = [t for t in taps if t.name in cand_names]
    reference = run_onnx_taps(reference_path, batch, shared, providers)
    candidate = run_onnx_taps(candidate_path, batch, shared, providers)
    table = compare_tensors(reference, candidate, shared)
    table.skipped["no counterpart"] += len(taps) - len(shared)
    return table


def describe(diff: LayerDiff | None) -> dict[str, Any] | None:
    """A layer row as JSON-ready data (inf SQNR becomes null)."""
    if diff is None:
        return None
    return {
        "position": diff.position,
        "layer": diff.node or diff.name,
        "tensor": diff.name,
        "op_type": diff.op_type,
        "shape": list(diff.shape),
        "rel_error": diff.rel_error,
        "sqnr_db": diff.sqnr_db if math.isfinite(diff.sqnr_db) else None,
        "max_abs": diff.max_abs,
    }
