"""The model files of a release folder: float32 ONNX, INT8 ONNX (when quantized), checkpoints.

Naming (agreed with the quantization stage): ``<task>-<tag>.onnx`` and
``<task>-<tag>.int8.onnx`` with ``<task>.onnx`` / ``<task>.int8.onnx`` links in a promoted
release. A folder being released (``<tag>.partial``) has no links yet, so the tagged
names come first, then the links, then the only candidate of the folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pillsnap.exceptions import MissingPathError
from pillsnap.names import INT8_SUFFIX, model_file_name

TASKS = ("detection", "classification")


@dataclass
class ReleaseModels:
    folder: Path
    tag: str
    onnx: dict[str, Path] = field(default_factory=dict)
    int8: dict[str, Path] = field(default_factory=dict)

    def file_for(self, task: str, kind: str) -> Path | None:
        return (self.int8 if kind == "int8" else self.onnx).get(task)


def _pick(folder: Path, task: str, tag: str, int8: bool) -> Path | None:
    suffix = INT8_SUFFIX if int8 else ".onnx"
    for candidate in (
        folder / model_file_name(task, tag, int8) if tag else None,
        folder / f"{task}{suffix}",
    ):
        if candidate is not None and candidate.is_file():
            return candidate.resolve() if candidate.is_symlink() else candidate
    found = sorted(
        p
        for p in folder.glob(f"{task}-*{suffix}")
        if not p.is_symlink() and (int8 or not p.name.endswith(INT8_SUFFIX))
    )
    return found[0] if len(found) == 1 else None


def tag_of(folder: Path) -> str:
    """A release folder's tag: its name without ``.partial`` / ``.failed`` (``latest`` resolved)."""
    name = folder.resolve().name
    for suffix in (".partial", ".failed", ".aborted"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def find_release_models(
    folder: str | Path, tag: str = "", tasks: tuple[str, ...] = TASKS
) -> ReleaseModels:
    """The float32 (required) and INT8 (optional) ONNX files of ``tasks`` in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingPathError(
            f"release folder not found: {folder}; run `pillsnap release` first or pass --release DIR"
        )
    tag = tag or tag_of(folder)
    models = ReleaseModels(folder, tag)
    for task in tasks:
        fp32 = _pick(folder, task, tag, int8=False)
        if fp32 is not None:
            models.onnx[task] = fp32
        q = _pick(folder, task, tag, int8=True)
        if q is not None:
            models.int8[task] = q
    return models


def require_onnx(models: ReleaseModels, tasks: list[str]) -> None:
    missing = [t for t in tasks if t not in models.onnx]
    if missing:
        raise MissingPathError(
            f"no {' / '.join(missing)} ONNX in {models.folder} (expected <task>-{models.tag}.onnx); "
            "pass a release folder made by `pillsnap release`, or --only the model it has"
        )
