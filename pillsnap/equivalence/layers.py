"""Per-layer comparison: two models, one batch -> one table of (layer, error, SQNR) in execution order.

The one per-layer mechanism of the project (style: "one per-layer comparison"). Each
side is a mapping ``tensor name -> array`` captured on the same batch:

* an ONNX model's intermediate tensors are exposed as extra graph outputs (the
  technique of ONNX Runtime's ``qdq_loss_debug``) and read from one ONNX Runtime run
  (``run_onnx_taps``);
* a float ONNX model and its QDQ INT8 copy share the names of the tensors the
  quantizer wraps, so ``compare_onnx_models`` lines them up by name;
* Torch module outputs captured with forward hooks, mapped onto ONNX node names
  (``layer_map``), feed the same ``compare_tensors`` (``compare_torch_onnx``: Torch <->
  ONNX divergence localisation, ``divergence.py``).

A tensor without a counterpart of the same shape on the other side is left out and
counted in ``LayerTable.skipped``, never guessed.

Each row also carries ``before``: the largest error among the nearest compared
tensors it is computed from (0 when it reads only the graph input), so a layer that
*introduces* an error (after >> before) is told apart from one that inherits it.
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
    module: str = ""
    """Torch module path whose output this tensor is (Torch <-> ONNX only)."""
    upstream: tuple[str, ...] | None = None
    """Nearest tapped tensors this one is computed from (None: not linked)."""


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
    module: str = ""
    before: float | None = None
    """Largest ``rel_error`` among the nearest compared tensors it reads (0: only the input)."""
    upstream: tuple[str, ...] | None = None
    """Those nearest compared tensors (``()``: it reads only the graph input; None: not linked)."""

    @property
    def label(self) -> str:
        """The Torch module path when known, else the ONNX node (or tensor) name."""
        return self.module or self.node or self.name


@dataclass
class LayerTable:
    """Matched layers in execution order, plus what could not be matched and why."""

    rows: list[LayerDiff]
    skipped: Counter = field(default_factory=Counter)
    samples: int = 0
    """How many samples of the batch were compared (0: not recorded)."""

    @property
    def skipped_count(self) -> int:
        return sum(self.skipped.values())

    @property
    def tapped_count(self) -> int:
        """Every tensor considered: matched rows plus skipped ones."""
        return len(self.rows) + self.skipped_count

    @property
    def match_rate(self) -> float:
        return len(self.rows) / self.tapped_count if self.tapped_count else 0.0

    def first_divergent(self, tolerance: float, *, jump: float | None = None) -> LayerDiff | None:
        """The first layer (execution order) whose relative error exceeds ``tolerance``.

        With ``jump``, only a layer that introduces the error counts: its error is at
        least ``jump`` times the error of what it reads (``before``).
        """
        return next(
            (
                r
                for r in self.rows
                # a NaN error (a broken layer) counts as divergent, and as a jump
                if not r.rel_error <= tolerance
                and (jump is None or r.before is None or not r.rel_error < jump * r.before)
            ),
            None,
        )

    def worst(self) -> LayerDiff | None:
        return max(self.rows, key=lambda r: _finite_or_inf(r.rel_error), default=None)

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
                    "module": r.module,
                    "before": r.before,
                }
                for r in self.rows
            ]
        )


def _finite_or_inf(value: float) -> float:
    return value if math.isfinite(value) else math.inf


def json_number(value: float | None) -> float | None:
    """A number for JSON: NaN / inf become null."""
    return value if value is not None and math.isfinite(value) else None


def relative_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    """``||ref - cand|| / ||ref||`` over the whole tensor (0 for identical tensors)."""
    return _errors(reference, candidate)[0]


def sqnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Signal to quantization-noise ratio in dB (``qdq_loss_debug``'s definition); inf when equal."""
    return _errors(reference, candidate)[1]


def _errors(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float, float]:
    """Relative error, SQNR and max |diff| from one difference.

    In float32 (10x faster than float64 on these sizes, and the per-layer tables cover
    every activation): the difference of two close float32 values is exact, and the
    norms agree with float64 to ~1e-5 relative; float64 only if float32 overflows.
    """
    ref = np.asarray(reference, np.float32).ravel()
    diff = ref - np.asarray(candidate, np.float32).ravel()
    noise, signal = float(np.linalg.norm(diff)), float(np.linalg.norm(ref))
    if not (math.isfinite(noise) and math.isfinite(signal)):
        ref64 = ref.astype(np.float64)
        diff = ref64 - np.asarray(candidate, np.float64).ravel()
        noise, signal = float(np.linalg.norm(diff)), float(np.linalg.norm(ref64))
    sqnr = math.inf if noise == 0.0 else 20.0 * math.log10(max(signal, _EPS) / noise)
    return noise / max(signal, _EPS), sqnr, float(np.max(np.abs(diff), initial=0.0))


