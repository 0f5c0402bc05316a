"""``quantize_release``: the quantization stage of a release, the one call behind the notebook and CLI.

Reads top to bottom: find the release's float32 ONNX files -> per model: calibration
set, recipes, exclusion loop (``search.ModelQuantizer``) -> the INT8 files into the
release -> the final int8 gate with both models (end-to-end edi_code agreement
included) -> ``quantization.json``, the ``quantization`` section of each model in
``export_report.json`` -> the verdict.

A model that cannot pass fails the stage like a failed equivalence gate
(``failed: true`` and the reason in both records; the notebook raises, the release
goes to ``.failed``); with ``quantize.required: false`` the release ships without
INT8 files and the records say so. The INT8 files are written into the release only
once they passed; a failed final gate removes them again.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pillsnap.exceptions import MissingPathError, UserInputError

if TYPE_CHECKING:
    from pillsnap.config import Config
    from pillsnap.quantize.calibrate import Loader
    from pillsnap.quantize.gate import GateResult
    from pillsnap.quantize.search import ModelOutcome

log = logging.getLogger(__name__)
RECORD_NAME = "quantization.json"
FOLDER = "quantization"
REPORT_NAME = "export_report.json"
RECORD_FORMAT = "pillsnap-quantization-v1"


def int8_name(task: str, tag: str) -> str:
    """``detection-<tag>.int8.onnx`` / ``classification-<tag>.int8.onnx``."""
    return f"{task}-{tag}.int8.onnx"


@dataclass
class QuantizationResult:
    """What the stage measured and decided; ``record`` is exactly ``quantization.json``."""

    release_dir: Path
    tag: str
    outcomes: dict[str, ModelOutcome]
    final: GateResult | None
    shipped: dict[str, Path]
    failed: bool
    reason: str | None
    required: bool
    record: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def summary_line(self) -> str:
        if not self.failed:
            speeds = ", ".join(f"{t} {o.speed['speedup']:.2f}x" for t, o in self.outcomes.items())
            return f"INT8 passed ({speeds} float32): {', '.join(p.name for p in self.shipped.values())}"
        what = "release ships without INT8" if not self.required else "stage FAILED"
        return f"INT8 failed ({what}): {self.reason}"


def find_float_models(folder: Path, tag: str, tasks: list[str]) -> dict[str, Path]:
    """The release's float32 ONNX file of each task (``<task>-<tag>.onnx``, else the only one)."""
    found: dict[str, Path] = {}
    for task in tasks:
        exact = folder / f"{task}-{tag}.onnx"
        if tag and exact.is_file():
            found[task] = exact
            continue
        candidates = sorted(
            p
            for p in folder.glob(f"{task}-*.onnx")
            if not p.is_symlink() and not p.name.endswith(".int8.onnx")
        )
        if len(candidates) != 1:
            raise MissingPathError(
                f"no float32 {task} ONNX to quantize in {folder} (looked for {exact.name}"
                + (f"; found {', '.join(p.name for p in candidates)}" if candidates else "")
                + "): run the export stage first, or `pillsnap quantize` without --out-dir"
            )
        found[task] = candidates[0]
    return found


def quantize_release(
    cfg: Config,
    release_dir: str | Path,
    tag: str = "",
    *,
    loaders: dict[str, Loader] | None = None,
) -> QuantizationResult:
    """Quantize the release's float32 models, gate them, write the INT8 files and records.

    ``loaders`` replaces the shared pre-processing of the calibration images (tests:
    a deliberately wrong calibration); never set in a release.
    """
    from pillsnap.quantize.calibrate import calibration_set
    from pillsnap.quantize.recipes import cpu_record
    from pillsnap.quantize.search import ModelQuantizer

    started = time.perf_counter()
    folder = Path(release_dir)
    if (folder / "manifest.json").is_file():
        raise UserInputError(
            f"{folder} is a finished release (it has manifest.json): quantizing into it would break "
            "its record; run `pillsnap quantize --config C` (new folder) or a new release"
        )
    tasks = list(dict.fromkeys(cfg.quantize.models))
    floats = find_float_models(folder, tag, tasks)
    tag = tag or _tag_of(floats)
    cpu = cpu_record()
    log.info(
        "quantizing %s on %s (INT8 class %s)", ", ".join(tasks), cpu["model"], cpu["int8_class"]
    )
    outcomes: dict[str, ModelOutcome] = {}
    with tempfile.TemporaryDirectory(prefix="pillsnap-quantize-") as tmp:
        for task in tasks:
            work = Path(tmp) / task
            work.mkdir()
            calibration = calibration_set(cfg, task)
            quantizer = ModelQuantizer(
                cfg, task, floats[task], work, calibration, cpu, (loaders or {}).get(task)
            )
            outcomes[task] = quantizer.run()
        final, shipped, reason = _ship(cfg, folder, tag, floats, outcomes)
    failed = reason is not None
    result = QuantizationResult(
        folder, tag, outcomes, final, shipped, failed, reason, cfg.quantize.required
    )
    result.seconds = round(time.perf_counter() - started, 1)
    from pillsnap.quantize.records import write_records

    result.record = write_records(cfg, result, cpu)
    log.info("%s (%.0f s)", result.summary_line(), result.seconds)
    return result


def _tag_of(floats: dict[str, Path]) -> str:
    from pillsnap.models.common import META_TAG, read_onnx_metadata

    return next((t for p in floats.values() if (t := read_onnx_metadata(p).get(META_TAG))), "")


def _ship(
    cfg: Config,
    folder: Path,
    tag: str,
    floats: dict[str, Path],
    outcomes: dict[str, ModelOutcome],
) -> tuple[GateResult | None, dict[str, Path], str | None]:
    """Copy passing models into the release, run the final gate (both models), undo on failure."""
    from pillsnap.equivalence.store import save_details
    from pillsnap.quantize.gate import evaluate

    failed = {t: o for t, o in outcomes.items() if not o.passed}
    if failed:
        return None, {}, "; ".join(f"{t}: {o.reason}" for t, o in failed.items())
    shipped: dict[str, Path] = {}
    for task, outcome in outcomes.items():
        assert outcome.int8_path is not None  # a passed outcome has its model
        shipped[task] = folder / int8_name(task, tag)
        shutil.copyfile(outcome.int8_path, shipped[task])
    reserved = frozenset().union(*(o.calibration.reserved for o in outcomes.values()))
    final = evaluate(cfg, shipped, floats, reserved, out_dir=folder / FOLDER)
    save_details(final.result, folder / FOLDER)
    if final.passed:
        return final, shipped, None
    for path in shipped.values():
        path.unlink()
    return final, {}, "final int8 gate with both models: " + final.summary()


def read_record(release_dir: str | Path) -> dict[str, Any] | None:
    """A release's ``quantization.json``, or None when it has none."""
    path = Path(release_dir) / RECORD_NAME
    return json.loads(path.read_text()) if path.is_file() else None


def ensure_float_models(cfg: Config, folder: Path, tag: str) -> dict[str, Path]:
    """The folder's float32 models; exported from the configured checkpoints when it has none."""
    tasks = list(dict.fromkeys(cfg.quantize.models))
    try:
        return find_float_models(folder, tag, tasks)
    except MissingPathError:
        from pillsnap.models.export import export_models

        log.info("no float32 ONNX in %s: exporting both models first", folder)
        exports = export_models(cfg, folder, tag or None)
        return {t: Path(exports[t].onnx_path) for t in tasks}
