"""One model from float32 to a gated INT8: recipes, then the exclusion loop, every step recorded.

``ModelQuantizer(...).run()`` reads top to bottom:

1. ``quant_pre_process`` once; the known exclusions (with reasons) on that graph;
2. each recipe of ``quantize.recipes``: quantize (calibrating once per method), gate
   (``gate.evaluate``: the equivalence code, real kernels, real data), speed;
3. the best recipe passes -> done. Else, when the calibration inputs differ from the
   gate's inputs, stop: the reason names the calibration. Else the loop
   (``quantize.search``): rank layer groups by per-layer SQNR lost
   (``sensitivity.measure``), re-quantize with each of the ``candidates`` worst
   reverted to float and gate each (the task-aware score: the gate's distance from
   passing, measured on the fused CPU kernels), keep the best if it helped, else try
   the next candidates; stop when the gate passes, at ``max_excluded`` groups, at
   ``max_steps``, or when INT8 is no longer ``min_speedup`` faster than float32.

Each step is a ``Step`` (what changed, the gate metrics, the speed), so the notebook
plots the path and the record stores it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pillsnap.quantize import gate as gates
from pillsnap.quantize.exclusions import REASONS, Exclusion
from pillsnap.quantize.steps import KEY_METRICS, ModelOutcome, Step, short

if TYPE_CHECKING:
    from pillsnap.config import Config
    from pillsnap.config.quantize import Recipe
    from pillsnap.quantize.calibrate import CalibrationSet, Loader
    from pillsnap.quantize.sensitivity import Sensitivity

log = logging.getLogger(__name__)
GATE_STATS_IMAGES = 64
"""Gate images whose pre-processed statistics are compared with the calibration's."""