def compare_tensors(
    reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray], taps: Iterable[Tap]
) -> LayerTable:
    """Compare the tensors named by ``taps`` (reference side's order) present on both sides."""
    rows, skipped = [], Counter()
    errors: dict[str, float] = {}
    for tap in taps:
        ref, cand = reference.get(tap.name), candidate.get(tap.name)
        if ref is None or cand is None:
            skipped["no counterpart"] += 1
            continue
        if np.shape(ref) != np.shape(cand):
            skipped["shape differs"] += 1
            continue
        err, sqnr, max_abs = _errors(ref, cand)
        errors[tap.name] = err
        before = (
            None
            if tap.upstream is None
            else max((errors[u] for u in tap.upstream if u in errors), default=0.0)
        )
        rows.append(
            LayerDiff(
                tap.position,
                tap.name,
                tap.node,
                tap.op_type,
                tuple(int(d) for d in np.shape(ref)),
                err,
                sqnr,
                max_abs,
                tap.module,
                before,
                None if tap.upstream is None else tuple(u for u in tap.upstream if u in errors),
            )
        )
    return LayerTable(rows, skipped)


def _load_graph(model_path: str | Path) -> Any:
    import onnx

    return onnx.shape_inference.infer_shapes(onnx.load(str(model_path))).graph


def onnx_taps(
    model_path: str | Path, op_types: Iterable[str] | None = None, *, graph: Any = None
) -> list[Tap]:
    """Every float activation (rank >= 2) a node produces, in graph order (topologically sorted)."""
    graph = graph if graph is not None else _load_graph(model_path)
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


def link_upstream(graph: Any, taps: list[Tap]) -> list[Tap]:
    """Each tap with the nearest tapped tensors it is computed from (through untapped nodes).

    One pass in graph order (ONNX requires topological order): an untapped tensor
    passes on what its node read, a tapped one stands for itself.
    """
    from dataclasses import replace

    tapped = {t.name for t in taps}
    reach: dict[str, frozenset[str]] = {}
    for node in graph.node:
        found: set[str] = set()
        for i in node.input:
            if i in tapped:
                found.add(i)
            elif i:
                found |= reach.get(i, frozenset())
        for out in node.output:
            reach[out] = frozenset(found)
    return [replace(t, upstream=tuple(sorted(reach.get(t.name, ())))) for t in taps]


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
        # One run on a handful of samples: no spinning worker threads burning the shared CPU.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(
            str(exposed), options, providers=providers or ["CPUExecutionProvider"]
        )
        names = [o.name for o in session.get_outputs()]
        feed = session.get_inputs()[0]
        dtype = np.float16 if feed.type == "tensor(float16)" else np.float32
        values = session.run(names, {feed.name: np.asarray(batch, dtype)})
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
    graph = _load_graph(reference_path)
    taps = onnx_taps(reference_path, op_types, graph=graph)
    cand_names = {t.name for t in onnx_taps(candidate_path)}
    shared = link_upstream(graph, [t for t in taps if t.name in cand_names])
    reference = run_onnx_taps(reference_path, batch, shared, providers)
    candidate = run_onnx_taps(candidate_path, batch, shared, providers)
    table = compare_tensors(reference, candidate, shared)
    table.samples = len(batch)
    if len(taps) > len(shared):
        table.skipped["no counterpart"] += len(taps) - len(shared)
    return table


def compare_torch_onnx(
    model: Any,
    onnx_path: str | Path,
    batch: np.ndarray,
    providers: list[str] | None = None,
    *,
    max_bytes: int | None = None,
) -> LayerTable:
    """Layer by layer, a Torch model (reference) against its ONNX export, on one batch.

    ONNX tensors are matched to Torch module outputs by the exporter's node names
    (``layer_map``); an unmatched tensor is counted in ``skipped`` by reason. The Torch
    model is run as given (eval mode, its own dtype and device). Both sides hold every
    matched activation at once: with ``max_bytes``, only as many samples of ``batch``
    as fit (at least one) are compared (production-size models: ~0.6 GB a sample).
    """
    from dataclasses import replace

    from pillsnap.equivalence.layer_map import ModuleTree, capture_torch, output_bytes, plan_taps

    graph = _load_graph(onnx_path)
    taps = onnx_taps(onnx_path, graph=graph)
    plan = plan_taps(graph, taps, ModuleTree.of(model))
    if max_bytes is not None and len(batch) > 1:
        per_sample = 2 * output_bytes(model, batch[:1], plan)  # Torch copies + ONNX outputs
        batch = batch[: max(1, min(len(batch), max_bytes // max(per_sample, 1)))]
    reference, skipped = capture_torch(model, batch, plan)
    mapped = [replace(t, module=plan.modules[t.name]) for t in taps if t.name in reference]
    candidate = run_onnx_taps(onnx_path, batch, mapped, providers)
    same = [t for t in mapped if np.shape(reference[t.name]) == np.shape(candidate.get(t.name))]
    if len(mapped) > len(same):
        skipped["shape differs"] += len(mapped) - len(same)
    table = compare_tensors(reference, candidate, link_upstream(graph, same))
    table.skipped.update(plan.skipped)
    table.skipped.update(skipped)
    table.samples = len(batch)
    return table


def describe(diff: LayerDiff | None) -> dict[str, Any] | None:
    """A layer row as JSON-ready data (inf SQNR, a NaN error become null)."""
    if diff is None:
        return None
    return {
        "position": diff.position,
        "layer": diff.node or diff.name,
        "module": diff.module,
        "tensor": diff.name,
        "op_type": diff.op_type,
        "shape": list(diff.shape),
        "rel_error": json_number(diff.rel_error),
        "sqnr_db": json_number(diff.sqnr_db),
        "max_abs": json_number(diff.max_abs),
        "before": json_number(diff.before),
    }
