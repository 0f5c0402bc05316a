"""Recipes applied: ``quant_pre_process`` once, then ``quantize_static`` in QDQ format.

One function turns a typed ``Recipe`` (``pillsnap.config.quantize``) plus this CPU
into ONNX Runtime's arguments (``ort_arguments``), one runs it (``quantize_model``).
ONNX Runtime's guidance on ``reduce_range`` is applied from the CPU's flags: U8S8
kernels on AVX2 / AVX-512 without VNNI accumulate pairs of products in 16 bits and
can saturate, so 7-bit weights are used there; with VNNI (``vpdpbusd``) they are not
needed. The flags the decision came from are recorded with the result.

Calibration is the slow part (every activation of every calibration image); its
ranges are computed once per calibration method and kept in a JSON cache
(``calibration_cache_path``), so the other recipes and every step of the exclusion
loop only re-quantize.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pillsnap.exceptions import DataError

if TYPE_CHECKING:
    from pillsnap.config.quantize import Recipe
    from pillsnap.quantize.calibrate import CalibrationReader

log = logging.getLogger(__name__)
NO_VNNI_CLASSES = ("avx2", "avx512")
"""``cpu_info()["int8_class"]`` values whose U8S8 kernels can saturate (reduce_range helps)."""


def cpu_record() -> dict[str, Any]:
    """The CPU the quantization and its gate run on (model, flags, INT8 class)."""
    from pillsnap.environment import cpu_info

    info = cpu_info()
    return {
        "model": info["model"],
        "machine": info["machine"],
        "cores": info["cores"],
        "int8_class": info["int8_class"],
        "flags": {k: bool(v) for k, v in info["flags"].items()},
    }


def flags_text(cpu: dict[str, Any]) -> str:
    """``avx2,avx512f,avx512_vnni`` (the INT8-relevant flags this CPU has)."""
    return ",".join(k for k, v in cpu["flags"].items() if v) or "none"


def reduce_range_for(recipe: Recipe, cpu: dict[str, Any]) -> bool:
    """The recipe's ``reduce_range``, or ONNX Runtime's guidance for this CPU when it is None."""
    if recipe.reduce_range is not None:
        return recipe.reduce_range
    return cpu["int8_class"] in NO_VNNI_CLASSES


def applied(recipe: Recipe, cpu: dict[str, Any]) -> dict[str, Any]:
    """The recipe as applied on this CPU (what the record and the model metadata keep)."""
    data = recipe.model_dump(mode="json")
    data["reduce_range"] = reduce_range_for(recipe, cpu)
    data["reduce_range_source"] = "recipe" if recipe.reduce_range is not None else "cpu flags"
    if recipe.calibration != "percentile":
        data.pop("percentile", None)
    if recipe.calibration != "minmax":
        data.pop("moving_average", None)
    return data


def calibration_key(recipe: Recipe) -> str:
    """Recipes with the same key share one calibration (ranges depend only on these)."""
    if recipe.calibration == "percentile":
        return f"percentile-{recipe.percentile:g}"
    if recipe.calibration == "minmax" and recipe.moving_average:
        return "minmax-average"
    return recipe.calibration


def ort_arguments(recipe: Recipe, cpu: dict[str, Any]) -> dict[str, Any]:
    """``quantize_static`` keyword arguments for ``recipe`` on this CPU."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[recipe.calibration]
    extra: dict[str, Any] = {}
    symmetric = recipe.activations == "s8_sym"
    if symmetric:
        extra["ActivationSymmetric"] = True
    if recipe.calibration == "percentile":
        extra["CalibPercentile"] = recipe.percentile
        # Percentile ranges are symmetric around 0 by default: wasteful for U8 (post-SiLU) tensors.
        extra["CalibTensorRangeSymmetric"] = symmetric
    # Not CalibMaxIntermediateOutputs: ORT 1.32's MinMax calibrator drops the collected
    # ranges when that count is reached (clear without compute) and then finds no data.
    return {
        "quant_format": QuantFormat.QDQ,
        "calibrate_method": method,
        "per_channel": recipe.per_channel,
        "reduce_range": reduce_range_for(recipe, cpu),
        "activation_type": QuantType.QInt8 if symmetric else QuantType.QUInt8,
        "weight_type": QuantType.QInt8,
        "extra_options": extra,
    }


