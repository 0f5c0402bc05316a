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
  which holds ``<out>/.release.lock`` (an ``flock`` the kernel drops when a process dies);
  ``pillsnap release list`` shows them, ``pillsnap release clean --aborted`` removes them.

The rename and the ``latest`` swap are two steps. Between them ``runs/latest`` and
``pillsnap release latest`` (the newest verified release) could disagree, so the
promotion is journalled: ``<out>/.promoting`` names the tag from before the rename
until after the swap, ``find_newest_release`` does not count a tag still in the
journal, and the next run completes (or undoes) the promotion before anything else
(``repair_latest``), then re-points ``latest`` at the newest verified release if
they still disagree (e.g. the release it pointed at was tampered with).
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
from pillsnap.fileio import atomic_write_bytes, ensure_dir
from pillsnap.release.manifest import PROMOTION_JOURNAL

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
    journal = out_dir / PROMOTION_JOURNAL
    atomic_write_bytes(journal, tag.encode())
    final = out_dir / tag
    os.rename(partial, final)
    _point_latest(out_dir, tag)
    journal.unlink()
    log.debug("promoted %s; %s -> %s", final, out_dir / LATEST, tag)
    return final


def _point_latest(out_dir: Path, tag: str) -> None:
    for task in TASKS:
        link = out_dir / f"latest_{task}.onnx"
        target = Path(LATEST) / f"{task}.onnx"
        if not (link.is_symlink() and Path(os.readlink(link)) == target):
            _replace_symlink(link, target)
    _replace_symlink(out_dir / LATEST, Path(tag))


def repair_latest(out_dir: Path) -> str | None:
    """Make ``latest`` and the newest verified release agree again; call with the lock held.

    First an interrupted promotion (``.promoting`` left behind) is completed when its
    release verifies, or dropped; then, if ``latest`` still is not the newest verified
    release, it is re-pointed (or removed when no release verifies). Returns what was
    done, for the log, or None.
    """
    from pillsnap.release.manifest import find_newest_release, verify_release

    journal = out_dir / PROMOTION_JOURNAL
    done = None
    if journal.is_file():
        tag = journal.read_text().strip()
        partial, final = partial_dir(out_dir, tag), out_dir / tag
        # killed between the journal and the rename: the record is complete, finish the job
        ready = tag and partial.is_dir() and not final.exists()
        if ready and verify_release(partial, require_passed=True).ok:
            os.rename(partial, final)
        if tag and final.is_dir() and verify_release(final, require_passed=True).ok:
            _point_latest(out_dir, tag)
            done = f"completed the interrupted promotion of {tag}"
        journal.unlink()
    newest, current = find_newest_release(out_dir), current_latest(out_dir)
    if newest is not None and newest.resolve() != current:
        _point_latest(out_dir, newest.name)
        done = f"latest -> {newest.name} (the newest verified release; it was {current})"
    elif newest is None and (out_dir / LATEST).is_symlink():
        (out_dir / LATEST).unlink()
        done = "removed latest: no release in the folder verifies"
    if done:
        log.warning("%s: %s", out_dir, done)
    return done


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


def list_records(out_dir: Path) -> list[dict[str, str]]:
    """Every run record in ``out_dir``: name, status (released, latest, failed, aborted,
    partial), tag and size, oldest first; what ``pillsnap release list`` prints."""
    latest = current_latest(out_dir)
    rows = []
    for folder in sorted(p for p in Path(out_dir).iterdir() if p.is_dir() and not p.is_symlink()):
        name = folder.name
        status = next((s[1:] for s in (PARTIAL, FAILED, ABORTED) if s in name), None)
        if status is None:
            if not (folder / "manifest.json").is_file():
                continue  # not a run record (scratch, a compare output, ...)
            status = "latest" if latest == folder.resolve() else "released"
        size = sum(
            f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink()
        )
        rows.append({"name": name, "status": status, "size_mb": f"{size / 1e6:.1f}"})
    return rows


def clean_records(out_dir: Path, statuses: tuple[str, ...], dry_run: bool = False) -> list[Path]:
    """Remove the ``aborted`` (and/or ``failed``) records in ``out_dir``; never a release.

    Holds the release lock, so a run in progress is never touched; only folders
    directly in ``out_dir`` whose name ends like such a record are removed.
    """
    import re
    import shutil

    suffixes = {"aborted": ABORTED, "failed": FAILED}
    pattern = re.compile(
        r"[A-Za-z0-9][A-Za-z0-9_-]*("
        + "|".join(re.escape(suffixes[s]) for s in statuses)
        + r")(-\d+)?"
    )
    removed = []
    with release_lock(out_dir):
        for folder in sorted(Path(out_dir).iterdir()):
            if folder.is_symlink() or not folder.is_dir() or not pattern.fullmatch(folder.name):
                continue
            if not dry_run:
                shutil.rmtree(folder)
            removed.append(folder)
    return removed
