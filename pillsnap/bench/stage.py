"""What ``benchmark.ipynb`` calls around ``run_benchmark``: find (or make) the models, fail loudly.

In a release the export stage has already written both ONNX files (and the quantize
stage, when configured, their INT8 versions) into the stage's folder. Run alone, the
notebook exports the config's checkpoints into its scratch folder first, so it always
has a release to measure.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from pillsnap.bench.artifacts import find_release_models
from pillsnap.exceptions import MissingPathError

if TYPE_CHECKING:
    from pillsnap.bench.run import BenchmarkResult
    from pillsnap.report.notebook import Stage

log = logging.getLogger(__name__)


def stage_release(stage: Stage) -> Path:
    """The folder holding the models to benchmark (exported into the scratch folder when alone)."""
    tasks = list(stage.cfg.benchmark.models)
    models = find_release_models(stage.out_dir, stage.tag, tuple(tasks))
    missing = [t for t in tasks if t not in models.onnx]
    if not missing:
        return stage.out_dir
    if not stage.standalone:
        raise MissingPathError(
            f"no {' / '.join(missing)} ONNX in {stage.out_dir}: put `export` before `benchmark` "
            "in release.stages"
        )
    from pillsnap.models.export import export_models

    log.info("no ONNX files in %s: exporting both models first", stage.out_dir)
    export_models(stage.cfg, stage.out_dir, stage.tag)
    return stage.out_dir


def raise_if_failed(result: BenchmarkResult) -> None:
    """Raise ``BenchmarkError`` when a required configuration did not run (the cell, the stage fail)."""
    from pillsnap.bench.run import BenchmarkError

    if result.failed:
        raise BenchmarkError(str(result.failure_reason))
