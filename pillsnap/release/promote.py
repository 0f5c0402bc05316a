"""Release folder life cycle: ``<tag>.partial`` -> ``<tag>`` (+ ``latest``) or ``<tag>.failed``.

Every step is a single ``rename`` / ``os.replace`` on one filesystem, so a process
killed at any moment leaves either the old state or the new one:

* a run writes only into ``<out>/<tag>.partial/``;
* success renames it to ``<out>/<tag>/`` and then swaps the ``latest`` symlink
  (new link under a temporary name, then ``os.replace``);
* ``latest_detection.onnx`` / ``latest_classification.onnx`` point *through*
  ``latest`` (``latest/detection.onnx``), so the one ``latest`` swap moves all three
  together and a kill can never leave them pointing at different releases;
* a failed run is renamed to ``<out>/<tag>.failed/``;
* a ``.partial`` left by a killed run is renamed to ``.aborted`` by the next run,
  which holds ``<out>/.release.lock`` (an ``flock`` the kernel drops when a process dies).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pillsnap.exceptions import ReleaseError
from pillsnap.fileio import ensure_dir

log = logging.getLogger(__name__)

PARTIAL, FAILED, ABORTED = ".partial", ".failed", ".aborted"
LATEST = "latest"
TASKS = ("detection", "classification")
LOCK_NAME = ".release.lock"


def partial_dir(out_dir: Path, tag: str) -> Path:
    return out_dir / f"{tag}{PARTIAL}"


@contextmanager
def release_lock(out_dir: Path) -> Iterator[Path]:
    """Hold ``<out>/.release.lock`` for one release; a second concurrent release fails fast."""
    lock_path = ensure_dir(out_dir) / LOCK_NAME
    with open(lock_path, "a+") as fh:  # closing the file drops the flock
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            raise ReleaseError(
                f"another release is running in {out_dir} (lock {lock_path} held by pid {holder}); "
                "wait for it to finish or use another --out-dir"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield lock_path


def set_aside_stale_partials(out_dir: Path) -> list[Path]:
    """Rename ``*.partial`` folders (left by killed runs) to ``*.aborted``; call with the lock held."""
    moved = []
    for stale in sorted(out_dir.glob(f"*{PARTIAL}")):
        if not stale.is_dir():
            continue
        target = _free_name(out_dir, stale.name[: -len(PARTIAL)] + ABORTED)
        os.rename(stale, target)
        log.warning("set aside %s left by an interrupted release -> %s", stale.name, target.name)
        moved.append(target)
    return moved


def check_tag_free(out_dir: Path, tag: str) -> None:
    """Refuse a tag that already names a release or failed record (never overwrite a record)."""
    taken = [p.name for p in (out_dir / tag, out_dir / f"{tag}{FAILED}") if p.exists()]
    if taken:
        raise ReleaseError(
            f"release tag {tag!r} is already used in {out_dir} ({', '.join(taken)}); "
            "pass another --tag (or leave it empty for a new UTC tag)"
        )


def link_model_aliases(
    release_dir: Path, onnx_files: dict[str, Path], suffix: str = ".onnx"
) -> None:
    """Inside a release, ``detection.onnx`` -> ``detection-<tag>.onnx`` (stable names for links).

    ``suffix=".int8.onnx"``: ``detection.int8.onnx`` -> ``detection-<tag>.int8.onnx``.
    """
    for task, target in onnx_files.items():
        _replace_symlink(release_dir / f"{task}{suffix}", Path(target.name))


def promote(partial: Path, out_dir: Path, tag: str) -> Path:
    """Rename the finished ``.partial`` to ``<tag>`` and point ``latest`` at it (atomic swaps)."""
    final = out_dir / tag
    os.rename(partial, final)
    for task in TASKS:
        link = out_dir / f"latest_{task}.onnx"
        target = Path(LATEST) / f"{task}.onnx"
        if not (link.is_symlink() and Path(os.readlink(link)) == target):
            _replace_symlink(link, target)
    _replace_symlink(out_dir / LATEST, Path(tag))
    log.debug("promoted %s; %s -> %s", final, out_dir / LATEST, tag)
    return final


def mark_failed(partial: Path, out_dir: Path, tag: str) -> Path:
    """Keep a failed run's record as ``<tag>.failed`` (``latest`` is not touched)."""
    target = _free_name(out_dir, f"{tag}{FAILED}")
    os.rename(partial, target)
    return target


def current_latest(out_dir: Path) -> Path | None:
    """The release folder ``latest`` points at, or None."""
    link = Path(out_dir) / LATEST
    return link.resolve() if link.is_symlink() and link.resolve().is_dir() else None


def _replace_symlink(link: Path, target: Path) -> None:
    tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


def _free_name(folder: Path, name: str) -> Path:
    candidate, n = folder / name, 1
    while candidate.exists() or candidate.is_symlink():
        n += 1
        candidate = folder / f"{name}-{n}"
    return candidate
