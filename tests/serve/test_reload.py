"""``POST /reload`` against a real server: the token, path attacks (watched with inotify: no
file outside the roots is opened), faulty releases (the old model keeps serving,
version and hashes unchanged), 409 while loading, and a reload under load.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
from _serving import assert_error, copy_release, rewrite_manifest

from pillsnap.fileio import sha256_file


def reload(server, path: str, token: str | None = None, **kw) -> httpx.Response:
    headers = {"authorization": f"Bearer {token if token is not None else server.token}"}
    return httpx.post(
        server.url + "/reload", json={"model_path": path}, headers=headers, timeout=120, **kw
    )


def model(server) -> dict:
    return httpx.get(server.url + "/v1/model").json()


def predict_version(server) -> str:
    photo = server.releases.photos[0].read_bytes()
    r = httpx.post(server.url + "/v1/predict", files={"file": ("p.jpg", photo)}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["pills"]
    return r.json()["model_version"]


def test_token_missing_or_wrong_is_401(server):
    before = model(server)["version"]
    target = server.releases.b.name
    cases = {
        "none": {},
        "wrong": {"authorization": f"Bearer {server.token}x"},
        "prefix": {"authorization": f"Bearer {server.token[:-1]}"},
        "scheme": {"authorization": f"Basic {server.token}"},
        "bare": {"authorization": server.token},
    }
    for name, headers in cases.items():
        r = httpx.post(server.url + "/reload", json={"model_path": target}, headers=headers)
        assert_error(r, 401, "admin token")
        assert r.headers["www-authenticate"] == "Bearer", name
    r = httpx.post(server.url + "/v1/admin/reload", json={"model_path": target})
    assert_error(r, 401)
    assert model(server)["version"] == before
    assert "reload refused: missing or wrong admin token" in server.proc.log()


class Inotify:
    """Linux inotify (ctypes): which files under some folders anyone opens or reads."""

    IN_ACCESS, IN_OPEN = 0x1, 0x20

    def __init__(self, folders: list[Path]):
        self.libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK)
        assert self.fd >= 0, ctypes.get_errno()
        for folder in folders:
            wd = self.libc.inotify_add_watch(
                self.fd, str(folder).encode(), self.IN_OPEN | self.IN_ACCESS
            )
            assert wd >= 0, (folder, ctypes.get_errno())

    def events(self) -> int:
        total = 0
        while True:
            try:
                total += len(os.read(self.fd, 65536))
            except BlockingIOError:
                return total

    def close(self) -> None:
        os.close(self.fd)


def test_path_attacks_are_refused_and_nothing_outside_the_roots_is_opened(server, tmp_path):
    runs = server.releases.runs.resolve()
    outside = copy_release(server.releases.b, tmp_path / "outside" / "20250109-000000-evil")
    (runs / "evil-dir").symlink_to(outside, target_is_directory=True)
    (runs / "evil-file.onnx").symlink_to(outside / "detection.onnx")
    before = model(server)
    watch = Inotify([outside.parent, outside])
    try:
        attacks = {
            os.path.relpath(outside, runs): 403,  # ../../.../outside/<tag>
            f"{server.releases.a.name}/../../{os.path.relpath(outside, runs.parent)}": 403,
            str(outside): 403,
            str(outside / "detection.onnx"): 403,
            "/etc/passwd": 403,
            "evil-dir": 403,
            "evil-file.onnx": 403,
            "evil-dir/manifest.json": 403,
            "http://127.0.0.1:9/detection.onnx": 400,
            f"file://{outside}": 400,
            "no-such-release": 400,
        }
        for path, status in attacks.items():
            body = assert_error(reload(server, path), status)
            assert ("allowed_model_roots" if status == 403 else "model_path") in body["error"], path
        for bad in ({"model_path": 7}, {"model_path": ""}, {"path": "x"}, ["x"]):
            r = httpx.post(
                server.url + "/reload",
                json=bad,
                headers={"authorization": f"Bearer {server.token}"},
            )
            assert_error(r, 400)
        seen = watch.events()
        assert seen == 0, f"{seen} bytes of inotify events: a file outside the roots was opened"
        (outside / "manifest.json").read_bytes()  # the watch works: this read is seen
        assert watch.events() > 0
    finally:
        watch.close()
        (runs / "evil-dir").unlink()
        (runs / "evil-file.onnx").unlink()
    after = model(server)
    assert (after["version"], after["files"]) == (before["version"], before["files"])


def _reseal(folder: Path) -> None:
    """Re-record the folder's current bytes (report sha256 and manifest): it verifies again."""
    report_path = folder / "export_report.json"
    report = json.loads(report_path.read_text())
    report["version_tag"] = folder.name  # verify also checks the manifest against the report
    for entry in report["models"].values():
        onnx = folder / Path(entry["onnx_path"]).name
        if onnx.is_file():
            entry["onnx_sha256"] = sha256_file(onnx)
    report_path.write_text(json.dumps(report, indent=2))
    rewrite_manifest(folder, folder.name)


