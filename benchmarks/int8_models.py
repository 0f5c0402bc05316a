"""INT8 models for the benchmark's tests and measurements, made like a quantized release's.

Not the product's quantization (that is the quantize stage's, in ``pillsnap/quantize/``):
a plain ONNX Runtime static quantization -- its pre-processing, then QDQ, per-channel
weights, U8 activations (U8S8: the faster kernels on this project's CPU), MinMax on real
preprocessed data --
written next to the float32 file as ``<task>-<tag>.int8.onnx``, the release naming, so
``pillsnap.bench`` finds it. The detector's decode (DFL softmax, box arithmetic, the
final concat of pixel boxes with 0-1 scores) stays float: one shared scale for both
would erase the scores.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import numpy as np


def calibration_batch(cfg, task: str, count: int = 16) -> np.ndarray:
    """``count`` real val inputs (crops or letterboxed photos) through the one preprocessing."""
    from pillsnap.classmap import ClassMap
    from pillsnap.preprocess import PreprocessSpec, letterbox_batch, load_image, preprocess
    from pillsnap.sampling.classification import index_classification
    from pillsnap.sampling.detection import index_detection
    from pillsnap.sampling.draw import sample_dataset

    draw = cfg.compare.model_copy(
        update={"mode": "smoke", "sample_count": count, "detection_sample_count": count, "seed": 7}
    )
    if task == "classification":
        index = index_classification(
            cfg.paths.classification_data, ClassMap.load(cfg.paths.class_map_path)
        )
        paths = [it.path for it in sample_dataset(index, draw, task).items]
        return preprocess(paths, PreprocessSpec.from_config(cfg.classification))
    paths = [
        it.path
        for it in sample_dataset(index_detection(cfg.paths.detection_data), draw, task).items
    ]
    return letterbox_batch([load_image(p) for p in paths], cfg.detection.imgsz)[0]


def _pre_process(fp32: Path, out: Path) -> Path:
    """ONNX Runtime's quantization pre-processing (graph optimisation, shapes) -- its recipe.

    Measured on the production classifier (benchmarks/bench_engines.py, 5 rounds): INT8 made
    from the raw export ran at x0.5-0.65 of float32, made from the pre-processed graph at
    x1.8-2.1. The detector's dynamic head defeats symbolic shape inference: ONNX shape
    inference alone then.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(fp32), str(out))
    except Exception:  # noqa: BLE001 - "Incomplete symbolic shape inference" on the YOLO head
        quant_pre_process(str(fp32), str(out), skip_symbolic_shape=True)
    return out


def quantize_int8(fp32: Path, data: np.ndarray, task: str, out: Path | None = None) -> Path:
    """Static QDQ U8S8 per-channel INT8 of ``fp32`` (``<task>-<tag>.int8.onnx`` beside it)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    fp32 = Path(fp32)
    out = (out or fp32.with_name(fp32.name.removesuffix(".onnx") + ".int8.onnx")).resolve()
    # quantize_static leaves scratch files (shape inference, external data) in the cwd
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        source = _pre_process(fp32.resolve(), Path(tmp) / "pre.onnx")
        graph = onnx.load(str(source), load_external_data=False).graph
        name, exclude = graph.input[0].name, []
        if task == "detection":
            head = max(
                (n.name.split("/")[1] for n in graph.node if n.name.startswith("/model.")),
                key=lambda s: int(s.split(".")[1]),
            )
            exclude = [
                n.name
                for n in graph.node
                if n.name.startswith(f"/{head}/") and (n.op_type != "Conv" or "/dfl/" in n.name)
            ]

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.items = iter([{name: x[None]} for x in data])

            def get_next(self) -> dict | None:
                return next(self.items, None)

        quantize_static(
            str(source),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=exclude,
        )
    return out
