"""The served model: one immutable object, built completely before it serves.

``load_release`` verifies the release (``pillsnap.release.manifest.verify_release``:
every file's sha256 against ``manifest.json``, the report's schema), builds both ONNX
Runtime runners through ``Pipeline.from_config``, activates them, warms them up on a
photo, then hashes the two model files again (a file swapped between the check and
the load is caught). ``load_torch_fallback`` does the same for the config's
checkpoints, marked ``degraded``. Either returns a ``ServedModel`` or raises
``ModelRejected`` naming the step that refused it; nothing half-loaded ever serves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from pillsnap.exceptions import UserInputError
from pillsnap.fileio import sha256_file
from pillsnap.versioning import iso_utc

if TYPE_CHECKING:
    from pillsnap.config import Config
    from pillsnap.pipeline import Pipeline

log = logging.getLogger(__name__)

TASKS = ("detection", "classification")
Source = Literal["MODEL_PATH", "newest_release", "torch_fallback", "reload"]
Step = Literal["path", "forbidden", "verify", "load", "warmup"]

WARMUP_IMAGE = Path(__file__).resolve().parent / "static" / "warmup.jpg"


class ModelRejected(UserInputError):
    """A model source was refused; ``step`` says where (path, forbidden, verify, load, warmup)."""

    def __init__(self, step: Step, message: str):
        super().__init__(message)
        self.step = step


@dataclass(frozen=True)
class ServedModel:
    """Both runners (in ``pipeline``), the class map, the version and the proof of what it is."""

    version: str
    source: Source
    release_dir: str | None
    pipeline: Pipeline = field(repr=False, compare=False)
    files: Mapping[str, str]
    """Every file of the release (or the checkpoints) -> sha256, as verified at load."""
    models: Mapping[str, str]
    """task -> the model file actually loaded."""
    precision: Mapping[str, str]
    engine: str
    providers: tuple[str, ...]
    class_map: Mapping[str, str]
    degraded: bool
    loaded_at_utc: str
    load_seconds: float
    warnings: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/model`` shows."""
        return {
            "version": self.version,
            "source": self.source,
            "release_dir": self.release_dir,
            "degraded": self.degraded,
            "engine": self.engine,
            "providers": list(self.providers),
            "precision": dict(self.precision),
            "models": dict(self.models),
            "files": dict(self.files),
            "class_map": dict(self.class_map),
            "loaded_at_utc": self.loaded_at_utc,
            "load_seconds": round(self.load_seconds, 3),
            "warnings": list(self.warnings),
        }


def load_release(
    release_dir: Path,
    cfg: Config,
    source: Source,
    precision: str = "fp32",
    warmup: Path | None = None,
    warmup_batch: int = 1,
) -> ServedModel:
    """Verify, load, warm up a release folder; ``ModelRejected`` on any failure."""
    from pillsnap.pipeline import Pipeline

    start = time.perf_counter()
    release_dir = Path(release_dir).resolve()
    manifest = verified_manifest(release_dir)
    tag = str(manifest.get("tag") or release_dir.name)
    files = {
        rel: entry["sha256"]
        for rel, entry in manifest.get("artifacts", {}).items()
        if isinstance(entry, dict) and "sha256" in entry
    }
    warnings: list[str] = []
    chosen = {
        task: model_file(release_dir, tag, task, precision, files, warnings) for task in TASKS
    }
    try:
        pipeline = Pipeline.from_config(
            cfg, "onnx", chosen["detection"][0], chosen["classification"][0]
        )
        pipeline.activate()
    except Exception as exc:  # ORT refuses a truncated file, metadata mismatch, wrong class map ...
        raise ModelRejected("load", f"release {tag}: the models do not load: {exc}") from exc
    warm_up(pipeline, warmup, warmup_batch, tag)
    for path, _ in chosen.values():  # the bytes that loaded must be the bytes that verified
        rel = path.relative_to(release_dir).as_posix()
        if sha256_file(path) != files.get(rel):
            raise ModelRejected(
                "verify", f"release {tag}: {rel} changed while it was loading; reload again"
            )
    warnings += int8_cpu_warnings(pipeline, {t: p for t, (_, p) in chosen.items()})
    for message in warnings:
        log.warning("%s", message)
    return ServedModel(
        version=tag,
        source=source,
        release_dir=str(release_dir),
        pipeline=pipeline,
        files=MappingProxyType(files),
        models=MappingProxyType({t: p.name for t, (p, _) in chosen.items()}),
        precision=MappingProxyType({t: p for t, (_, p) in chosen.items()}),
        engine="onnxruntime",
        providers=tuple(pipeline.detector.describe()["providers"]),
        class_map=_class_map_record(cfg),
        degraded=False,
        loaded_at_utc=iso_utc(),
        load_seconds=time.perf_counter() - start,
        warnings=tuple(warnings),
    )


def verified_manifest(release_dir: Path) -> dict[str, Any]:
    """The manifest of a release that passes ``verify_release``, else ``ModelRejected('verify')``."""
    from pillsnap.release.manifest import verify_release

    try:
        check = verify_release(release_dir, require_passed=True)
    except OSError as exc:  # a file the manifest lists cannot be read
        raise ModelRejected(
            "verify", f"{release_dir}: a file of the release cannot be read: {exc}"
        ) from exc
    if not check.ok or check.manifest is None:
        raise ModelRejected(
            "verify",
            f"{release_dir} is not a verified release: " + "; ".join(check.problems[:6]),
        )
    return check.manifest


