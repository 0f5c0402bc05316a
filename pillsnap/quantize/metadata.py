"""What an INT8 model says about itself in ONNX ``metadata_props``.

Everything of its float32 source is kept (pre-processing, letterbox size, class-map
digest, version tag), so every consumer feeds it exactly as the float model; added
are the recipe as applied, the nodes kept float with their reasons, the calibration
list's digest, the source's file name and sha256, and the CPU class and flags the
gate ran on (``pillsnap infer`` and the server warn when they run it on another class).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pillsnap.quantize.calibrate import CalibrationSet
    from pillsnap.quantize.exclusions import Exclusion


def int8_metadata(
    float_path: str | Path,
    recipe: dict[str, Any],
    excluded: list[Exclusion],
    calibration: CalibrationSet,
    cpu: dict[str, Any],
    gate: str = "gated",
) -> dict[str, str]:
    """The float32 model's metadata plus the INT8 keys of ``pillsnap.models.common``."""
    from pillsnap.fileio import sha256_file
    from pillsnap.models import common
    from pillsnap.quantize.recipes import flags_text

    meta = common.read_onnx_metadata(float_path)
    meta.update(
        {
            common.META_PRECISION: "int8",
            common.META_INT8_SOURCE: Path(float_path).name,
            common.META_INT8_SOURCE_SHA256: sha256_file(float_path),
            common.META_INT8_RECIPE: json.dumps(recipe, sort_keys=True),
            common.META_INT8_EXCLUDED: json.dumps(
                [{"node": e.node, "reason": e.kind} for e in excluded]
            ),
            common.META_INT8_CALIBRATION: calibration.sha256,
            common.META_INT8_CPU_CLASS: cpu["int8_class"],
            common.META_INT8_CPU_FLAGS: flags_text(cpu),
            common.META_INT8_GATE: gate,
        }
    )
    return meta


def cpu_class_warning(metadata: dict[str, str], what: str) -> str | None:
    """A warning when an INT8 model gated on another CPU class (VNNI vs not) runs here."""
    from pillsnap.environment import cpu_info
    from pillsnap.models.common import META_INT8_CPU_CLASS, META_PRECISION

    if metadata.get(META_PRECISION) != "int8":
        return None
    made_on, here = metadata.get(META_INT8_CPU_CLASS), cpu_info()["int8_class"]
    if not made_on or made_on == here:
        return None
    return (
        f"{what} was quantized and gated on a {made_on!r} CPU, this one is {here!r}: ONNX Runtime's "
        "INT8 kernels differ between them (saturation without VNNI), so its accuracy here was not "
        "measured; re-run `pillsnap quantize` on this machine to gate it here"
    )