class ModelQuantizer:
    """Quantize one float32 ONNX model until its int8 gates hold (see the module doc).

    State: the recipes tried, the current candidate (recipe, file, exclusions, gate,
    speed) and the steps so far. ``partner`` fixes other models' INT8 files in every
    gate run of this model, and ``scope`` names the checks that count for it: the
    classifier is searched with the INT8 detector fixed when only the end-to-end
    agreement fails.
    """

    def __init__(
        self,
        cfg: Config,
        task: str,
        float_path: Path,
        workdir: Path,
        calibration: CalibrationSet,
        cpu: dict[str, Any],
        loader: Loader | None = None,
    ):
        import onnx

        from pillsnap.quantize import calibrate, exclusions, recipes

        self.cfg, self.task, self.float_path, self.workdir = cfg, task, Path(float_path), workdir
        self.calibration, self.cpu = calibration, cpu
        self.pre_path = recipes.preprocess_model(float_path, workdir / f"{task}.pre.onnx")
        model = onnx.load(str(self.pre_path), load_external_data=False)
        self.known = exclusions.known_exclusions(cfg, task, model)
        self.groups = exclusions.layer_groups(model, {e.node for e in self.known})
        input_name = model.graph.input[0].name
        self.reader = calibrate.CalibrationReader(
            calibration.paths,
            input_name,
            loader or calibrate.default_loader(cfg, task),
            cfg.quantize.calibration_batch_size,
        )
        self.probe = self.reader.first_images(cfg.quantize.search.sensitivity_images)
        self.partner: dict[str, tuple[Path, Path]] = {}
        """Other models fixed in this model's gate runs: task -> (INT8 file, float32 file)."""
        self.scope: tuple[str, ...] = (task,)
        self.exclude: frozenset[Path] = calibration.reserved
        """Images every gate run leaves out (the stage adds the other models' calibration images)."""
        self.tried: list[dict[str, Any]] = []
        self.candidates: dict[
            str, tuple[Path, list[Exclusion], gates.GateResult, dict[str, Any]]
        ] = {}
        self.steps: list[Step] = []
        self.groups_float: list[str] = []
        self.causes: list[dict[str, Any]] = []
        self.reason: str | None = None
        self.current: tuple[Any, ...] | None = None
        """(recipe, path, exclusions, gate, speed) of the candidate the model stands at."""
        self.sensitivity: Sensitivity | None = None
        self._built = 0
        self._started = time.perf_counter()

    # -- one candidate -------------------------------------------------------------------------
    def build(self, recipe: Recipe, groups: list[str]) -> tuple[Path, list[Exclusion]]:
        """Quantize with ``recipe``, the known exclusions and ``groups`` kept float."""
        from pillsnap.models.common import write_onnx_metadata
        from pillsnap.quantize import recipes
        from pillsnap.quantize.metadata import int8_metadata

        searched = [
            Exclusion(n, "search", REASONS["search"], g) for g in groups for n in self.groups[g]
        ]
        excluded = [*self.known, *searched]
        self._built += 1
        out = self.workdir / f"{self.task}-{self._built:03d}-{recipe.name}.int8.onnx"
        cache = self.workdir / f"{self.task}-calibration-{recipes.calibration_key(recipe)}.json"
        recipes.quantize_model(
            self.pre_path, out, recipe, self.cpu, self.reader, cache, [e.node for e in excluded]
        )
        write_onnx_metadata(
            out,
            int8_metadata(
                self.float_path,
                recipes.applied(recipe, self.cpu),
                excluded,
                self.calibration,
                self.cpu,
            ),
        )
        return out, excluded

    def gate(self, path: Path) -> gates.GateResult:
        """This model's int8 gates (with the partner models fixed), on the real kernels."""
        int8 = {self.task: path, **{t: p[0] for t, p in self.partner.items()}}
        ref = {self.task: self.float_path, **{t: p[1] for t, p in self.partner.items()}}
        return gates.evaluate(self.cfg, int8, ref, self.exclude).view(*self.scope)

    def speed(self, path: Path) -> dict[str, Any]:
        batch = gates.speed_batch(self.probe, self.cfg.quantize.speed_batch)
        return gates.speedup(self.cfg, self.task, self.float_path, path, batch)

    def _metrics(self, result: gates.GateResult) -> dict[str, float]:
        m = result.metrics.get(self.task, {})
        out = {k: m[k] for k in KEY_METRICS[self.task] if k in m}
        if "end_to_end" in result.metrics:
            out["e2e_pill_agreement"] = result.metrics["end_to_end"]["pill_agreement"]
        return out

    def _accuracy_key(self, result: gates.GateResult) -> float:
        """Among passing recipes, the closest to float32 wins."""
        m = result.metrics.get(self.task, {})
        if self.task == "classification":
            return 1.0 - m.get("top1_match_rate", 0.0) + m.get("mse_mean", 0.0)
        return abs(m.get("delta_map50_95", 1.0)) + abs(m.get("delta_map50", 1.0))

    # -- recipes -------------------------------------------------------------------------------
    def try_recipe(
        self,
        recipe: Recipe,
        built: tuple[Path, list[Exclusion]] | None = None,
        result: gates.GateResult | None = None,
    ) -> dict[str, Any]:
        """Build (unless ``built``), gate (unless ``result``: a joint gate run), time; record it."""
        from pillsnap.quantize import recipes as rec

        t0 = time.perf_counter()
        path, excluded = built or self.build(recipe, [])
        result = result if result is not None else self.gate(path)
        speed = self.speed(path)
        entry = {
            "recipe": recipe.name,
            "applied": rec.applied(recipe, self.cpu),
            "passed": result.passed,
            "fast_enough": gates.fast_enough(speed, self.cfg.quantize.min_speedup),
            "excess": round(result.excess(), 4),
            "failed_checks": short(result.failed_checks),
            "metrics": self._metrics(result),
            "speedup": speed["speedup"],
            "seconds": round(time.perf_counter() - t0, 1),
        }
        self.tried.append(entry)
        self.candidates[recipe.name] = (path, excluded, result, speed)
        self._step("recipe", recipe.name, None, excluded, result, speed, seconds=entry["seconds"])
        log.info(
            "%s recipe %s: gate %s, %.2fx",
            self.task,
            recipe.name,
            result.summary(),
            speed["speedup"],
        )
        return entry

    def rank(self, recipe_name: str) -> tuple[bool, float, float]:
        """Sort key of a tried recipe: passing and fast first, then closest to passing / float32."""
        _, _, result, speed = self.candidates[recipe_name]
        fast = gates.fast_enough(speed, self.cfg.quantize.min_speedup)
        return (not (result.passed and fast), result.excess(), self._accuracy_key(result))

    def choose(self, recipe_name: str | None = None) -> None:
        """Stand at ``recipe_name`` (default: the best recipe tried)."""
        name = recipe_name or min(self.candidates, key=self.rank)
        recipe = next(r for r in self.cfg.quantize.recipes if r.name == name)
        self.current = (recipe, *self.candidates[name])

    # -- the loop ------------------------------------------------------------------------------
    def improve(self) -> bool:
        """Run the exclusion loop from the current candidate until its gates hold (or a stop)."""
        result = self.current[3]
        if result.passed:
            return True
        cause = self._calibration_cause(result)
        if cause is not None:
            self.causes.append(cause)
            self.reason = f"calibration: {cause['evidence']}"
            return False
        if not self.cfg.quantize.search.enabled:
            self.reason = "quantize.search.enabled is false"
            return False
        self._search()
        return self.current[3].passed

    def _step(self, action, recipe, group, excluded, result, speed, tried=(), seconds=0.0) -> None:
        self.steps.append(
            Step(
                len(self.steps),
                action,
                recipe,
                group,
                list(self.groups_float),
                len(excluded),
                result.passed,
                round(result.excess(), 4),
                short(result.failed_checks),
                self._metrics(result),
                speed["speedup"],
                list(tried),
                seconds,
            )
        )

    def _search(self) -> None:
        q, s = self.cfg.quantize, self.cfg.quantize.search
        recipe, path, excluded, result, speed = self.current
        sensitivity = self.sensitivity or self._sensitivity(path)
        skip: set[str] = set()
        self.reason = f"quantize.search.max_steps={s.max_steps} steps used"
        for _ in range(s.max_steps):
            if result.passed:
                self.reason = None
                break
            if len(self.groups_float) >= q.max_excluded:
                self.reason = f"quantize.max_excluded={q.max_excluded} groups reverted"
                break
            if not gates.fast_enough(speed, q.min_speedup):
                self.reason = (
                    f"INT8 only {speed['speedup']:.2f}x float32, 95 % interval "
                    f"{speed.get('interval')} (quantize.min_speedup={q.min_speedup})"
                )
                break
            candidates = sensitivity.ranked(set(self.groups_float) | skip)[: s.candidates]
            if not candidates:
                self.reason = "no layer group left to revert"
                break
            t0 = time.perf_counter()
            trials = []
            for group in candidates:
                c_path, c_excl = self.build(recipe, [*self.groups_float, group])
                c_result = self.gate(c_path)
                trials.append((c_result.excess(), group, c_path, c_excl, c_result))
                log.info("%s: %s kept float -> %s", self.task, group, c_result.summary())
                if c_result.passed:
                    break  # nothing left to gain from the other candidates of this step
            trials.sort(key=lambda t: t[0])
            score, group, c_path, c_excl, c_result = trials[0]
            tried = [
                {"group": g, "excess": round(e, 4), "passed": r.passed} for e, g, _, _, r in trials
            ]
            if score < result.excess():
                self.groups_float.append(group)
                path, excluded, result = c_path, c_excl, c_result
                speed = self.speed(path)
                sensitivity = self._sensitivity(path)
                self._step(
                    "revert",
                    recipe.name,
                    group,
                    excluded,
                    result,
                    speed,
                    tried,
                    round(time.perf_counter() - t0, 1),
                )
            else:
                skip |= set(candidates)
                self._step(
                    "no_help",
                    recipe.name,
                    None,
                    excluded,
                    result,
                    speed,
                    tried,
                    round(time.perf_counter() - t0, 1),
                )
        else:
            if result.passed:
                self.reason = None
        self.current = (recipe, path, excluded, result, speed)
        self.sensitivity = sensitivity

    def outcome(self) -> ModelOutcome:
        """Where the model stands, as the record keeps it."""
        from pillsnap.quantize import recipes as rec

        recipe, path, excluded, result, speed = self.current
        if self.sensitivity is None:
            self.sensitivity = self._sensitivity(path)
        passed = result.passed and gates.fast_enough(speed, self.cfg.quantize.min_speedup)
        reason = None
        if not passed:
            reason = self._failure(
                recipe, result, speed, self.groups_float, self.sensitivity, self.reason
            )
            log.warning("%s INT8 failed: %s", self.task, reason)
        return ModelOutcome(
            self.task,
            self.float_path,
            path,
            rec.applied(recipe, self.cpu),
            list(self.tried),
            excluded,
            list(self.steps),
            result,
            speed,
            self.calibration,
            self.reader.stats(),
            self.sensitivity,
            passed,
            reason,
            list(self.causes),
            round(time.perf_counter() - self._started, 1),
        )

    def run(self) -> ModelOutcome:
        """The whole path of one model alone: every recipe, the best, the loop."""
        for recipe in self.cfg.quantize.recipes:
            self.try_recipe(recipe)
        self.choose()
        self.improve()
        return self.outcome()

    def _sensitivity(self, path: Path) -> Sensitivity:
        from pillsnap.quantize.sensitivity import measure

        return measure(self.pre_path, path, self.probe, self.groups)

    def _calibration_cause(self, result: gates.GateResult) -> dict[str, Any] | None:
        """Calibration inputs against the gate's own inputs (the shared pre-processing)."""
        from pillsnap.quantize import calibrate
        from pillsnap.quantize.diagnose import calibration_evidence

        sample = result.result.samples.get(self.task)
        if sample is None or not sample.items:
            return None
        load = calibrate.default_loader(self.cfg, self.task)
        items = sample.items[:: max(1, len(sample.items) // GATE_STATS_IMAGES)][:GATE_STATS_IMAGES]
        reader = calibrate.CalibrationReader([it.path for it in items], "x", load, len(items))
        reader.get_next()  # a stride over the sample: every class / pill count, not the first few
        return calibration_evidence(self.task, self.reader.stats(), reader.stats())

    def _failure(
        self,
        recipe: Recipe,
        result: gates.GateResult,
        speed: dict[str, Any],
        groups: list[str],
        sensitivity: Sensitivity | None,
        stopped: str | None,
    ) -> str:
        q = self.cfg.quantize
        parts = [f"no configuration passed: best recipe {recipe.name}"]
        if groups:
            parts.append(f"with {len(groups)} group(s) float ({', '.join(groups)})")
        parts.append(f"gate {result.summary()}")
        parts.append(
            f"speed {speed['speedup']:.2f}x float32, 95 % interval {speed.get('interval')} "
            f"(min_speedup {q.min_speedup})"
        )
        if sensitivity is not None and not result.passed:
            nxt = sensitivity.ranked(set(groups))[:3]
            if nxt:
                parts.append("layers that would have to stay float next: " + ", ".join(nxt))
        if stopped:
            parts.append(f"stopped: {stopped}")
        return "; ".join(parts)
