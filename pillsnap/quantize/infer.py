"""``pillsnap infer --quantize int8``: which INT8 files to run, quantizing a float model when needed.

* No ``--model``: the INT8 models of the newest release (``{paths.out_dir}/latest``).
* A ``--model`` that is an INT8 file runs as it is; a float32 file whose INT8 sibling
  the release shipped (``<task>-<tag>.onnx`` -> ``<task>-<tag>.int8.onnx``) runs that.
* Any other float32 file is quantized with the configured recipe (the first of
  ``quantize.recipes``, the known exclusions, the configured calibration) and cached
  beside it as ``<stem>.int8.onnx``; inside a finished release folder (which must not
  change) the cache goes to ``{paths.out_dir}/.int8_cache/``. A cached file is reused
  only while its recorded source sha256 matches. Such a model is marked ``not_gated``:
  ``pillsnap quantize`` is what gates one.

Every INT8 model's CPU class is checked against this CPU (a warning, not an error).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from pillsnap.exceptions import MissingPathError, UserInputError

if TYPE_CHECKING:
    from pillsnap.config import Config

log = logging.getLogger(__name__)
CACHE_DIR = ".int8_cache"
TASK_OF = {"detect": "detection", "classify": "classification"}


def int8_models(
    cfg: Config, task: str, models: list[Path], engine: str
) -> tuple[list[Path], list[str]]:
    """The INT8 files for ``pillsnap infer --task TASK --model ...``, and warnings to print."""
    from pillsnap.models.common import read_onnx_metadata
    from pillsnap.quantize.metadata import cpu_class_warning

    check_engine(engine)
    tasks = ["detection", "classification"] if task == "pipeline" else [TASK_OF[task]]
    if models and any(m.suffix == ".pt" for m in models):
        raise UserInputError("--quantize int8 needs ONNX models (or none: the latest release's)")
    paths = [Path(m) for m in models] if models else _latest_release(cfg, tasks)
    if len(paths) != len(tasks):
        raise UserInputError(
            f"--task {task} --quantize int8 needs {len(tasks)} model(s), got {len(paths)}"
        )
    out, warnings = [], []
    for t, path in zip(tasks, paths):
        chosen = resolve(cfg, t, path)
        out.append(chosen)
        warning = cpu_class_warning(read_onnx_metadata(chosen), chosen.name)
        if warning:
            warnings.append(warning)
    return out, warnings


def check_engine(engine: str) -> None:
    """INT8 QDQ models run where they were gated: ONNX Runtime's CPU kernels."""
    if engine == "tensorrt":
        raise UserInputError(
            "--quantize int8 runs the INT8 QDQ models on ONNX Runtime's CPU kernels, where they "
            "were gated; use --engine onnx (TensorRT builds its own INT8 engines)"
        )


def _latest_release(cfg: Config, tasks: list[str]) -> list[Path]:
    latest = cfg.paths.out_dir / "latest"
    found = [latest / f"{t}.int8.onnx" for t in tasks]
    missing = [p for p in found if not p.is_file()]
    if missing:
        raise MissingPathError(
            f"--quantize int8 without --model uses the newest release's INT8 models, but "
            f"{', '.join(str(p) for p in missing)} do(es) not exist; run `pillsnap release` with the "
            "quantization stage, or pass --model PATH.onnx (it is quantized and cached)"
        )
    return [p.resolve() for p in found]


def resolve(cfg: Config, task: str, path: Path) -> Path:
    """The INT8 file to run for ``path`` (see the module doc)."""
    from pillsnap.config import require_path
    from pillsnap.equivalence.int8 import INT8_SUFFIX, is_int8
    from pillsnap.fileio import sha256_file
    from pillsnap.models.common import read_onnx_metadata

    path = require_path(path, "--model", f"the {task} model")
    if path.suffix != ".onnx":
        raise UserInputError(f"{path} is not an .onnx file; --quantize int8 quantizes ONNX models")
    if is_int8(path):
        return path
    sibling = path.with_name(path.name[: -len(".onnx")] + INT8_SUFFIX)
    if sibling.is_file() and (path.parent / "manifest.json").is_file():
        return sibling  # shipped and gated by that release
    source_sha = sha256_file(path)
    cache = cache_path(cfg, path, source_sha)
    if cache.is_file() and _cache_fits(cfg, read_onnx_metadata(cache), source_sha):
        log.info("using the cached INT8 model %s", cache)
        return cache
    return quantize_file(cfg, task, path, cache)


def _cache_fits(cfg: Config, metadata: dict[str, str], source_sha: str) -> bool:
    """Made from this very float file, with the recipe configured now, on this CPU's class."""
    import json

    from pillsnap.models.common import META_INT8_RECIPE, META_INT8_SOURCE_SHA256
    from pillsnap.quantize.recipes import applied, cpu_record

    try:
        recipe = json.loads(metadata.get(META_INT8_RECIPE, "null"))
    except json.JSONDecodeError:
        return False
    return metadata.get(META_INT8_SOURCE_SHA256) == source_sha and recipe == applied(
        cfg.quantize.recipes[0], cpu_record()
    )


def cache_path(cfg: Config, path: Path, source_sha: str) -> Path:
    stem = path.name[: -len(".onnx")]
    if (path.parent / "manifest.json").is_file():
        return cfg.paths.out_dir / CACHE_DIR / f"{stem}-{source_sha[:12]}.int8.onnx"
    return path.with_name(stem + ".int8.onnx")


def quantize_file(cfg: Config, task: str, float_path: Path, out: Path) -> Path:
    """Quantize one float32 file with the first configured recipe (no gate: marked not_gated)."""
    import os

    from pillsnap.models.common import META_INT8_GATE, write_onnx_metadata
    from pillsnap.quantize.calibrate import calibration_set
    from pillsnap.quantize.recipes import cpu_record
    from pillsnap.quantize.search import ModelQuantizer

    recipe = cfg.quantize.recipes[0]
    log.warning(
        "quantizing %s with recipe %s (not gated here; `pillsnap quantize` gates it) -> %s",
        float_path,
        recipe.name,
        out,
    )
    with tempfile.TemporaryDirectory(prefix="pillsnap-int8-") as tmp:
        quantizer = ModelQuantizer(
            cfg, task, float_path, Path(tmp), calibration_set(cfg, task), cpu_record()
        )
        built, _ = quantizer.build(recipe, [])
        write_onnx_metadata(built, {META_INT8_GATE: "not_gated"})
        out.parent.mkdir(parents=True, exist_ok=True)
        staged = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        staged.write_bytes(built.read_bytes())
        os.replace(staged, out)
    return out
