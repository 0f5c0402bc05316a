"""``run_equivalence``: the one call behind ``pillsnap compare`` and the release notebooks.

Reads top to bottom: check metadata -> open runners -> classification parity
(sample, hardness scoring, compare) -> detection parity -> end-to-end parity ->
gates -> (on failure) probes and ranked causes -> validated ``export_report.json``.

``compare.precision: int8`` (or an explicit ``reference``) compares ONNX with ONNX: the
reference side is the float32 ONNX of the same release instead of the Torch checkpoint
(``equivalence/int8.py``), and ``exclude`` keeps the INT8 calibration images out of
the sample.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Collection
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pillsnap.equivalence import diagnose, divergence, gates, probes, reporting
from pillsnap.equivalence.classification import (
    ClassificationParity,
)
from pillsnap.equivalence.detection import DetectionParity
from pillsnap.equivalence.end_to_end import EndToEndAccumulator, EndToEndParity
from pillsnap.equivalence.lanes import Lanes, open_lanes, plan_lanes
from pillsnap.equivalence.parity import classification_parity, detection_parity
from pillsnap.equivalence.preflight import check_metadata, describe_onnx
from pillsnap.exceptions import UserInputError

if TYPE_CHECKING:
    import pandas as pd

    from pillsnap.config import Config
    from pillsnap.engines.runners import Runner
    from pillsnap.models.common import ExportResult
    from pillsnap.sampling.sample import Sample

log = logging.getLogger(__name__)
REPORT_NAME = "export_report.json"


@dataclass
class EquivalenceResult:
    """What the comparison measured and decided; ``report`` is exactly the dict written."""

    report: dict[str, Any]
    report_path: Path | None
    verdict: gates.Verdict
    classification: ClassificationParity | None = None
    detection: DetectionParity | None = None
    end_to_end: EndToEndParity | None = None
    samples: dict[str, Sample] = field(default_factory=dict)
    divergence: dict[str, divergence.Divergence] = field(default_factory=dict)
    """Per-layer localisation per model (on a failed gate, or with ``compare.localise: always``)."""

    @property
    def failed(self) -> bool:
        return self.verdict.failed

    @property
    def failure_reason(self) -> str | None:
        return self.verdict.failure_reason()

    @property
    def classification_rows(self) -> pd.DataFrame | None:
        """One row per classification sample (for the notebooks' plots)."""
        return None if self.classification is None else self.classification.rows

    @property
    def detection_iou_diffs(self) -> np.ndarray | None:
        """1 - IoU of every matched Torch/ONNX box pair (deployed thresholds)."""
        return None if self.detection is None else self.detection.iou_diffs

    @property
    def per_class_mismatch(self) -> list[dict[str, Any]]:
        return [] if self.classification is None else self.classification.per_class_mismatch

    @property
    def borderline_cases(self) -> list[dict[str, Any]]:
        return [] if self.classification is None else self.classification.borderline

    @property
    def detection_examples(self) -> list[dict[str, Any]]:
        """A few photos with their Torch and ONNX boxes and labels (original pixels)."""
        return [] if self.detection is None else self.detection.examples


class _Timed:
    """Delegates to a runner and adds up the seconds spent inside ``infer`` (pure compute)."""

    def __init__(self, runner: Runner):
        self._runner = runner
        self.compute_s = 0.0

    def infer(self, batch: np.ndarray) -> np.ndarray:
        out = self._runner.infer(batch)
        self.compute_s += self._runner.last_inference_time or 0.0
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runner, name)