def _nan_classifier(path: Path, like: Path) -> None:
    """An ONNX with the classifier's interface and metadata whose logits are all NaN."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from pillsnap.models.common import read_onnx_metadata

    meta = read_onnx_metadata(like)
    n, size = int(meta["pillsnap.num_classes"]), int(meta["preprocess.crop"])
    w = numpy_helper.from_array(np.full((3, n), np.nan, np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "w"], ["logits"]),
        ],
        "nan",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", n])],
        [w],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


def _faulty(runs: Path, src: Path, name: str) -> Path:
    tag = name
    folder = runs / tag
    shutil.copytree(src, folder, symlinks=True)
    for task in ("detection", "classification"):
        old = folder / f"{task}-{src.name}.onnx"
        old.rename(folder / f"{task}-{tag}.onnx")
        (folder / f"{task}.onnx").unlink()
        (folder / f"{task}.onnx").symlink_to(f"{task}-{tag}.onnx")
    report = json.loads((folder / "export_report.json").read_text())
    for task, entry in report["models"].items():
        entry["onnx_path"] = str(folder / f"{task}-{tag}.onnx")
    (folder / "export_report.json").write_text(json.dumps(report, indent=2))
    _reseal(folder)
    return folder


def make_faulty_releases(runs: Path, src: Path) -> dict[str, tuple[Path, int, str]]:
    """name -> (folder, expected status, a word of the reason)."""
    out = {}

    def cls(folder: Path) -> Path:
        return folder / f"classification-{folder.name}.onnx"

    f = _faulty(runs, src, "20250201-000000-truncated")
    data = cls(f).read_bytes()
    cls(f).write_bytes(data[: len(data) // 2])
    _reseal(f)  # the records agree with the cut file: only loading it can fail
    out["truncated ONNX"] = (f, 422, "do not load")

    f = _faulty(runs, src, "20250202-000000-hashmismatch")
    data = bytearray(cls(f).read_bytes())
    data[1000] ^= 0x55
    cls(f).write_bytes(bytes(data))
    out["hash mismatch"] = (f, 400, "changed")

    f = _faulty(runs, src, "20250203-000000-noclassifier")
    cls(f).unlink()
    (f / "classification.onnx").unlink()
    _reseal(f)
    out["missing classifier"] = (f, 400, "classification")

    f = _faulty(runs, src, "20250204-000000-editedmanifest")
    manifest = json.loads((f / "manifest.json").read_text())
    manifest["artifacts"][cls(f).name]["sha256"] = "0" * 64
    (f / "manifest.json").write_text(json.dumps(manifest))
    out["edited manifest"] = (f, 400, "changed")

    f = runs / "20250205-000000-noreleaseatall"
    f.mkdir()
    (f / "detection.onnx").write_bytes(b"not a model")
    out["a folder that is no release"] = (f, 400, "manifest.json missing")

    f = _faulty(runs, src, "20250206-000000-unreadable")
    cls(f).chmod(0)
    out["unreadable file"] = (f, 400, "ermission denied")

    f = _faulty(runs, src, "20250207-000000-nanlogits")
    _nan_classifier(
        cls(f), cls(src) if cls(src).exists() else next(src.glob("classification-*.onnx"))
    )
    _reseal(f)
    out["NaN at warm-up"] = (f, 422, "warm-up")

    f = _faulty(runs, src, "20250208-000000-othermetadata")
    from pillsnap.models.common import write_onnx_metadata

    write_onnx_metadata(cls(f), {"preprocess.crop": "96"})
    _reseal(f)
    out["exported for another preprocessing"] = (f, 422, "preprocess.crop")
    return out


@pytest.mark.slow
def test_faulty_reloads_keep_the_old_model_serving(server):
    before = model(server)
    src = server.releases.b
    for name, (folder, status, word) in make_faulty_releases(server.releases.runs, src).items():
        body = assert_error(reload(server, folder.name), status, word)
        assert f"still serving {before['version']}" in body["error"], (name, body)
        after = model(server)
        assert (after["version"], after["files"]) == (before["version"], before["files"]), name
        assert predict_version(server) == before["version"], name
    log = server.proc.log()
    assert "FAILED at load" in log and "FAILED at warmup" in log and "FAILED at verify" in log
    metrics = httpx.get(server.url + "/metrics").text
    assert 'pillsnap_reloads_total{result="failed"}' in metrics


def test_second_reload_while_one_runs_gets_409(server):
    current = model(server)
    first: list[httpx.Response] = []
    t = threading.Thread(target=lambda: first.append(reload(server, current["release_dir"])))
    t.start()
    deadline = time.monotonic() + 30
    while not httpx.get(server.url + "/health/ready").json()["reloading"]:
        assert time.monotonic() < deadline and t.is_alive(), "the first reload never started"
        time.sleep(0.02)
    second = reload(server, server.releases.a.name)
    ready = httpx.get(server.url + "/health/ready")
    t.join(120)
    assert_error(second, 409, "another reload")
    assert ready.status_code == 200
    assert first[0].status_code == 200 and first[0].json()["model_version"] == current["version"]
    assert 'pillsnap_reloads_total{result="conflict"}' in httpx.get(server.url + "/metrics").text


@pytest.mark.slow
def test_reload_under_load_drops_nothing(server):
    """8 clients for ~20 s, a reload to the other release half-way: 0 failures, no old answer
    to a request sent after the reload returned, readiness never 503."""
    old = model(server)["version"]
    rel = server.releases
    target = rel.b if old == rel.a.name else rel.a
    photos = [p.read_bytes() for p in rel.photos]
    stop = threading.Event()
    records: list[tuple[float, float, int, str]] = []
    errors: list[str] = []
    ready_codes: list[int] = []

    def client(i: int) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            n = i
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    r = c.post("/v1/predict", files={"file": ("p.jpg", photos[n % len(photos)])})
                    version = r.json().get("model_version", "") if r.status_code == 200 else r.text
                    records.append((t0, time.monotonic(), r.status_code, version))
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))
                n += 1

    def readiness() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            while not stop.is_set():
                ready_codes.append(c.get("/health/ready").status_code)
                time.sleep(0.1)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    threads.append(threading.Thread(target=readiness))
    start = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(7)
    r = reload(server, target.name)
    reload_returned = time.monotonic()
    time.sleep(max(3.0, 20 - (reload_returned - start)))
    stop.set()
    for t in threads:
        t.join(120)
    assert r.status_code == 200, r.text
    assert r.json()["model_version"] == target.name and r.json()["previous_version"] == old
    assert not errors, errors[:5]
    failed = [x for x in records if x[2] != 200]
    assert not failed, failed[:5]
    versions = {x[3] for x in records}
    assert versions == {old, target.name}, versions
    late_old = [x for x in records if x[0] > reload_returned and x[3] == old]
    assert not late_old, f"{len(late_old)} requests sent after the reload were answered by {old}"
    assert (
        sum(x[3] == old for x in records) >= 8 and sum(x[0] > reload_returned for x in records) >= 8
    )
    assert ready_codes and set(ready_codes) == {200}, sorted(set(ready_codes))
    assert model(server)["version"] == target.name
