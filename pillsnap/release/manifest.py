"""``manifest.json``: what a release folder holds, and how to check that it still does.

The manifest is written LAST into a release folder; it pins every artifact by
sha256 and size, and records how the release was made (tag, git state, command,
parameters, config, library versions, machine, providers, times, verdict).
``verify_release`` recomputes it; ``find_newest_release`` is what the serving side
uses to pick a model ("newest" = newest *verified* release, never newest file).
"""

from __future__ import annotations

import json
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pillsnap.fileio import save_json, sha256_file
from pillsnap.names import MANIFEST_NAME

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "pillsnap-release-v1"
REPORT_NAME = "export_report.json"
PROMOTION_JOURNAL = ".promoting"
"""Names the tag being promoted, from before its rename until ``latest`` points at it."""


def hash_artifacts(folder: Path) -> dict[str, dict[str, Any]]:
    """Every entry under ``folder`` (except the manifest) -> sha256 + size; symlinks -> target.

    Hidden and temporary names are included: anything in a release folder is part of
    its record. Symlinks are recorded, never followed; other special files are recorded
    as such so that verification can name them.
    """
    entries: dict[str, dict[str, Any]] = {}
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in sorted(dirs + files):
            path = Path(root) / name
            rel = path.relative_to(folder).as_posix()
            if rel == MANIFEST_NAME:
                continue
            if path.is_symlink():
                entries[rel] = {"link": os.readlink(path)}
            elif path.is_file():
                entries[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
            elif not path.is_dir():
                entries[rel] = {"special": stat.filemode(path.lstat().st_mode)}
    return dict(sorted(entries.items()))


def _folders(folder: Path) -> list[str]:
    """Every real sub-folder of ``folder`` (relative), for the "not in the manifest" check."""
    out = []
    for root, dirs, _files in os.walk(folder, followlinks=False):
        out += [
            (Path(root) / d).relative_to(folder).as_posix()
            for d in dirs
            if not (Path(root) / d).is_symlink()
        ]
    return sorted(out)


def write_manifest(folder: Path, record: dict[str, Any]) -> Path:
    """Hash the folder and write ``manifest.json`` (atomically) with ``record`` around it."""
    manifest = {"format": MANIFEST_FORMAT, **record, "artifacts": hash_artifacts(folder)}
    return save_json(folder / MANIFEST_NAME, manifest)


def read_manifest(release_dir: str | Path) -> dict[str, Any]:
    path = Path(release_dir) / MANIFEST_NAME
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise ValueError(
            f"{path}: format is {data.get('format') if isinstance(data, dict) else None!r}, "
            f"expected {MANIFEST_FORMAT!r}"
        )
    return data


@dataclass
class VerifyResult:
    """Outcome of ``verify_release``; ``problems`` is empty exactly when ``ok``."""

    release_dir: Path
    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    manifest: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if self.ok:
            n = len((self.manifest or {}).get("artifacts", {}))
            return f"OK {self.release_dir}: {n} artifacts match manifest.json"
        lines = "\n".join(f"  - {p}" for p in self.problems)
        return f"FAILED {self.release_dir}: {len(self.problems)} problem(s)\n{lines}"


def verify_release(release_dir: str | Path, require_passed: bool = False) -> VerifyResult:
    """Recompute every artifact's hash against the manifest and validate the report schema."""
    release_dir = Path(release_dir)
    result = VerifyResult(release_dir)
    if not (release_dir / MANIFEST_NAME).is_file():
        result.problems.append(
            f"{MANIFEST_NAME} missing in {release_dir}: not a release folder or the run "
            "was interrupted before it finished"
        )
        return result
    try:
        result.manifest = manifest = read_manifest(release_dir)
    except (ValueError, OSError) as exc:
        result.problems.append(f"{MANIFEST_NAME} unreadable: {exc}")
        return result
    expected: dict[str, dict[str, Any]] = manifest.get("artifacts", {})
    actual = hash_artifacts(release_dir)
    for rel, want in expected.items():
        have = actual.get(rel)
        if have is None:
            result.missing.append(rel)
            result.problems.append(f"missing: {rel}")
        elif have != want:
            result.changed.append(rel)
            result.problems.append(f"changed: {rel} ({_describe_change(want, have)})")
    for rel in sorted(set(actual) - set(expected)):
        result.unexpected.append(rel)
        result.problems.append(f"not in manifest: {rel}")
    for rel in _folders(release_dir):  # an empty folder holds no file the loop above sees
        if rel not in expected and not any(k.startswith(f"{rel}/") for k in expected):
            result.unexpected.append(f"{rel}/")
            result.problems.append(f"not in manifest: {rel}/ (a folder)")
    if require_passed and manifest.get("verdict") != "passed":
        result.problems.append(f"verdict is {manifest.get('verdict')!r}, not 'passed'")
    report = release_dir / REPORT_NAME
    if REPORT_NAME in expected and report.is_file():
        problems = validate_report_file(report)
        result.problems += [f"{REPORT_NAME}: {p}" for p in problems]
        if not problems:
            result.problems += manifest_disagrees(release_dir, manifest, report)
    return result


def manifest_disagrees(release_dir: Path, manifest: dict[str, Any], report: Path) -> list[str]:
    """Where the manifest's own record contradicts the report it pins.

    Hashes alone cannot see a manifest edited by hand: a failed comparison relabelled
    ``passed``, a report copied in from another release, ONNX files swapped with their
    hashes updated in the manifest but not in the report.
    """
    data = json.loads(report.read_text())
    tag, verdict = str(manifest.get("tag", "")), manifest.get("verdict")
    problems = []
    if data.get("version_tag") != tag:
        problems.append(
            f"manifest tag {tag!r} but {REPORT_NAME} is of release {data.get('version_tag')!r}"
        )
    report_failed = bool(data.get("failed")) or bool((data.get("verdict") or {}).get("failed"))
    if verdict == "passed" and report_failed:
        problems.append(
            f"manifest verdict 'passed' but {REPORT_NAME} records a failed comparison "
            f"({data.get('failure_reason') or 'failed: true'})"
        )
    if verdict == "passed" and manifest.get("failure_reason"):
        problems.append(
            f"manifest verdict 'passed' but it carries a failure_reason: {manifest['failure_reason']}"
        )
    if verdict == "passed":
        bad = [st.get("name") for st in manifest.get("stages", []) if st.get("status") != "passed"]
        if bad:
            problems.append(f"manifest verdict 'passed' but stage(s) {bad} did not pass")
    artifacts = manifest.get("artifacts", {})
    for task, entry in (data.get("models") or {}).items():
        onnx = Path(str(entry.get("onnx_path", ""))).name
        pinned = (artifacts.get(onnx) or {}).get("sha256")
        if pinned and entry.get("onnx_sha256") and pinned != entry["onnx_sha256"]:
            problems.append(
                f"{onnx}: manifest sha256 {pinned[:12]}... but {REPORT_NAME} compared "
                f"{str(entry['onnx_sha256'])[:12]}... ({task}): not the file that was measured"
            )
    return problems


def validate_report_file(path: Path) -> list[str]:
    """Schema problems of an ``export_report.json`` ([] when valid), via ``pillsnap.report.schema``."""
    from pillsnap.report.schema import validate_report

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return [f"not readable JSON: {exc}"]
    return list(validate_report(data))


def _describe_change(want: dict[str, Any], have: dict[str, Any]) -> str:
    if "link" in want or "link" in have:
        return f"link {want.get('link')!r} -> {have.get('link')!r}"
    if want.get("size") != have.get("size"):
        return f"size {want.get('size')} -> {have.get('size')} bytes"
    return f"sha256 {want.get('sha256', '')[:12]}... -> {have.get('sha256', '')[:12]}..., same size"


def is_release_dir_name(name: str) -> bool:
    """A promoted release folder: not hidden, no ``.partial`` / ``.failed`` / ``.aborted`` suffix."""
    return not name.startswith(".") and "." not in name and name != "latest"


def find_newest_release(out_dir: str | Path, verify: bool = True) -> Path | None:
    """The newest release in ``out_dir`` whose manifest says passed and (if ``verify``) verifies.

    Newest is decided by the manifest's ``finished_at_utc`` (then the tag), never by file
    times, which copies and restores change. A release that fails verification is
    skipped with a warning, so a corrupted newest release falls back to the previous one.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return None
    promoting = _being_promoted(out_dir)
    candidates = []
    for folder in out_dir.iterdir():
        if not (folder.is_dir() and not folder.is_symlink() and is_release_dir_name(folder.name)):
            continue
        if folder.name == promoting:  # renamed, `latest` not swapped yet: not released yet
            continue
        try:
            manifest = read_manifest(folder)
        except (ValueError, OSError):
            continue
        if manifest.get("verdict") == "passed":
            candidates.append(
                (str(manifest.get("finished_at_utc", "")), str(manifest.get("tag", "")), folder)
            )
    for _, _, folder in sorted(candidates, reverse=True):
        if not verify:
            return folder
        check = verify_release(folder, require_passed=True)
        if check.ok:
            return folder
        log.warning("skipping release %s: %s", folder, "; ".join(check.problems[:3]))
    return None


def _being_promoted(out_dir: Path) -> str | None:
    """The tag of an unfinished promotion (``latest`` does not point at it yet), or None."""
    journal = out_dir / PROMOTION_JOURNAL
    try:
        tag = journal.read_text().strip()
    except OSError:
        return None
    latest = out_dir / "latest"
    points_at = os.readlink(latest) if latest.is_symlink() else None
    return tag if tag and points_at != tag else None
