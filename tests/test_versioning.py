import re
import subprocess
from datetime import UTC, datetime

from pillsnap.versioning import (
    get_git_sha,
    git_is_dirty,
    iso_utc,
    prepare_version_tag,
    utc_timestamp,
)


def test_timestamp_format():
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert utc_timestamp(when) == "20260102-030405"
    assert iso_utc(when) == "2026-01-02T03:04:05Z"
    assert re.fullmatch(r"\d{8}-\d{6}", utc_timestamp())


def test_tag_outside_git_is_nogit(tmp_path):
    assert get_git_sha(tmp_path) == "nogit"
    assert git_is_dirty(tmp_path) is None
    assert re.fullmatch(r"\d{8}-\d{6}-nogit", prepare_version_tag(cwd=tmp_path))


def test_tag_in_git_repo_has_short_sha_and_dirty_flag(tmp_path):
    run = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)
    run("init", "-q")
    (tmp_path / "f.txt").write_text("a")
    run("add", "f.txt")
    run("-c", "user.email=a@b", "-c", "user.name=t", "commit", "-qm", "x")
    sha = get_git_sha(tmp_path)
    assert re.fullmatch(r"[0-9a-f]{7}", sha)
    assert prepare_version_tag(cwd=tmp_path).endswith("-" + sha)
    assert git_is_dirty(tmp_path) is False
    (tmp_path / "f.txt").write_text("b")
    assert git_is_dirty(tmp_path) is True
