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
from pillsnap.names import model_file_name

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
    return model_file_name(task, tag, int8=True)


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
        exact = folder / model_file_name(task, tag)
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
    with tempfile.TemporaryDirectory(prefix="pillsnap-quantize-") as tmp:
        quantizers = {}
        for task in tasks:
            work = Path(tmp) / task
            work.mkdir()
            quantizers[task] = ModelQuantizer(
                cfg,
                task,
                floats[task],
                work,
                calibration_set(cfg, task),
                cpu,
                (loaders or {}).get(task),
            )
        run = _Run(cfg, folder, tag, floats, quantizers, Path(tmp))
        final = run.search()
        outcomes = {t: q.outcome() for t, q in quantizers.items()}
        shipped, reason = run.ship(final, outcomes)
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


class _Run:
    """The release-level search: recipes gated jointly, per-model loops, the end-to-end loop.

    Every gate run sees the INT8 files at their release names (``<task>-<tag>.int8.onnx``),
    so the final gate's report names the very files that ship; its folder becomes the
    release's ``quantization/``. Recipe ``i`` of every model is gated in one run (both
    models, the end-to-end agreement included); a recipe pair that passes everything
    and is fast enough is taken as it is. Otherwise each model stands at its best recipe
    and runs its own exclusion loop, then the pair is gated again; when only the
    end-to-end agreement fails, the classifier (then the detector) runs the loop with
    the other INT8 model fixed and the end-to-end check counted.
    """

    def __init__(
        self,
        cfg: Config,
        folder: Path,
        tag: str,
        floats: dict[str, Path],
        quantizers: dict[str, Any],
        tmp: Path,
    ):
        self.cfg, self.folder, self.tag, self.floats = cfg, folder, tag, floats
        self.quantizers, self.tmp = quantizers, tmp
        self.reserved = frozenset().union(*(q.calibration.reserved for q in quantizers.values()))
        for q in quantizers.values():
            q.exclude = self.reserved  # a gate never sees any model's calibration images
        self.placed: dict[str, Path] = {}
        self.final_dir: Path | None = None

    def place(self, files: dict[str, Path]) -> dict[str, Path]:
        """Copy candidates to their release names (what the gate then reads)."""
        out = {}
        for task, path in files.items():
            out[task] = self.folder / int8_name(task, self.tag)
            if self.placed.get(task) != path:
                shutil.copyfile(path, out[task])
                self.placed[task] = path
        return out

    def gate(self, files: dict[str, Path], name: str) -> GateResult:
        from pillsnap.quantize.gate import evaluate

        out = self.tmp / "gates" / name
        result = evaluate(self.cfg, self.place(files), self.floats, self.reserved, out_dir=out)
        self.final_dir = out
        return result

    def current_files(self) -> dict[str, Path]:
        return {t: q.current[1] for t, q in self.quantizers.items()}

    def fast(self, name: str) -> bool:
        from pillsnap.quantize.gate import fast_enough

        q = self.cfg.quantize
        return all(
            fast_enough(qz.candidates[name][3], q.min_speedup) for qz in self.quantizers.values()
        )

    def search(self) -> GateResult | None:
        joint: dict[str, GateResult] = {}
        for recipe in self.cfg.quantize.recipes:
            built = {t: q.build(recipe, []) for t, q in self.quantizers.items()}
            result = self.gate({t: b[0] for t, b in built.items()}, recipe.name)
            for task, q in self.quantizers.items():
                q.try_recipe(recipe, built[task], result.view(task))
            joint[recipe.name] = result
        passing = [n for n, r in joint.items() if r.passed and self.fast(n)]
        if passing:
            name = min(
                passing,
                key=lambda n: sum(
                    q._accuracy_key(q.candidates[n][2]) for q in self.quantizers.values()
                ),
            )
            for q in self.quantizers.values():
                q.choose(name)
            self.place(self.current_files())
            self.final_dir = self.tmp / "gates" / name
            return joint[name]
        for q in self.quantizers.values():
            q.choose()
            q.improve()
        if not all(q.current[3].passed for q in self.quantizers.values()):
            return None
        final = self.gate(self.current_files(), "final")
        for task in ("classification", "detection"):
            others = {t: c for t, c in self.current_files().items() if t != task}
            if final.passed or task not in self.quantizers or not others:
                continue
            if any(not c.passed for c in final.checks if not c.name.startswith("end_to_end")):
                break  # a model's own gate failed in the joint run: not an end-to-end problem
            log.info("end-to-end agreement fails: the %s loop runs with it counted", task)
            q = self.quantizers[task]
            q.partner = {t: (p, self.floats[t]) for t, p in others.items()}
            q.scope = (task, "end_to_end")
            recipe, path, excluded, _, speed = q.current
            q.current = (recipe, path, excluded, final.view(task, "end_to_end"), speed)
            if q.improve():
                final = self.gate(self.current_files(), f"final-{task}")
        return final

    def ship(
        self, final: GateResult | None, outcomes: dict[str, ModelOutcome]
    ) -> tuple[dict[str, Path], str | None]:
        """Keep the INT8 files and the final gate's record, or remove the files again."""
        from pillsnap.equivalence.store import save_details

        failed = {t: o for t, o in outcomes.items() if not o.passed}
        reason = "; ".join(f"{t}: {o.reason}" for t, o in failed.items()) or None
        if reason is None and (final is None or not final.passed):
            reason = "final int8 gate with every model: " + (
                final.summary() if final else "not run"
            )
        if final is not None and self.final_dir is not None:
            target = self.folder / FOLDER
            shutil.copytree(self.final_dir, target, dirs_exist_ok=True)
            save_details(final.result, target)
        shipped = {t: self.folder / int8_name(t, self.tag) for t in self.placed}
        if reason is not None:
            for path in shipped.values():
                path.unlink(missing_ok=True)
            return {}, reason
        return shipped, None


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
