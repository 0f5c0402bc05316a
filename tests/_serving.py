"""Helpers of the serving tests: releases made from the demo export, a real ``pillsnap serve``.

``build_release`` turns the session's demo export (``_demo_release.demo_release``) into a
release folder the way the driver lays one out: ``<task>-<tag>.onnx`` (the tag written
into the ONNX metadata too), the ``<task>.onnx`` aliases, ``config.yaml``, a
schema-valid ``export_report.json`` naming those files and their sha256, and
``manifest.json`` written by ``pillsnap.release.manifest.write_manifest``, so that
``verify_release`` accepts it. ``ServerProcess`` runs ``python -m pillsnap.cli serve`` as
a real uvicorn process on a free loopback port; as root it runs without the
capabilities that bypass file permissions, so an unreadable file is unreadable to it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from pillsnap.config import Config
from pillsnap.environment import library_versions
from pillsnap.fileio import sha256_file
from pillsnap.release.manifest import verify_release, write_manifest

REPO = Path(__file__).resolve().parents[1]
TASKS = ("detection", "classification")
PHOTOS = REPO / "pillsnap" / "serve" / "static"
MAX_UPLOAD = 2_000_000  # the shared test server's serve.max_upload_bytes
MAX_PIXELS = 4_000_000  # ... and serve.max_image_pixels


def assert_error(r: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    """An error response in the API's one shape, with the status and words expected."""
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error", "request_id"}, body
    assert body["request_id"] == r.headers["x-request-id"]
    for word in words:
        assert word in body["error"], (word, body["error"])
    return body


def build_release(
    out_dir: Path, tag: str, cfg: Config, exports: dict[str, Any], finished_at: str
) -> Path:
    """A verified release ``out_dir/<tag>`` holding the demo export's two models."""
    from _report_example import example_report

    from pillsnap.models.common import META_TAG, write_onnx_metadata
    from pillsnap.report.schema import validate_report

    folder = out_dir / tag
    folder.mkdir(parents=True)
    report = example_report()
    report["version_tag"] = tag
    for task in TASKS:
        res = exports[task]
        dst = folder / f"{task}-{tag}.onnx"
        shutil.copyfile(res.onnx_path, dst)
        if res.tag != tag:
            write_onnx_metadata(dst, {META_TAG: tag})
        (folder / f"{task}.onnx").symlink_to(dst.name)
        report["models"][task].update(
            backbone=res.arch,
            num_classes=res.num_classes,
            ckpt_path=res.ckpt_path,
            onnx_path=str(dst),
            onnx_sha256=sha256_file(dst),
            input_shape=res.input_shape,
            opset=res.opset,
            metadata=dict(res.metadata, **{META_TAG: tag}),
        )
    problems = validate_report(report)
    assert not problems, problems
    (folder / "export_report.json").write_text(json.dumps(report, indent=2))
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg.snapshot(), sort_keys=False))
    rewrite_manifest(folder, tag, finished_at)
    check = verify_release(folder, require_passed=True)
    assert check.ok, check.summary()
    return folder


def rewrite_manifest(folder: Path, tag: str, finished_at: str = "2025-01-01T00:00:00Z") -> None:
    """Hash the folder as it is now (a deliberately broken release that still verifies)."""
    write_manifest(
        folder,
        {
            "tag": tag,
            "verdict": "passed",
            "failure_reason": None,
            "started_at_utc": finished_at,
            "finished_at_utc": finished_at,
            "versions": library_versions(),
        },
    )


def tamper(folder: Path) -> Path:
    """Flip one byte of the classifier, same size: only the hash can tell."""
    onnx = next(folder.glob("classification-*.onnx"))
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx.write_bytes(bytes(data))
    return folder


def copy_release(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def write_config(path: Path, cfg: Config, out_dir: Path, **serve: Any) -> Path:
    """The demo config with ``paths.out_dir`` (and ``serve`` keys) replaced, as a YAML file."""
    data = cfg.snapshot()
    data["paths"]["out_dir"] = str(out_dir)
    data["serve"].update({k: str(v) if isinstance(v, Path) else v for k, v in serve.items()})
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _drop_privileges() -> list[str]:
    """As root: run without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH (mode bits then apply)."""
    if os.geteuid() == 0 and shutil.which("setpriv"):
        return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
    return []


class ServerProcess:
    """``pillsnap serve`` in a subprocess; output in ``log_path``; ``url`` once listening."""

    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path, url: str):
        self.proc, self.log_path, self.url = proc, log_path, url

    @classmethod
    def start(
        cls,
        workdir: Path,
        config: Path,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        wait_ready: bool = True,
        timeout_s: float = 180,
    ) -> ServerProcess:
        workdir.mkdir(parents=True, exist_ok=True)
        log_path = workdir / f"server-{time.monotonic_ns()}.log"
        clean = {
            k: v
            for k, v in os.environ.items()
            if k != "MODEL_PATH" and not k.startswith(("PILLSNAP_", "PYTEST_"))
        }
        clean["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
        cmd = [*_drop_privileges(), sys.executable, "-m", "pillsnap.cli", "serve"]
        cmd += ["--config", str(config), "--port", "0", *args]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                cmd, cwd=workdir, env={**clean, **(env or {})}, stdout=log, stderr=log
            )
        server = cls(proc, log_path, "")
        server.url = server._wait_listening(timeout_s)
        if wait_ready:
            server.wait_ready(timeout_s)
        return server

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _wait_listening(self, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = re.search(r"listening on (http://[\d.]+:\d+)", self.log())
            if found:
                return found.group(1)
            if self.proc.poll() is not None:
                return ""  # exited before listening (a refused start): callers check returncode
            time.sleep(0.1)
        self.kill()
        raise AssertionError(f"server did not listen within {timeout_s} s:\n{self.log()}")

    def wait_ready(self, timeout_s: float = 180) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (
                f"server exited ({self.proc.returncode}):\n{self.log()}"
            )
            try:
                r = httpx.get(self.url + "/health/ready", timeout=5)
                if r.status_code == 200:
                    return r.json()
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"server not ready within {timeout_s} s:\n{self.log()}")

    def wait_exit(self, timeout_s: float = 60) -> int:
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"server did not exit within {timeout_s} s:\n{self.log()}"
            ) from None

    def stop(self, timeout_s: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait_exit(timeout_s)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def memory_kb(self, key: str = "VmHWM") -> int:
        """``VmHWM`` (peak resident memory) or ``VmRSS`` of the server process, in kB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
        raise AssertionError(f"no {key} in /proc status")

    def reset_peak(self) -> int:
        """Restart the peak at the current resident size (``clear_refs`` 5); returns VmRSS."""
        try:
            Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")
        except OSError:
            pass  # then VmHWM keeps the older peak: a weaker, still valid upper bound
        return self.memory_kb("VmRSS")


def photo_bytes(name: str = "warmup.jpg") -> bytes:
    return (PHOTOS / name).read_bytes()
