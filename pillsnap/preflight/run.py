"""``run_preflight``: every check a run needs, all problems collected, one error."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pillsnap.exceptions import UserInputError

if TYPE_CHECKING:
    from pillsnap.classmap import ClassMap
    from pillsnap.config import Config

log = logging.getLogger(__name__)
TASKS = ("detection", "classification")


class PreflightError(UserInputError):
    """The run's input is wrong; ``problems`` holds one paragraph per problem found."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"{len(self.problems)} problem(s) found before any work; nothing was written:\n{lines}"
        )


@dataclass
class PreflightReport:
    """What the preflight verified, one line per check."""

    checked: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def summary(self) -> str:
        return f"preflight passed ({len(self.checked)} checks, {self.elapsed_s:.1f} s)"


def run_preflight(
    cfg: Config,
    *,
    checkpoints: Iterable[str] = (),
    checkpoint_paths: dict[str, Path | None] | None = None,
    onnx: dict[str, Path] | None = None,
    onnx_keys: dict[str, str] | None = None,
    class_map: bool = False,
    data: Iterable[str] = (),
    out_dir: Path | None = None,
    out_dir_key: str = "paths.out_dir",
    protect_records: bool = True,
    out_file: Path | None = None,
    out_file_key: str = "--out",
    inputs: Iterable[Path] = (),
    force: bool = False,
) -> PreflightReport:
    """Check everything a run will read and write; raise ``PreflightError`` listing every problem.

    ``checkpoints``: tasks whose checkpoint the run loads (``checkpoint_paths`` overrides the
    config's path per task); ``onnx``: task -> ONNX file given; ``class_map``: the run maps
    classes to edi_codes; ``data``: tasks whose validation data it reads; ``out_dir`` /
    ``out_file``: where it writes (``inputs``: files the output must not be).
    """
    from pillsnap.preflight import inputs as checks
    from pillsnap.preflight.onnx import check_onnx_file
    from pillsnap.preflight.outputs import check_output_dir, check_output_file
    from pillsnap.preprocess import apply_image_limits

    started = time.perf_counter()
    apply_image_limits(cfg)
    report, problems = PreflightReport(), []

    errors: list[UserInputError] = []

    def step(check: Callable[[], Any]) -> Any:
        try:
            result = check()
        except UserInputError as exc:
            problems.append(str(exc).strip())
            errors.append(exc)
            return None
        line = result[0] if isinstance(result, tuple) else result
        if isinstance(line, str) and line:
            report.checked.append(line)
        return result

    if out_dir is not None:
        step(lambda: f"output folder {check_output_dir(out_dir, out_dir_key, protect_records)}")
    if out_file is not None:
        step(
            lambda: f"output file {check_output_file(out_file, out_file_key, list(inputs), force)}"
        )
    paths = checkpoint_paths or {}
    wanted = [t for t in TASKS if t in set(checkpoints)]
    found = step(lambda: _class_map(cfg)) if class_map else None
    cmap: ClassMap | None = found[1] if found else None
    if "detection" in wanted:
        step(lambda: checks.check_detection_checkpoint(cfg, paths.get("detection")))
    if "classification" in wanted:
        result = step(
            lambda: checks.check_classification_checkpoint(cfg, paths.get("classification"))
        )
        if isinstance(result, tuple) and cmap is not None:
            path = paths.get("classification") or cfg.checkpoint_path("classification")
            step(lambda: checks.check_trained_digest(cfg, cmap, result[1], Path(path)))
    digest = cmap.digest() if cmap is not None else None
    keys = onnx_keys or {}
    for task, path in (onnx or {}).items():
        key = keys.get(task, f"--{task}-onnx")
        step(lambda task=task, path=path, key=key: check_onnx_file(cfg, task, path, key, digest))
    tasks = set(data)
    if "classification" in tasks:
        step(lambda: checks.check_classification_data(cfg, cmap))
    if "detection" in tasks:
        step(lambda: checks.check_detection_data(cfg))
    report.elapsed_s = time.perf_counter() - started
    if (
        len(errors) == 1
    ):  # one problem: its own, typed error (CheckpointError, MissingPathError, ...)
        raise errors[0]
    if problems:
        raise PreflightError(problems)
    for line in report.checked:
        log.info("preflight: %s", line)
    log.info("%s", report.summary())
    return report


def _class_map(cfg: Config) -> tuple[str, ClassMap]:
    from pillsnap.preflight.inputs import check_class_map

    cmap = check_class_map(cfg)
    return f"class map {cfg.paths.class_map_path}: {len(cmap)} classes, edi_codes valid", cmap