@contextlib.contextmanager
def quiet_ort_quantization() -> Iterator[None]:
    """ONNX Runtime's quantization tools log through the root logger and print progress."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def preprocess_model(float_path: str | Path, out_path: str | Path) -> Path:
    """``quant_pre_process`` (graph optimisation, ONNX shape inference) once per model.

    Symbolic shape inference is skipped: it costs seconds on YOLO's head and changed
    nothing measured (same tensors quantized, same accuracy on both fixture models).
    """
    from onnxruntime.quantization import quant_pre_process

    with quiet_ort_quantization():
        quant_pre_process(str(float_path), str(out_path), skip_symbolic_shape=True)
    return Path(out_path)


CHUNK_BATCHES = 4
"""Calibration batches per ``collect_data`` call: the histogram calibrators keep every
activation of what they are given until they bin it, so feeding them in chunks bounds
memory at production sizes (MinMax merges its ranges across calls the same way)."""


class _Chunk:
    """At most ``size`` batches of a reader, then None (one ``collect_data`` call)."""

    def __init__(self, reader: CalibrationReader, size: int):
        self.reader, self.left = reader, size
        self.first = reader.get_next()

    def get_next(self) -> dict[str, Any] | None:
        if self.first is not None:
            first, self.first = self.first, None
            self.left -= 1
            return first
        if self.left <= 0:
            return None
        self.left -= 1
        return self.reader.get_next()


def calibrate(
    pre_path: str | Path, recipe: Recipe, reader: CalibrationReader, cache_path: str | Path
) -> Path:
    """Activation ranges of ``recipe``'s method over every calibration image -> the JSON cache."""
    import tempfile

    from onnxruntime.quantization import create_calibrator
    from onnxruntime.quantization.calibrate import save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    args = ort_arguments(recipe, {"int8_class": "vnni"})
    extra = args["extra_options"]
    options: dict[str, Any] = {}
    if "CalibPercentile" in extra:
        options["percentile"] = extra["CalibPercentile"]
    if "CalibTensorRangeSymmetric" in extra:
        options["symmetric"] = extra["CalibTensorRangeSymmetric"]
    if recipe.calibration == "minmax" and recipe.moving_average:
        options["moving_average"] = True
    if recipe.calibration == "entropy":
        # quantize_static cannot pass these: with its 128/128 bins Entropy *is* MinMax.
        options.update(num_bins=512, num_quantized_bins=128)
    reader.rewind()
    with tempfile.TemporaryDirectory(prefix="pillsnap-calibrate-") as tmp, quiet_ort_quantization():
        calibrator = create_calibrator(
            Path(pre_path),
            sorted(set(QLinearOpsRegistry) | set(QDQRegistry)),
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=args["calibrate_method"],
            extra_options=options,
        )
        collected = False
        while (chunk := _Chunk(reader, CHUNK_BATCHES)).first is not None:
            calibrator.collect_data(chunk)
            collected = True
        if not collected:
            raise DataError(
                f"no calibration image could be read ({len(reader.paths)} listed): "
                + "; ".join(reader.skipped[:3])
            )
        save_tensors_data(calibrator.compute_data(), str(cache_path))
        del calibrator
    return Path(cache_path)


def quantize_model(
    pre_path: str | Path,
    out_path: str | Path,
    recipe: Recipe,
    cpu: dict[str, Any],
    reader: CalibrationReader,
    cache_path: str | Path,
    nodes_to_exclude: list[str],
) -> Path:
    """Quantize ``pre_path`` into ``out_path``; calibrates only when ``cache_path`` is absent."""
    from onnxruntime.quantization import quantize_static

    cache = Path(cache_path)
    if not cache.is_file():
        calibrate(pre_path, recipe, reader, cache)
    with quiet_ort_quantization():
        quantize_static(
            str(pre_path),
            str(out_path),
            None,
            nodes_to_exclude=sorted(set(nodes_to_exclude)),
            calibration_cache_path=str(cache),
            **ort_arguments(recipe, cpu),
        )
    return Path(out_path)
