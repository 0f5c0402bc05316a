"""The release driver: tag -> run the stage notebooks -> write the manifest -> promote.

``run_release(cfg)`` reads top to bottom like the process it drives:

1. compute the version tag (``prepare_version_tag``) and take ``<out>/.release.lock``;
2. set aside ``.partial`` folders left by killed runs; create ``<out>/<tag>.partial/``
   and save the config used there (``config.yaml``, absolute paths);
3. execute each stage notebook of ``cfg.release.stages`` with papermill into it
   (executed ``.ipynb`` + ``.html``), stopping at the first failure;
4. check the release outputs (both ONNX files, a schema-valid, passing report);
5. write ``manifest.json`` LAST (hashes of everything, how it was made, verdict);
6. promote: rename to ``<out>/<tag>/`` and swap ``latest`` -- or keep ``<tag>.failed/``.

The stage notebooks do the work (export, equivalence, ...); this module only
orchestrates, so a new stage is a new notebook plus a line in the config.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pillsnap.config import Config, validate_config
from pillsnap.environment import available_providers, library_versions, machine_info, project_root
from pillsnap.exceptions import ReleaseError, UserInputError
from pillsnap.fileio import atomic_write_bytes
from pillsnap.names import INT8_SUFFIX, model_file_name
from pillsnap.release.manifest import (
    REPORT_NAME,
    write_manifest,
)
from pillsnap.release.outputs import check_release_outputs, int8_files
from pillsnap.release.promote import (
    TASKS,
    check_tag_free,
    link_model_aliases,
    mark_failed,
    partial_dir,
    promote,
    release_lock,
    repair_latest,
    set_aside_stale_partials,
)
from pillsnap.release.stages import (
    StageResult,
    default_notebooks_dir,
    ensure_kernel,
    run_stage,
    stage_notebook,
)
from pillsnap.versioning import get_git_sha, git_is_dirty, iso_utc, prepare_version_tag, utc_now

log = logging.getLogger(__name__)

CONFIG_NAME = "config.yaml"
Progress = Callable[[str], None]


@dataclass
class ReleaseOutcome:
    """Where a release ended up; ``path`` is ``<out>/<tag>`` or ``<out>/<tag>.failed``."""

    tag: str
    path: Path
    passed: bool
    stages: list[StageResult] = field(default_factory=list)
    failure: str | None = None

    @property
    def onnx_files(self) -> dict[str, Path]:
        return {t: p for t in TASKS if (p := self.path / model_file_name(t, self.tag)).is_file()}

    @property
    def int8_files(self) -> dict[str, Path]:
        return int8_files(self.path, self.tag)

    @property
    def report(self) -> Path | None:
        path = self.path / REPORT_NAME
        return path if path.is_file() else None

    @property
    def html(self) -> list[Path]:
        return [s.html for s in self.stages if s.html is not None and s.html.is_file()]


def run_release(
    cfg: Config,
    *,
    version_tag: str = "",
    stages: list[str] | None = None,
    notebooks_dir: str | Path | None = None,
    kernel_name: str | None = None,
    command: list[str] | None = None,
    overrides: list[str] | None = None,
    cell_timeout_s: int | None = None,
    progress: Progress | None = None,
) -> ReleaseOutcome:
    """Run every stage notebook into a new release folder and promote it only if all passed.

    Input problems (missing checkpoint, unknown stage, taken tag, missing notebook)
    raise before anything is written. A failing stage never raises: the outcome says ``passed=False`` and
    points at the ``.failed`` record.
    """
    say = progress or (lambda _msg: None)
    cfg = absolute_paths(cfg)
    out_dir = cfg.paths.out_dir
    root = project_root()
    tag = check_tag(version_tag or prepare_version_tag(cwd=root))
    stage_names = check_stage_names(list(stages or cfg.release.stages))
    nb_dir = Path(notebooks_dir or cfg.release.notebooks_dir or default_notebooks_dir())
    notebooks = [stage_notebook(nb_dir, name) for name in stage_names]
    # Every release ships both models, compared on the val data: bad input is refused here,
    # before a stage starts (exit 2, nothing written).
    preflight_release(cfg)
    kernel = kernel_name or ensure_kernel()

    with release_lock(out_dir):
        repair_latest(out_dir)
        set_aside_stale_partials(out_dir)
        check_tag_free(out_dir, tag)
        work = partial_dir(out_dir, tag)
        work.mkdir(parents=True)
        parameters = stage_parameters(cfg, work, tag, save_config(work, cfg))
        started = utc_now()
        say(f"release {tag}: {len(stage_names)} stage(s) -> {work}")
        results = run_stages(stage_names, notebooks, work, parameters, kernel, cell_timeout_s, say)
        failure = next(
            (f"stage {r.name!r} failed: {r.error}" for r in results if not r.passed), None
        )
        failure = failure or check_release_outputs(work, tag, stage_names)
        if failure is None:
            link_model_aliases(work, {t: work / model_file_name(t, tag) for t in TASKS})
            link_model_aliases(work, int8_files(work, tag), INT8_SUFFIX)
        write_manifest(
            work,
            {
                "tag": tag,
                "verdict": "failed" if failure else "passed",
                "failure_reason": failure,
                "git": {"sha": get_git_sha(root), "dirty": git_is_dirty(root)},
                "command": command if command is not None else list(sys.argv),
                "overrides": list(overrides or []),
                "parameters": parameters,
                "stages": [r.to_record(work) for r in results]
                + [{"name": n, "status": "skipped"} for n in stage_names[len(results) :]],
                "kernel": kernel,
                "config": cfg.snapshot(),
                "versions": library_versions(),
                "machine": machine_info(),
                "providers": available_providers(),
                "started_at_utc": iso_utc(started),
                "finished_at_utc": iso_utc(),
            },
        )
        if failure:
            final = mark_failed(work, out_dir, tag)
            say(f"release {tag} FAILED: {failure}")
        else:
            final = promote(work, out_dir, tag)
            say(f"release {tag} passed; {out_dir / 'latest'} -> {tag}")
    for r in results:  # the stage files moved with the folder
        r.executed = final / r.executed.name
        r.html = final / r.html.name if r.html else None
    return ReleaseOutcome(tag, final, failure is None, results, failure)


def run_stages(
    names: list[str],
    notebooks: list[Path],
    work: Path,
    parameters: dict[str, Any],
    kernel: str,
    cell_timeout_s: int | None,
    say: Progress,
) -> list[StageResult]:
    """Execute the stages in order; stop at the first failure (later stages build on earlier ones)."""
    results: list[StageResult] = []
    for i, (name, notebook) in enumerate(zip(names, notebooks), 1):
        say(f"[{i}/{len(names)}] {name} ...")
        result = run_stage(name, notebook, work, parameters, kernel, cell_timeout_s)
        results.append(result)
        verdict = "passed" if result.passed else f"FAILED: {result.error}"
        say(f"[{i}/{len(names)}] {name} {verdict} ({result.elapsed_s:.1f} s)")
        if not result.passed:
            break
    return results


def check_tag(tag: str) -> str:
    """A tag that names only its own folder (``pillsnap.names``: no '..', no reserved name)."""
    from pillsnap.names import check_tag as check

    return check(tag)


def check_stage_names(names: list[str]) -> list[str]:
    """Plain notebook stems, each once (a second run of a stage would overwrite its record)."""
    from pillsnap.names import check_stage_name

    for name in names:
        check_stage_name(name)
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserInputError(
            f"stage(s) {', '.join(repeated)} listed twice in --stages / release.stages; each stage "
            "runs once (its executed notebook is the record of that stage)"
        )
    if not names:
        raise UserInputError("no stages to run: --stages / release.stages is empty")
    return names


def preflight_release(cfg: Config) -> None:
    """What every release needs: both checkpoints, the class map, the val data, a writable out_dir."""
    from pillsnap.preflight import run_preflight

    run_preflight(
        cfg,
        checkpoints=TASKS,
        class_map=True,
        data=TASKS,
        out_dir=cfg.paths.out_dir,
        out_dir_key="paths.out_dir / --out-dir",
    )


def absolute_paths(cfg: Config) -> Config:
    """Every path in the config made absolute (against the cwd), so the saved snapshot is portable."""

    def walk(node: Any) -> Any:
        if isinstance(node, Path):
            return node.expanduser().resolve()
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    new = validate_config(walk(cfg.model_dump(mode="python", exclude={"source"})))
    object.__setattr__(new, "source", cfg.source)
    return new


def save_config(folder: Path, cfg: Config) -> Path:
    """The config used, saved next to the artifacts it produced (and read back by the stages)."""
    text = "# Config used for this release (all overrides applied, paths absolute).\n"
    text += yaml.safe_dump(cfg.snapshot(), sort_keys=False)
    return atomic_write_bytes(folder / CONFIG_NAME, text.encode())


def stage_parameters(cfg: Config, work: Path, tag: str, config_file: Path) -> dict[str, Any]:
    """The parameters every stage notebook receives (papermill injects them after its defaults)."""
    return {
        "config_path": str(config_file),
        "exp_dir": str(cfg.paths.exp_dir),
        "out_dir": str(work),
        "opset": cfg.export.opset,
        "compare_mode": cfg.compare.mode,
        "version_tag": tag,
        "overrides": [],
    }


def ensure_not_failed(outcome: ReleaseOutcome) -> ReleaseOutcome:
    """Raise ``ReleaseError`` (naming the ``.failed`` record) for callers that want an exception."""
    if not outcome.passed:
        raise ReleaseError(
            f"release {outcome.tag} failed: {outcome.failure}; record kept at {outcome.path}"
        )
    return outcome
