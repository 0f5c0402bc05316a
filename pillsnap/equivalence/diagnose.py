"""Likely causes of a failed comparison, ranked by the evidence measured.

Each cause gets a score in [0, 1] from the probes (``probes.py``) and the parity
metrics, an evidence sentence with the numbers behind it, and the advice of spec
E-11. Rules, in words:

* the ONNX graph permutes colour channels before its first convolution
  -> channel order;
* it rescales / shifts them -> normalisation (with the effective mean/std);
* it transforms them otherwise -> preprocessing inside the graph;
* a sample's output depends on its batch -> eval mode / dynamic axes;
* identical input reaches the first convolution yet outputs differ broadly
  (large logit / raw-head differences, decisions flip at large margins)
  -> conversion (weights or an operator);
* differences at float precision that flip only near-tie samples -> numeric precision;
* raw head outputs agree but detections differ -> post-processing.

With the per-layer localisation (``divergence.py``), where the error appears decides:

* it jumps at the first convolution -> pre-processing: the channel order /
  normalisation found by the input-stage probe, or, when the tensor reaching that
  convolution is identical in both engines, pre-processing folded into its weights;
* it jumps at one interior layer -> that layer's conversion (named);
* it only accumulates along depth -> numeric precision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

BROAD_REL_LOGIT = 1e-2
"""Relative logit difference above which a difference is "broad", not rounding."""
NEAR_TIE_MARGIN = 0.05
TINY_RAW_BOX_PX = 0.05
TINY_RAW_SCORE = 1e-3
BATCH_DEPENDENT_REL = 1e-3

ADVICE = {
    "channel_order": "Both engines receive RGB from pillsnap.preprocess; the ONNX graph reorders the colour channels "
    "before its first convolution. Re-export from the checkpoint without a BGR/RGB wrapper and check "
    "preprocess.channel_order in the ONNX metadata.",
    "normalisation": "The ONNX graph rescales its input before the first convolution, so normalisation happens twice "
    "or with other constants. Check pre-processing (classifier: classification.preprocessing.mean/std; "
    "detector: letterboxed RGB scaled to [0, 1], not 0-255) and remove in-graph normalisation, "
    "then re-export.",
    "graph_preprocessing": "The ONNX graph transforms its input (resize, crop, colour conversion) before the first "
    "convolution. Pre-processing belongs to pillsnap.preprocess only: re-export the bare model.",
    "batch_dependence": "A sample's output changes with the other samples of its batch: the model was exported in "
    "training mode (BatchNorm) or with wrong dynamic axes. Export after model.eval().float() and "
    "check export.dynamic / dynamic_axes.",
    "conversion": "The same input reaches the first convolution in both engines, yet the outputs differ: the graph "
    "computes something else (weights or an operator converted differently). Check that the ONNX was "
    "exported from this checkpoint (sha256 in the report) in eval mode and float32, re-export; if an "
    "operator is suspected keep opset 17, try export.opset=18 and upgrade onnxruntime.",
    "numeric_precision": "Differences are at floating-point precision and flip only near-tie samples. Expected for "
    "fp16 engines (run with compare.precision=fp16 for the relaxed gates); for fp32 check that no "
    "fp16/TF32 provider setting is on (runtime.tensorrt.fp16, runtime.torch_fp16).",
    "postprocessing": "Raw head outputs agree but the detections differ: post-processing differs. Both paths must use "
    "pillsnap.postprocess.decode_and_nms with the same thresholds (export with nms=False).",
    "first_layer_preprocessing": "The same input reaches the first convolution in both engines, yet its output differs: "
    "the exported first layer computes something else, most often normalisation or channel order folded into its "
    "weights by a conversion tool. Export the bare checkpoint with pillsnap (pre-processing belongs to "
    "pillsnap.preprocess only); if the first layer was changed on purpose, set classification.preprocessing to match.",
}
TITLES = {
    "channel_order": "channel order (RGB/BGR)",
    "normalisation": "normalisation (mean/std, input scale)",
    "graph_preprocessing": "pre-processing inside the ONNX graph",
    "batch_dependence": "eval mode / dynamic axes",
    "conversion": "conversion difference (weights or an operator)",
    "numeric_precision": "numeric precision",
    "postprocessing": "post-processing",
    "first_layer_preprocessing": "pre-processing folded into the first convolution",
}


@dataclass
class Evidence:
    model: str
    metrics: dict[str, float]
    precision: str = "fp32"
    input_stage: dict[str, Any] | None = None
    batch_consistency: dict[str, float] = field(default_factory=dict)
    logit_fit: dict[str, float] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    divergence: Any = None
    """``divergence.Divergence`` of this model, when it was localised layer by layer."""


def _stage_sentence(stage: dict[str, Any], ev: Evidence) -> str:
    perm, scale, shift = stage.get("permutation"), stage.get("scale"), stage.get("shift")
    text = "before its first convolution the ONNX graph"
    if stage["kind"] in ("channel_permutation", "permutation_affine"):
        text += f" feeds input channels {perm} as channels {list(range(len(perm)))}"
    if stage["kind"] in ("affine", "permutation_affine"):
        text += f" computes x * {[round(a, 4) for a in scale]} + {[round(b, 4) for b in shift]} per channel"
        if ev.mean and ev.std and all(abs(a) > 1e-9 for a in scale):
            # a * (p - m) / s + b  ==  (p - m') / s'  with  s' = s / a  and  m' = m - b * s'
            eff_std = [s / a for s, a in zip(ev.std, scale)]
            eff_mean = [m - b * s2 for m, b, s2 in zip(ev.mean, shift, eff_std)]
            text += (
                f", i.e. effective mean {[round(v, 4) for v in eff_mean]} / std {[round(v, 4) for v in eff_std]} "
                f"instead of the config's mean {list(ev.mean)} / std {list(ev.std)}"
            )
    return text


def _broadness(ev: Evidence) -> tuple[bool, str]:
    """Is the difference well above rounding? Returns the verdict and the numbers behind it."""
    m = ev.metrics
    if ev.model == "classification":
        rel = m.get("rel_logit_diff_p99", 0.0)
        margin = m.get("mismatch_margin_median", float("nan"))
        broad = rel > BROAD_REL_LOGIT or (
            m.get("top1_mismatch_count", 0) > 0
            and not math.isnan(margin)
            and margin > NEAR_TIE_MARGIN
        )
        text = f"relative logit difference p99 {rel:.2e}, {int(m.get('top1_mismatch_count', 0))} top-1 mismatches"
        if not math.isnan(margin):
            text += f" at median Torch margin {margin:.3f}"
        return broad, text
    box, score = m.get("raw_box_max_abs_diff", 0.0), m.get("raw_score_max_abs_diff", 0.0)
    broad = box > TINY_RAW_BOX_PX or score > TINY_RAW_SCORE
    return broad, f"raw head max |diff| {box:.3g} px (boxes), {score:.3g} (scores)"


def rank_causes(ev: Evidence) -> list[dict[str, Any]]:
    """Causes with score > 0, best first: ``{model, cause, title, score, evidence, advice}``."""
    scores: dict[str, tuple[float, str]] = {}
    stage = ev.input_stage or {"kind": "unavailable"}
    kind = stage.get("kind")
    if kind in ("channel_permutation", "permutation_affine"):
        scores["channel_order"] = (0.95, _stage_sentence(stage, ev))
    if kind in ("affine", "permutation_affine"):
        scores["normalisation"] = (0.9 if kind == "affine" else 0.6, _stage_sentence(stage, ev))
    if kind == "other":
        detail = (
            stage.get("detail")
            or f"no per-channel scale/shift explains it (residual {stage.get('residual', 0):.2g})"
        )
        scores["graph_preprocessing"] = (
            0.5,
            f"the ONNX graph changes its input before the first convolution: {detail}",
        )
    worst_batch = max(ev.batch_consistency.values(), default=0.0)
    if worst_batch > BATCH_DEPENDENT_REL:
        who = ", ".join(f"{k} {v:.2e}" for k, v in ev.batch_consistency.items())
        scores["batch_dependence"] = (
            0.85,
            f"relative output change between batched and single runs: {who}",
        )
    broad, numbers = _broadness(ev)
    clean_input = kind in ("identity", "unavailable")
    base = 0.8 if kind == "identity" else 0.5
    if clean_input and broad:
        text = numbers + (
            "; the input reaching the first convolution is identical in both engines"
            if kind == "identity"
            else ""
        )
        fit = ev.logit_fit or {}
        slope, resid, spread = (
            fit.get("slope", float("nan")),
            fit.get("residual_rms", float("nan")),
            fit.get("torch_std", 0.0),
        )
        if not math.isnan(slope) and abs(slope - 1) > 1e-3 and resid < abs(slope - 1) * spread:
            text += f"; ONNX logits ~= {slope:.4f} x Torch logits (residual {resid:.2g}): a uniformly scaled last layer"
        scores["conversion"] = (base, text)
    elif clean_input and ev.model == "detection" and not broad:
        scores["postprocessing"] = (0.8, numbers + ", yet the detections differ")
    elif clean_input:
        bonus = 0.1 if ev.precision == "fp16" else 0.0
        scores["numeric_precision"] = (0.6 + bonus, numbers + f"; precision {ev.precision}")
    if ev.divergence is not None:
        _weigh_divergence(scores, ev, kind)
    if not scores:
        scores["conversion"] = (0.3, numbers)
    ranked = sorted(scores.items(), key=lambda kv: -kv[1][0])
    return [
        {
            "model": ev.model,
            "cause": name,
            "title": TITLES[name],
            "score": round(score, 3),
            "evidence": text,
            "advice": ADVICE[name],
        }
        for name, (score, text) in ranked
    ]


def _weigh_divergence(scores: dict[str, tuple[float, str]], ev: Evidence, kind: str | None) -> None:
    """Where the per-layer error appears (see the module doc) raises or lowers the causes.

    ``kind`` is what the input-stage probe found before the first convolution.
    """
    div = ev.divergence
    first, pattern = div.first, div.pattern
    if first is None:
        note = f"every compared layer agrees within relative error {div.tolerance:g}"
        for cause in ("numeric_precision", "postprocessing"):
            if cause in scores:
                score, evidence = scores[cause]
                scores[cause] = (score, f"{evidence}; {note}")
        return
    layer = f"{first.label} ({first.op_type})"
    jump = f"relative error {_g(first.before)} before -> {_g(first.rel_error)} after"
    if pattern == "input":
        first_layer = "first convolution" if first.op_type == "Conv" else "first layer"
        text = f"the first divergent layer is the {first_layer} {layer}: {jump}"
        found = [
            c for c in ("channel_order", "normalisation", "graph_preprocessing") if c in scores
        ]
        for cause in found:
            score, evidence = scores[cause]
            scores[cause] = (max(score, 0.7), f"{evidence}; {text}")
        if not found:
            same = ", although the tensor reaching it is identical in both engines"
            scores["first_layer_preprocessing"] = (
                0.85 if kind == "identity" else 0.6,
                text + (same if kind == "identity" else ""),
            )
            scores["conversion"] = (
                0.5,
                f"or the {first_layer} {layer} was converted differently: {jump}",
            )
    elif pattern == "interior":
        base = scores.get("conversion", (0.0, ""))[1]
        text = f"layer {layer} introduces the difference: {jump} (tolerance {div.tolerance:g})"
        scores["conversion"] = (0.9, text + (f"; {base}" if base else ""))
        if "numeric_precision" in scores:
            score, evidence = scores["numeric_precision"]
            scores["numeric_precision"] = (min(score, 0.4), evidence)
    elif pattern == "accumulating":
        text = (
            f"no single layer introduces the difference: it grows along depth and first exceeds "
            f"{div.tolerance:g} at {layer} ({jump})"
        )
        bonus = 0.1 if ev.precision == "fp16" else 0.0
        scores["numeric_precision"] = (0.85 + bonus, text + f"; precision {ev.precision}")
        if "conversion" in scores:
            score, evidence = scores["conversion"]
            scores["conversion"] = (min(score, 0.5), evidence)


def _g(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3g}"
