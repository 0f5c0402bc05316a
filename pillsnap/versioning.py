"""Release version tags: ``<UTC %Y%m%d-%H%M%S>-<git short sha | nogit>``."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path

TIMESTAMP_FORMAT = "%Y%m%d-%H%M%S"


def utc_now() -> datetime:
    return datetime.now(UTC)


def utc_timestamp(when: datetime | None = None) -> str:
    return (when or utc_now()).astimezone(UTC).strftime(TIMESTAMP_FORMAT)


def iso_utc(when: datetime | None = None) -> str:
    """ISO 8601 with a ``Z`` suffix, second precision (``exported_at_utc``)."""
    return (when or utc_now()).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _git(args: list[str], cwd: Path | None) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def get_git_sha(cwd: str | Path | None = None) -> str:
    """Seven-character HEAD sha, or ``nogit`` outside a repository / before the first commit."""
    sha = _git(["rev-parse", "--short=7", "HEAD"], Path(cwd) if cwd else None)
    return sha[:7] if sha else "nogit"


def git_is_dirty(cwd: str | Path | None = None) -> bool | None:
    """True when tracked files differ from HEAD; None outside a repository."""
    status = _git(["status", "--porcelain", "--untracked-files=no"], Path(cwd) if cwd else None)
    return None if status is None else bool(status)


def prepare_version_tag(when: datetime | None = None, cwd: str | Path | None = None) -> str:
    return f"{utc_timestamp(when)}-{get_git_sha(cwd)}"