def run_equivalence(
    cfg: Config,
    exports: dict[str, ExportResult] | None = None,
    classification_onnx: str | Path | None = None,
    detection_onnx: str | Path | None = None,
    out_dir: str | Path | None = None,
    *,
    progress: bool = True,
    reference: dict[str, str | Path] | None = None,
    exclude: Collection[str | Path] = (),
) -> EquivalenceResult:
    """Compare Torch and ONNX for every model given, write ``{out_dir}/export_report.json``.

    ``exports`` (from ``export_models``) and/or explicit ONNX paths name the models;
    ``out_dir`` defaults to the folder of the first ONNX file (the release folder).
    Raises ``MetadataMismatchError`` before any comparison when an ONNX file was
    exported for another pre-processing. A failed comparison does not raise: see
    ``result.failed`` / ``result.failure_reason`` (the CLI turns it into exit 1).
    ``reference`` (task -> float32 ONNX) replaces Torch as the reference of those models;
    with ``compare.precision: int8`` it defaults to each INT8 file's float32 source.
    """
    from pillsnap.classmap import ClassMap
    from pillsnap.config import apply_overrides
    from pillsnap.engines.runners import create_runner
    from pillsnap.versioning import get_git_sha, git_is_dirty, iso_utc, prepare_version_tag

    started = time.perf_counter()
    models: dict[str, ExportResult] = dict(exports or {})
    for task, path in (("classification", classification_onnx), ("detection", detection_onnx)):
        if path is not None:
            models[task] = describe_onnx(cfg, task, path)
    if not models:
        raise UserInputError(
            "nothing to compare: pass `exports` (from export_models) or an ONNX path per model"
        )
    notes = {task: check_metadata(cfg, task, res.onnx_path) for task, res in models.items()}
    if reference is None and cfg.compare.precision == "int8":
        from pillsnap.equivalence.int8 import float_references

        reference = float_references(cfg, models)
    reference = {t: Path(p) for t, p in (reference or {}).items() if t in models}
    excluded = frozenset(Path(p) for p in exclude)
    class_map = ClassMap.load(cfg.paths.class_map_path)
    checks: dict[str, list[gates.Check]] = {}
    cls_parity = det_parity = e2e = None
    samples: dict[str, Sample] = {}
    # ONNX against ONNX: nothing to gain from the Torch lane, the two sessions take turns.
    lanes = plan_lanes(cfg) if not reference else Lanes.in_turn()
    onnx_cfg = (
        apply_overrides(cfg, {"runtime.intra_op_threads": lanes.onnx_threads})
        if lanes.parallel
        else cfg
    )
    with ExitStack() as stack:
        runners = {
            task: {
                "torch": _Timed(
                    stack.enter_context(
                        create_runner("onnx", task, cfg, reference[task])
                        if task in reference
                        else create_runner("torch", task, cfg, res.ckpt_path)
                    )
                ),
                "onnx": _Timed(
                    stack.enter_context(create_runner("onnx", task, onnx_cfg, res.onnx_path))
                ),
            }
            for task, res in models.items()
        }
        stack.enter_context(open_lanes(lanes))
        if "classification" in models:
            samples["classification"], cls_parity = classification_parity(
                cfg, class_map, runners["classification"], progress, lanes, excluded
            )
            checks["classification"] = gates.classification_checks(
                cls_parity.metrics, cfg.compare.gates, cfg.compare.precision
            )
        if "detection" in models:
            # With both models, the end-to-end check rides along the detection pass (same photos, same raw heads).
            acc = (
                EndToEndAccumulator(
                    cfg,
                    class_map,
                    {e: runners["classification"][e] for e in ("torch", "onnx")},
                    {e: runners["detection"][e] for e in ("torch", "onnx")},
                )
                if "classification" in models
                else None
            )
            samples["detection"], det_parity = detection_parity(
                cfg, runners["detection"], progress, acc, lanes, excluded
            )
            checks["detection"] = gates.detection_checks(
                det_parity.metrics, cfg.compare.gates, cfg.compare.precision
            )
            if acc is not None:
                e2e = acc.result()
                checks["end_to_end"] = gates.end_to_end_checks(
                    e2e.metrics, cfg.compare.gates, cfg.compare.precision
                )
        verdict = gates.Verdict([c for group in checks.values() for c in group])
        parities = {"classification": cls_parity, "detection": det_parity}
        failed = {t: not all(c.passed for c in checks[t]) for t in parities if t in checks}
        localised, unlocalised = divergence.localise_models(cfg, models, runners, parities, failed)
        verdict.localised = {**{t: d.headline() for t, d in localised.items()}, **unlocalised}
        if verdict.failed:
            verdict.causes = _diagnose(
                cfg, models, runners, checks, cls_parity, det_parity, localised
            )
        compute = {
            f"{task}_{engine}_s": round(r.compute_s, 3)
            for task, rr in runners.items()
            for engine, r in rr.items()
        }
        describe = {
            task: (rr["onnx"].describe(), rr["torch"].describe()) for task, rr in runners.items()
        }
    tag = next((r.tag for r in models.values() if r.tag), "") or prepare_version_tag()
    # The sha the release was tagged with (the code that exported it), else the current checkout's.
    tag_sha = tag.rsplit("-", 1)[-1]
    git_sha = tag_sha if re.fullmatch(r"[0-9a-f]{7}|nogit", tag_sha) else get_git_sha()
    model_entries = {}
    for task, res in models.items():
        compare = reporting.compare_section(
            cfg, task, samples[task], parities[task], checks[task], verdict, notes[task]
        )
        onnx_desc, torch_desc = describe[task]
        compare["reference"] = (
            f"onnx float32: {reference[task].name}" if task in reference else "torch checkpoint"
        )
        model_entries[task] = reporting.model_section(
            cfg, res, git_sha, onnx_desc["providers"], torch_desc["device"], compare
        )
    from pillsnap.environment import report_environment

    e2e_note = None if e2e else "needs both models; compared only " + ", ".join(models)
    report = {
        "schema_version": 1,
        "version_tag": tag,
        "git_sha": git_sha,
        "git_dirty": git_is_dirty(),
        "exported_at_utc": min(r.exported_at_utc for r in models.values()) or iso_utc(),
        "compared_at_utc": iso_utc(),
        "failed": verdict.failed,
        "failure_reason": verdict.failure_reason(),
        "models": model_entries,
        "end_to_end": reporting.end_to_end_section(
            e2e, checks.get("end_to_end", []), verdict, e2e_note
        ),
        "verdict": reporting.verdict_section(verdict),
        "environment": report_environment(),
        "config": cfg.snapshot(),
        "timing": {
            "wall_s": round(time.perf_counter() - started, 3),
            **compute,
            **lanes.describe(),
        },
    }
    if localised:  # absent when it did not run: a passing release's record stays as it was
        report["divergence"] = {t: d.to_section() for t, d in localised.items()}
    out = (
        Path(out_dir) if out_dir is not None else Path(next(iter(models.values())).onnx_path).parent
    )
    from pillsnap.report.schema import write_report

    report_path = write_report(out / REPORT_NAME, report)
    # Each parity logged its own summary line when it finished; the verdict closes the run.
    log.info("%s -> %s", verdict.summary_line(), report_path)
    return EquivalenceResult(
        report, report_path, verdict, cls_parity, det_parity, e2e, samples, localised
    )


