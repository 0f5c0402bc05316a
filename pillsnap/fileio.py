"""File helpers: atomic writes, hashing, checkpoint discovery."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from pillsnap.exceptions import MissingPathError

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors")


def ensure_dir(path: str | Path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write via a temporary file in the same folder + ``os.replace``.

    An interrupted write leaves the previous file (or none), never half of one.
    """
    path = Path(path)
    ensure_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        chmod_default(tmp)  # mkstemp creates 0600; give the mode a plain open() would have
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def chmod_default(path: str | Path) -> None:
    """The mode ``open()`` would give a new file (0666 minus the umask); mkstemp gives 0600."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def save_json(path: str | Path, obj: Any, indent: int = 2) -> Path:
    """Serialise fully first, then write atomically (a serialisation error writes nothing)."""
    text = (
        json.dumps(obj, indent=indent, sort_keys=False, default=_json_default, allow_nan=False)
        + "\n"
    )
    return atomic_write_bytes(path, text.encode())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Streamed sha256 (constant memory for multi-GB files)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def list_checkpoints(folder: str | Path) -> list[Path]:
    """Checkpoint files in ``folder`` (not recursive), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingPathError(
            f"checkpoint folder not found: {folder} (config key `paths.exp_dir` + /checkpoints)"
        )
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)


def find_best_checkpoint(folder: str | Path, task: str) -> Path:
    """The checkpoint to release for ``task`` ("detection" or "classification").

    Rule: ``{task}_best.*`` if present (training scripts save the best-on-validation
    weights there); else ``best.*`` (Ultralytics' ``weights/best.pt``); else the
    newest ``{task}*`` file by modification time, else an error listing what was found.
    """
    found = list_checkpoints(folder)
    for stem in (f"{task}_best", "best"):
        for p in found:
            if p.stem == stem:
                return p
    candidates = [p for p in found if p.stem.startswith(task)]
    if candidates:
        return max(candidates, key=lambda p: p.stat().st_mtime)
    names = ", ".join(p.name for p in found) or "none"
    raise MissingPathError(
        f"no {task} checkpoint in {folder} (found: {names}); expected {task}_best.pt"
    )
