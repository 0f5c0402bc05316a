"""Where a run may write: folders that can be written, never a release record, never an input.

A release folder (``runs/<tag>/``, ``.failed/``) is an immutable record: its
``manifest.json`` pins every byte. A comparison or an inference that wrote into it
would break ``release verify`` and, worse, change what ``latest`` serves. ``latest``
(a link) and the record suffixes are refused by name, since they are the release
layout's own.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pillsnap.exceptions import UserInputError
from pillsnap.names import MANIFEST_NAME, record_of, reserved_reason


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and not p.is_symlink() and p != p.parent:
        p = p.parent
    return p


def _writable(folder: Path) -> str | None:
    """Why nothing can be created in ``folder`` (tested by creating a file), or None."""
    if not os.access(folder, os.W_OK | os.X_OK):
        return "is not writable (permission denied)"
    try:
        fd, probe = tempfile.mkstemp(prefix=".pillsnap-write-test-", dir=folder)
    except OSError as exc:
        return f"is not writable ({exc.strerror or exc})"
    os.close(fd)
    os.unlink(probe)
    return None


def check_output_dir(path: str | Path, key: str, protect_records: bool = True) -> Path:
    """``path`` if the run can create and write it; else ``UserInputError`` naming ``key``.

    Refused: a file, a folder under a file, a read-only folder, and (``protect_records``)
    a release record or anything inside one, ``latest`` and the record suffixes.
    """
    path = Path(path).expanduser()
    shown = f"{path} (from {key})"
    if protect_records:
        why = reserved_reason(path.name) if path.name else None
        if why:
            raise UserInputError(
                f"refusing to write into {shown}: {why}, the release layout's own name. "
                f"Write into a new folder (e.g. runs/scratch/<name>) instead."
            )
        record = record_of(path)
        if record is not None:
            raise UserInputError(
                f"refusing to write into {shown}: it is inside the release record {record} "
                f"(sealed by its {MANIFEST_NAME}; anything written there breaks `pillsnap release "
                f"verify` and changes what is served). Write into a new folder instead, e.g. "
                f"runs/scratch/<name>."
            )
    if path.exists() and not path.is_dir():
        raise UserInputError(
            f"output folder {shown} is a file, not a folder; pass a folder path (it is created "
            f"if missing)."
        )
    base = _nearest_existing(path)
    if not base.is_dir():
        raise UserInputError(
            f"output folder {shown} cannot be created: {base} is a file, not a folder; "
            f"pass a path under an existing folder."
        )
    why = _writable(base)
    if why:
        where = "" if base == path else f" (its nearest existing folder {base})"
        raise UserInputError(f"output folder {shown}{where} {why}; pass a folder you can write to.")
    return path


def check_output_file(path: str | Path, key: str, inputs: list[Path], force: bool = False) -> Path:
    """``path`` if a result file may be written there; the parent is created later if missing.

    Refused: one of ``inputs`` (it would be destroyed), a folder, an existing file
    without ``force``, a file inside a release record, a parent that is a file or read-only.
    """
    path = Path(path).expanduser()
    shown = f"{path} (from {key})"
    if path.name in ("", ".", ".."):
        raise UserInputError(f"{shown} does not name a file; pass e.g. --out results.jsonl")
    real = os.path.realpath(path)
    for item in inputs:
        if os.path.realpath(item) == real:
            raise UserInputError(
                f"refusing to write {shown}: it is one of the inputs ({item}); writing the "
                f"results there would destroy it. Pass another --out file."
            )
    if path.is_dir():
        raise UserInputError(
            f"{shown} is a folder; pass a file path for the results, e.g. {path / 'results.jsonl'}"
        )
    if path.exists() and not force:
        raise UserInputError(
            f"refusing to overwrite {shown}: the file exists. Pass --force to replace it, or "
            f"another --out file."
        )
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise UserInputError(
            f"cannot write {shown}: {base} is a file, not a folder, so the results' folder "
            f"cannot be created; pass a path under a folder."
        )
    record = record_of(base)
    if record is not None:
        raise UserInputError(
            f"refusing to write {shown}: it is inside the release record {record}; "
            f"write the results elsewhere."
        )
    check_output_dir(path.parent, f"the folder of {key}", protect_records=False)
    return path
