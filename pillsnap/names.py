"""Names a user gives that become file or folder names: tags, stage names, output folders.

A version tag becomes ``runs/<tag>/`` and ``detection-<tag>.onnx``; a stage name becomes
``notebooks/<stage>.ipynb`` and ``runs/<tag>/<stage>.ipynb``. Such a name must stay
inside its folder (not absolute, no ``..``, no separator) and must not collide with the
names the release layout reserves for itself:

* ``latest``, ``latest_<task>.onnx`` -- the links to the newest release;
* ``<tag>.partial``, ``<tag>.failed``, ``<tag>.aborted`` -- a running, failed or killed run;
* ``scratch`` -- where notebooks run on their own write.

Compared case-insensitively: on a case-insensitive file system ``Latest`` is ``latest``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from pillsnap.exceptions import UserInputError

LATEST = "latest"
MANIFEST_NAME = "manifest.json"
"""What seals a release record (``pillsnap.release.manifest``): its presence makes a folder immutable."""
SCRATCH = "scratch"
RECORD_SUFFIXES = (".partial", ".failed", ".aborted")
RESERVED_NAMES = (LATEST, SCRATCH)
INT8_SUFFIX = ".int8.onnx"


def model_file_name(task: str, tag: str, int8: bool = False) -> str:
    """A release's model file: ``<task>-<tag>.onnx``, or ``<task>-<tag>.int8.onnx`` (spec E-1)."""
    return f"{task}-{tag}{INT8_SUFFIX if int8 else '.onnx'}"


_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_RECORD = re.compile(r".*\.(partial|failed|aborted)(-\d+)?", re.IGNORECASE)
MAX_LENGTH = 128


def reserved_reason(name: str) -> str | None:
    """Why ``name`` is one of the release layout's own names, or None."""
    low = name.lower()
    if low in RESERVED_NAMES:
        return f"{name!r} is reserved for runs/{low}"
    if low.startswith("latest_") and low.endswith(".onnx"):
        return f"{name!r} is reserved for the latest_<task>.onnx links"
    if _RECORD.fullmatch(low):
        return f"{name!r} ends like a run record ({', '.join(RECORD_SUFFIXES)})"
    return None


def escape_reason(name: str) -> str | None:
    """Why ``name`` would not stay a plain name inside its folder, or None."""
    if not name:
        return "it is empty"
    if "\x00" in name or any(ord(c) < 32 for c in name):
        return "it contains control characters"
    if os.path.isabs(name) or name.startswith(("/", "\\", "~")):
        return "it is an absolute path"
    if name in (".", "..") or ".." in name:
        return "it contains '..'"
    if "/" in name or "\\" in name:
        return "it contains a path separator"
    if len(name) > MAX_LENGTH:
        return f"it is longer than {MAX_LENGTH} characters"
    return None


def check_name(name: str, what: str, key: str, example: str, becomes: str = "a folder name") -> str:
    """``name`` when it is a plain, unreserved name of letters, digits, '-' and '_'.

    ``what`` says what it names, ``key`` the option or config key it came from, so the
    message names both; raises ``UserInputError`` otherwise.
    """
    text = str(name)
    why = escape_reason(text) or reserved_reason(text)
    if why is None and not _SAFE.fullmatch(text):
        why = "only letters, digits, '-' and '_' are allowed, starting with a letter or digit"
    if why:
        raise UserInputError(
            f"{what} {text!r} (from {key}) is not usable as {becomes}: {why}. "
            f"Use a plain name such as {example!r}."
        )
    return text


def check_tag(tag: str, key: str = "--tag / version_tag") -> str:
    """A version tag: ``runs/<tag>/`` and ``<task>-<tag>.onnx``."""
    return check_name(tag, "release tag", key, "20250101-120000-abc1234")


def check_stage_name(name: str, key: str = "--stages / release.stages") -> str:
    """A stage: the stem of a notebook in the notebooks folder."""
    return check_name(name, "stage name", key, "equivalence", "a notebook name")


def inside(path: str | Path, folder: str | Path) -> bool:
    """True when ``path`` (symlinks resolved) is ``folder`` or below it."""
    real, base = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([real, base]) == base


def is_release_record(folder: str | Path) -> bool:
    """A folder the release driver wrote and sealed with a manifest (immutable from then on)."""
    return (Path(folder) / MANIFEST_NAME).is_file()


def record_of(path: str | Path) -> Path | None:
    """The release record ``path`` is (or lies inside), symlinks resolved; None if none."""
    p = Path(os.path.realpath(path))
    for folder in (p, *p.parents):
        if is_release_record(folder):
            return folder
    return None