def _diagnose(
    cfg: Config,
    models: dict[str, ExportResult],
    runners: dict[str, dict[str, Any]],
    checks: dict[str, list[gates.Check]],
    cls: ClassificationParity | None,
    det: DetectionParity | None,
    localised: dict[str, divergence.Divergence] | None = None,
) -> list[dict[str, Any]]:
    """Probe each failed model and rank the likely causes (all models together, best first)."""
    causes: list[dict[str, Any]] = []
    pre = cfg.classification.preprocessing
    for task, parity in (("classification", cls), ("detection", det)):
        if parity is None or all(c.passed for c in checks[task]):
            continue
        x = parity.probe_inputs
        if cfg.compare.precision == "int8":
            from pillsnap.equivalence.int8 import rank_int8_causes

            causes += rank_int8_causes(task, models[task].onnx_path, x)
            continue
        torch_r, onnx_r = runners[task]["torch"], runners[task]["onnx"]
        stage = probes.input_stage(models[task].onnx_path, torch_r._runner, x)
        batch = {
            "torch": probes.batch_consistency(torch_r, x),
            "onnx": probes.batch_consistency(onnx_r, x),
        }
        evidence = diagnose.Evidence(
            task,
            parity.metrics,
            cfg.compare.precision,
            stage,
            batch,
            getattr(parity, "logit_fit", None),
            tuple(pre.mean) if task == "classification" else None,
            tuple(pre.std) if task == "classification" else None,
            (localised or {}).get(task),
        )
        found = diagnose.rank_causes(evidence)
        log.warning(
            "%s: likely causes: %s",
            task,
            "; ".join(f"{c['title']} ({c['score']:.2f}): {c['evidence']}" for c in found),
        )
        causes += found
    if "end_to_end" in checks and not all(c.passed for c in checks["end_to_end"]) and not causes:
        causes.append(
            {
                "model": "end_to_end",
                "cause": "numeric_precision",
                "title": diagnose.TITLES["numeric_precision"],
                "score": 0.5,
                "evidence": "both models pass their own gates, yet some pills get another "
                "edi_code: near-tie crops or boxes flip",
                "advice": diagnose.ADVICE["numeric_precision"],
            }
        )
    return sorted(causes, key=lambda c: -c["score"])
