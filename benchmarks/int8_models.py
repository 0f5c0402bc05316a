"""INT8 models for the benchmark's tests and measurements, made like a quantized release's.

Uses the product's recipe functions (``pillsnap/quantize/``) without the quantize stage's
gate and exclusion search: ``preprocess_model`` (ONNX Runtime's pre-processing), the known
exclusions of ``quantize`` (``known_exclusions``: shape arithmetic; the detector's decode --
DFL softmax, box arithmetic, final Sigmoid and the concat of pixel boxes with 0-1 scores,
where one shared scale would erase the scores), then ``quantize_model`` with the
``minmax_pc_u8`` preset: QDQ, per-channel weights, U8 activations (U8S8: the faster kernels
on this project's CPU), MinMax, ``reduce_range`` from this CPU's flags. Calibration is
in-memory inputs (real preprocessed val inputs for the fixture, seeded random ones for the
production-size models) fed through ``CalibrationReader.from_arrays``. The result is written
next to the float32 file as ``<task>-<tag>.int8.onnx``, the release naming, so
``pillsnap.bench`` finds it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pillsnap.config import Config


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


def quantize_int8(
    fp32: Path,
    data: np.ndarray,
    task: str,
    out: Path | None = None,
    cfg: Config | None = None,
) -> Path:
    """Static QDQ U8S8 per-channel MinMax INT8 of ``fp32`` (``<task>-<tag>.int8.onnx`` beside it).

    The product's pre-processing, known exclusions (from ``cfg.quantize``; defaults when
    ``cfg`` is None) and ``quantize_model`` with the ``minmax_pc_u8`` preset; no gate, no
    search. ``data`` is ``[N,3,H,W]`` float32 inputs, already through the one preprocessing.
    """
    import onnx

    from pillsnap.config import Config
    from pillsnap.config.quantize import RECIPE_PRESETS
    from pillsnap.quantize.calibrate import CalibrationReader
    from pillsnap.quantize.exclusions import known_exclusions
    from pillsnap.quantize.recipes import cpu_record, preprocess_model, quantize_model

    cfg = cfg or Config()
    fp32 = Path(fp32).resolve()
    out = Path(out or fp32.with_name(fp32.name.removesuffix(".onnx") + ".int8.onnx")).resolve()
    with tempfile.TemporaryDirectory(prefix="pillsnap-bench-int8-") as tmp:
        pre = preprocess_model(fp32, Path(tmp) / f"{task}.pre.onnx")
        model = onnx.load(str(pre), load_external_data=False)
        excluded = [e.node for e in known_exclusions(cfg, task, model)]
        reader = CalibrationReader.from_arrays(
            data, model.graph.input[0].name, cfg.quantize.calibration_batch_size
        )
        quantize_model(
            pre,
            out,
            RECIPE_PRESETS["minmax_pc_u8"],
            cpu_record(),
            reader,
            Path(tmp) / f"{task}-calibration.json",
            excluded,
        )
    return out
