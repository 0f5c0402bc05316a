"""Shared by the INT8 tests (``tests/quantize/``): a cheap quantize/gate config, file helpers."""

from __future__ import annotations

import shutil
from pathlib import Path

# Small but honest: a real calibration, the real int8 gates on a coverage sample (3 per
# class, so the worst-class recall drop is measurable), a short speed measurement.
CHEAP = {
    "quantize.models": ["classification"],
    "quantize.recipes": ["minmax_pt_u8"],
    "quantize.calibration_count": 24,
    "quantize.speed_rounds": 3,
    "quantize.search.sensitivity_images": 4,
    "quantize.search.candidates": 2,
    "quantize.gate_mode": "coverage",
    "quantize.gate_per_class_k": 3,
    "compare.min_classes": 40,
    "compare.hard_per_bin": 0,
}


def copy_float(exports: dict, task: str, folder: Path) -> Path:
    """A copy of the session's float32 export of ``task`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    src = Path(exports[task].onnx_path)
    return Path(shutil.copy2(src, folder / src.name))
