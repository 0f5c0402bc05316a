"""``pillsnap serve`` as a process: each start-up source, a refused start, a busy port,
reload disabled without a token, and SIGTERM while requests are in flight.
"""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest
from _serving import (
    ServerProcess,
    assert_error,
    copy_release,
    rewrite_manifest,
    tamper,
    write_config,
)


@pytest.fixture(scope="module")
def runs_abc(releases, tmp_path_factory):
    """An out_dir with A, B and a newer, tampered C."""
    root = tmp_path_factory.mktemp("cli")
    runs = root / "runs"
    runs.mkdir()
    copy_release(releases.a, runs / releases.a.name)
    copy_release(releases.b, runs / releases.b.name)
    c = copy_release(releases.b, runs / "20250103-000000-test002")
    rewrite_manifest(c, c.name, "2025-01-03T00:00:00Z")
    tamper(c)
    return root, runs, c, write_config(root / "config.yaml", releases.cfg, runs)


def test_tampered_model_path_refuses_to_start_with_the_reason(runs_abc):
    root, _, c, config = runs_abc
    proc = ServerProcess.start(
        root / "refused", config, env={"MODEL_PATH": str(c)}, wait_ready=False
    )
    assert proc.wait_exit(60) == 2
    log = proc.log()
    assert "listening on" not in log and "Traceback" not in log
    assert f"MODEL_PATH={c} refused" in log and "changed: classification-" in log
    assert "serve.strict=false" in log  # says how to get past it


def test_busy_port_fails_before_loading(runs_abc):
    root, _, _, config = runs_abc
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = ServerProcess.start(
            root / "busy", config, args=("--port", str(port)), wait_ready=False
        )
        assert proc.wait_exit(60) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in proc.log() and "serving" not in proc.log()


@pytest.fixture(scope="module")
def fallthrough(runs_abc):
    """MODEL_PATH (tampered) and strict=false from a .env file; no admin token."""
    root, _, c, config = runs_abc
    work = root / "s2"
    work.mkdir()
    (work / ".env").write_text(f"MODEL_PATH={c}\nPILLSNAP_SERVE_STRICT=false\nUNRELATED=1\n")
    proc = ServerProcess.start(work, config)
    yield proc
    proc.kill()


def test_strict_false_falls_through_to_the_newest_verified_release(fallthrough, releases):
    info = httpx.get(fallthrough.url + "/v1/model").json()
    assert (info["source"], info["version"]) == ("newest_release", releases.b.name)
    assert "MODEL_PATH=" in fallthrough.log() and "serve.strict=false" in fallthrough.log()


def test_reload_is_disabled_without_a_token(fallthrough, releases):
    for headers in ({}, {"authorization": "Bearer anything"}):
        r = httpx.post(
            fallthrough.url + "/reload", json={"model_path": releases.a.name}, headers=headers
        )
        assert_error(r, 403, "PILLSNAP_ADMIN_TOKEN")
    assert httpx.get(fallthrough.url + "/v1/model").json()["version"] == releases.b.name


def _in_flight(url: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith("pillsnap_in_flight_requests "):
            return float(line.split()[1])
    return 0.0


@pytest.mark.slow
def test_sigterm_lets_in_flight_requests_finish_then_exits_0(fallthrough, releases):
    files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in releases.photos[:4]]
    results: list[int | str] = []

    def client() -> None:
        try:
            r = httpx.post(fallthrough.url + "/v1/predict/batch", files=files, timeout=120)
            results.append(r.status_code if r.status_code != 200 else len(r.json()["results"]))
        except httpx.HTTPError as exc:
            results.append(repr(exc))

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while _in_flight(fallthrough.url) < 7:  # six batches and this metrics request
        assert time.monotonic() < deadline, "requests never got in flight"
        time.sleep(0.02)
    fallthrough.proc.send_signal(15)
    time.sleep(0.5)
    with pytest.raises(httpx.ConnectError):  # the listening socket is closed at once
        httpx.get(fallthrough.url + "/health/live", timeout=5)
    for t in threads:
        t.join(120)
    assert results == [4] * 6, results  # every in-flight request completed, all four photos
    assert fallthrough.wait_exit(60) == 0
    log = fallthrough.log()
    assert "Waiting for application shutdown" in log and "pillsnap serve: stopped" in log


@pytest.mark.slow
def test_torch_fallback_serves_degraded(releases, tmp_path):
    empty = tmp_path / "runs"
    empty.mkdir()
    config = write_config(tmp_path / "config.yaml", releases.cfg, empty)
    # max_batch 1: Torch eager on the CPU is slow, warm it up on one photo only
    proc = ServerProcess.start(
        tmp_path / "s4", config, env={"PILLSNAP_SERVE_MAX_BATCH": "1"}, wait_ready=False
    )
    try:
        assert proc.url.startswith("http://127.0.0.1:")  # loopback unless told otherwise
        # listening at once, not ready until the (slow, Torch) model is loaded and warm
        assert httpx.get(proc.url + "/health/live", timeout=10).status_code == 200
        assert_error(httpx.get(proc.url + "/health/ready", timeout=10), 503, "not ready")
        photo = releases.photos[1].read_bytes()
        early = httpx.post(proc.url + "/v1/predict", files={"file": ("p.jpg", photo)}, timeout=30)
        assert_error(early, 503, "loading")
        proc.wait_ready()
        ready = httpx.get(proc.url + "/health/ready").json()
        assert ready["status"] == "degraded" and ready["degraded"] is True
        info = httpx.get(proc.url + "/v1/model").json()
        assert (info["source"], info["engine"], info["degraded"]) == (
            "torch_fallback",
            "torch",
            True,
        )
        assert info["version"].startswith("torch-") and len(info["files"]) == 2
        assert any("degraded" in w for w in info["warnings"])
        r = httpx.post(proc.url + "/v1/predict", files={"file": ("p.jpg", photo)}, timeout=60)
        assert r.status_code == 200 and r.json()["degraded"] is True and r.json()["pills"]
    finally:
        assert proc.stop() == 0
