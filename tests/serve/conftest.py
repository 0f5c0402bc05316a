"""Fixtures of the serving tests: two verified demo releases and one real server on them.

``releases``: ``<root>/runs/`` holding release A (the session's demo export) and
release B (the same models under another tag, finished a day later). ``server``: a
real ``pillsnap serve`` process with ``MODEL_PATH`` = A, an admin token, small upload
and pixel limits; shared by the upload, fuzz, page and reload tests, which read the
version it serves instead of assuming it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from _demo_release import demo_release
from _serving import MAX_PIXELS, MAX_UPLOAD, ServerProcess, build_release, write_config

from pillsnap.config import Config

TAG_A, TAG_B = "20250101-000000-test000", "20250102-000000-test001"


@dataclass
class Releases:
    cfg: Config
    exports: dict
    root: Path
    runs: Path
    a: Path
    b: Path
    photos: list[Path]


@dataclass
class Server:
    proc: ServerProcess
    url: str
    token: str
    releases: Releases
    initial: dict
    """``GET /v1/model`` right after the start (later tests may reload)."""


@pytest.fixture(scope="session")
def releases(tmp_path_factory) -> Releases:
    cfg, exports = demo_release(tmp_path_factory)
    root = tmp_path_factory.mktemp("serve")
    runs = root / "runs"
    a = build_release(runs, TAG_A, cfg, exports, "2025-01-01T00:00:00Z")
    b = build_release(runs, TAG_B, cfg, exports, "2025-01-02T00:00:00Z")
    val = Path(cfg.paths.detection_data).parent / "images" / "val"
    photos = sorted(val.glob("*.jpg"))[:16]
    assert len(photos) == 16, f"demo val photos missing in {val}"
    return Releases(cfg, exports, root, runs, a, b, photos)


@pytest.fixture(scope="session")
def server(releases) -> Server:
    token = secrets.token_urlsafe(24)
    config = write_config(releases.root / "config.yaml", releases.cfg, releases.runs)
    proc = ServerProcess.start(
        releases.root / "s1",
        config,
        env={
            "MODEL_PATH": str(releases.a),
            "PILLSNAP_ADMIN_TOKEN": token,
            "PILLSNAP_SERVE_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
            "PILLSNAP_SERVE_MAX_IMAGE_PIXELS": str(MAX_PIXELS),
        },
    )
    initial = httpx.get(proc.url + "/v1/model").json()
    yield Server(proc, proc.url, token, releases, initial)
    assert proc.stop() == 0
