"""INT8 models in the equivalence check: their float32 reference, and why an int8 gate failed.

With ``compare.precision: int8`` a model is compared with the float32 ONNX of the same
release, not with Torch: the INT8 file ``<task>-<tag>.int8.onnx`` names its source in
its metadata (``pillsnap.int8_source``) and lies beside it; an INT8 file made elsewhere
without its float32 sibling is compared with a float32 export of the configured
checkpoint (into a temporary folder).

A failed int8 gate gets causes of its own: the input quantizer's calibrated range
against the inputs the shared pre-processing makes (unnormalised or wrongly scaled
calibration data clips them), else the quantization of some layer (run the stage's
per-layer sensitivity and exclusion loop).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pillsnap.exceptions import UserInputError
from pillsnap.names import INT8_SUFFIX

if TYPE_CHECKING:
    from pillsnap.config import Config
    from pillsnap.models.common import ExportResult

log = logging.getLogger(__name__)
CLIPPED_SHARE = 0.01
"""Share of input values outside the input quantizer's range above which calibration is suspect."""
NARROW_RANGE = 0.5
"""Calibrated input range narrower than this share of the real inputs' range: suspect too."""

TITLES = {
    "calibration": "calibration data (INT8 activation ranges)",
    "int8_layer": "INT8 quantization of some layers",
}
ADVICE = {
    "calibration": "The INT8 model's activation ranges were calibrated on inputs unlike the ones "
    "pillsnap.preprocess makes (channel order, normalisation, letterbox). Calibrate with the "
    "shared pre-processing (`pillsnap quantize` does) on images of the deployed kind, then re-run "
    "the gate.",
    "int8_layer": "Calibration matches the inputs, yet INT8 differs beyond the int8 gates: some "
    "layers lose too much at 8 bits. Run `pillsnap quantize` (per-layer SQNR and the exclusion "
    "loop keep the worst layer groups float), try another recipe (quantize.recipes: per-tensor, "
    "percentile) or reduce_range on CPUs without VNNI.",
}


def is_int8(onnx_path: str | Path) -> bool:
    """True for a QDQ model: pillsnap metadata says int8, or the graph quantizes tensors."""
    import onnx

    from pillsnap.models.common import META_PRECISION

    model = onnx.load(str(onnx_path), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get(META_PRECISION) == "int8":
        return True
    return any(n.op_type == "QuantizeLinear" for n in model.graph.node)


def float_sibling(int8_path: str | Path) -> Path | None:
    """The float32 ONNX an INT8 file was quantized from, when it lies beside it."""
    from pillsnap.models.common import META_INT8_SOURCE, read_onnx_metadata

    path = Path(int8_path)
    names = [read_onnx_metadata(path).get(META_INT8_SOURCE, "")]
    if path.name.endswith(INT8_SUFFIX):
        names.append(path.name[: -len(INT8_SUFFIX)] + ".onnx")
    for name in names:
        candidate = path.parent / name if name else None
        usable = candidate and candidate.is_file() and candidate.resolve() != path.resolve()
        if usable and not is_int8(candidate):
            return candidate
    return None


def float_references(
    cfg: Config, models: dict[str, ExportResult], workdir: str | Path | None = None
) -> dict[str, Path]:
    """Per model, the float32 ONNX to compare its INT8 file with (sibling, else a fresh export)."""
    from pillsnap.models.export import export_onnx

    refs: dict[str, Path] = {}
    for task, res in models.items():
        if not is_int8(res.onnx_path):
            raise UserInputError(
                f"compare.precision=int8 but {res.onnx_path} is not an INT8 (QDQ) model; pass the "
                f"`*.int8.onnx` file, or compare float32 files with compare.precision=fp32"
            )
        sibling = float_sibling(res.onnx_path)
        if sibling is None:
            folder = Path(workdir or tempfile.mkdtemp(prefix="pillsnap-int8-reference-"))
            log.info(
                "%s: no float32 sibling; exporting the %s checkpoint as the reference into %s",
                res.onnx_path,
                task,
                folder,
            )
            sibling, _ = export_onnx(cfg, cfg.checkpoint_path(task), folder, task, res.tag or None)  # type: ignore[arg-type]
        refs[task] = sibling
    return refs


def input_range(onnx_path: str | Path) -> tuple[float, float] | None:
    """The real-valued range the QuantizeLinear fed by the graph input can represent."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    inits = {i.name: i for i in model.graph.initializer}
    consts = {n.output[0]: n.attribute[0].t for n in model.graph.node if n.op_type == "Constant"}
    feed = next((i.name for i in model.graph.input if i.name not in inits), None)
    node = next(
        (n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == feed),
        None,
    )
    if node is None or len(node.input) < 2:
        return None

    def value(name: str) -> np.ndarray | None:
        tensor = inits.get(name) or consts.get(name)
        return None if tensor is None else numpy_helper.to_array(tensor)

    scale = value(node.input[1])
    zero = value(node.input[2]) if len(node.input) > 2 else np.zeros((), np.uint8)
    if scale is None or zero is None:
        return None
    info = np.iinfo(zero.dtype)
    s, z = float(np.ravel(scale)[0]), float(np.ravel(zero)[0])
    return (info.min - z) * s, (info.max - z) * s


def rank_int8_causes(task: str, onnx_path: str | Path, inputs: np.ndarray) -> list[dict[str, Any]]:
    """Causes of a failed int8 gate from the model's input range and real inputs, best first."""
    rng = input_range(onnx_path)
    x = np.asarray(inputs, np.float64)
    if rng is None or not x.size:
        return [_cause(task, "int8_layer", 0.5, "the input quantizer's range could not be read")]
    lo, hi = rng
    clipped = float(((x < lo - 1e-6) | (x > hi + 1e-6)).mean())
    span_in, span_q = float(x.max() - x.min()), hi - lo
    text = (
        f"the INT8 input quantizer covers [{lo:.3g}, {hi:.3g}], the pre-processed inputs span "
        f"[{x.min():.3g}, {x.max():.3g}]: {clipped:.1%} of input values are clipped"
    )
    if clipped > CLIPPED_SHARE or span_q < NARROW_RANGE * span_in:
        return [_cause(task, "calibration", 0.9, text + " (calibration data unlike these inputs)")]
    if span_q > 4 * span_in:
        return [
            _cause(
                task,
                "calibration",
                0.7,
                text + f"; its range is {span_q / max(span_in, 1e-12):.1f}x wider than the inputs "
                "(calibrated on other data: 8-bit steps too coarse)",
            )
        ]
    return [_cause(task, "int8_layer", 0.6, text + " (calibration covers the inputs)")]


def _cause(task: str, name: str, score: float, evidence: str) -> dict[str, Any]:
    return {
        "model": task,
        "cause": name,
        "title": TITLES[name],
        "score": score,
        "evidence": evidence,
        "advice": ADVICE[name],
    }