def model_file(
    release_dir: Path,
    tag: str,
    task: str,
    precision: str,
    files: Mapping[str, str],
    warnings: list[str],
) -> tuple[Path, str]:
    """``(path, precision)`` of one task's model: INT8 if asked and present, else float.

    Names: ``<task>-<tag>.onnx`` / ``<task>-<tag>.int8.onnx``, else the in-release
    aliases ``<task>.onnx`` / ``<task>.int8.onnx``; it must be a verified file of the
    release (an alias pointing out of the folder is refused).
    """
    if precision == "int8":
        found = _find_model(release_dir, tag, task, ".int8.onnx", files)
        if found is not None:
            return found, "int8"
        warnings.append(
            f"release {tag} has no INT8 {task} model ({task}-{tag}.int8.onnx); serving it in fp32"
        )
    found = _find_model(release_dir, tag, task, ".onnx", files)
    if found is None:
        raise ModelRejected(
            "verify", f"release {tag} has no {task} model: {task}-{tag}.onnx is missing"
        )
    return found, "fp32"


def _find_model(
    release_dir: Path, tag: str, task: str, suffix: str, files: Mapping[str, str]
) -> Path | None:
    for name in (f"{task}-{tag}{suffix}", f"{task}{suffix}"):
        candidate = release_dir / name
        if not (candidate.is_file() or candidate.is_symlink()):
            continue
        real = candidate.resolve()
        if not real.is_relative_to(release_dir) or not real.is_file():
            raise ModelRejected(
                "verify", f"{candidate} points outside its release folder ({real}); refused"
            )
        if real.relative_to(release_dir).as_posix() not in files:
            raise ModelRejected("verify", f"{real.name} is not listed in manifest.json")
        return real
    return None


def warm_up(pipeline: Pipeline, photo_path: Path | None, batch: int, version: str) -> None:
    """Run both models on a photo (one image and a full batch): finite outputs or refused.

    The first call of a session allocates and tunes; doing it here keeps that cost
    off the first request and proves the model computes before it replaces another.
    """
    from pillsnap.preprocess import letterbox_batch, load_image, preprocess

    path = photo_path or WARMUP_IMAGE
    try:
        photo = load_image(path)
        for n in sorted({1, max(1, batch)}):
            raw, _ = letterbox_batch([photo] * n, pipeline.cfg.detection.imgsz)
            logits = pipeline.classifier.infer(preprocess([photo] * n, pipeline.spec))
            for name, out in (("detector", pipeline.detector.infer(raw)), ("classifier", logits)):
                if not np.isfinite(out).all():
                    raise ValueError(f"the {name} returned non-finite values (NaN/inf)")
        pipeline.predict([photo])
    except Exception as exc:
        raise ModelRejected(
            "warmup", f"model {version} failed its warm-up on {path}: {exc}"
        ) from exc


def int8_cpu_warnings(pipeline: Pipeline, precision: Mapping[str, str]) -> list[str]:
    """An INT8 model gated on another CPU class (VNNI vs AVX2 ...) may lose accuracy here."""
    from pillsnap.models.common import META_PRECISION
    from pillsnap.quantize.metadata import cpu_class_warning

    runners = {"detection": pipeline.detector, "classification": pipeline.classifier}
    found = (
        cpu_class_warning(
            {**getattr(runners[task], "metadata", {}), META_PRECISION: "int8"},
            f"the INT8 {task} model",
        )
        for task, prec in precision.items()
        if prec == "int8"
    )
    return [w for w in found if w]


def load_torch_fallback(
    cfg: Config, warmup: Path | None = None, warmup_batch: int = 1
) -> ServedModel:
    """The config's Torch checkpoints, served ``degraded`` (no verified release was found)."""
    from pillsnap.pipeline import Pipeline

    start = time.perf_counter()
    try:
        ckpts = {task: cfg.checkpoint_path(task) for task in TASKS}  # type: ignore[arg-type]
        pipeline = Pipeline.from_config(cfg, "torch").activate()
    except Exception as exc:
        raise ModelRejected("load", f"the Torch checkpoints do not load: {exc}") from exc
    files = {str(p): sha256_file(p) for p in ckpts.values()}
    version = "torch-" + "-".join(files[str(ckpts[t])][:8] for t in TASKS)
    warm_up(pipeline, warmup, warmup_batch, version)
    described = pipeline.detector.describe()
    message = (
        "serving the Torch checkpoints (degraded): no MODEL_PATH and no verified release in "
        f"{cfg.paths.out_dir}; run `pillsnap release` to serve a verified ONNX release"
    )
    log.warning("%s", message)
    return ServedModel(
        version=version,
        source="torch_fallback",
        release_dir=None,
        pipeline=pipeline,
        files=MappingProxyType(files),
        models=MappingProxyType({t: str(p) for t, p in ckpts.items()}),
        precision=MappingProxyType(dict.fromkeys(TASKS, described["precision"])),
        engine="torch",
        providers=tuple(described["providers"]),
        class_map=_class_map_record(cfg),
        degraded=True,
        loaded_at_utc=iso_utc(),
        load_seconds=time.perf_counter() - start,
        warnings=(message,),
    )


def _class_map_record(cfg: Config) -> Mapping[str, str]:
    from pillsnap.classmap import ClassMap

    path = cfg.paths.class_map_path
    return MappingProxyType(
        {"path": str(path), "sha256": sha256_file(path), "digest": ClassMap.load(path).digest()}
    )
