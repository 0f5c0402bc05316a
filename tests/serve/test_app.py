"""The API against a real ``pillsnap serve`` process: predictions, model record, metrics,
every refusal of bad input (413 before the body is read, 415, bombs, truncation), the
error shape, and a seeded fuzz over every endpoint after which the server is still ready.
"""

from __future__ import annotations

import io
import json
import random
import socket
import struct
import time
import zlib
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from _serving import MAX_PIXELS, MAX_UPLOAD, assert_error
from PIL import Image

from pillsnap.fileio import sha256_file
from pillsnap.pipeline import Pipeline

POSTS = ["/v1/predict", "/v1/predict/batch", "/reload", "/v1/admin/reload"]
GETS = ["/", "/health/live", "/health/ready", "/v1/model", "/metrics", "/openapi.json"]


def test_predict_matches_the_pipeline_in_process(server):
    """Multipart and raw bodies give the pills the library's own pipeline finds."""
    rel = server.releases
    photo = rel.photos[1].read_bytes()
    r = httpx.post(server.url + "/v1/predict", files={"file": ("p.jpg", photo, "image/jpeg")})
    assert r.status_code == 200, r.text
    body = r.json()
    raw = httpx.post(
        server.url + "/v1/predict", content=photo, headers={"content-type": "image/jpeg"}
    )
    assert raw.status_code == 200 and raw.json()["pills"] == body["pills"]
    version = httpx.get(server.url + "/v1/model").json()["version"]
    assert body["model_version"] == version and r.headers["x-request-id"] == body["request_id"]
    assert body["image"] == {"width": 480, "height": 640, "format": "JPEG"}
    assert {"decode", "detect", "crops", "classify", "total"} <= set(body["timing_ms"])
    with Pipeline.from_config(
        rel.cfg, "onnx", rel.a / "detection.onnx", rel.a / "classification.onnx"
    ) as pipe:
        expected = [p.to_dict() for p in pipe.predict([rel.photos[1]])[0]]
    assert len(expected) >= 3
    assert [p["edi_code"] for p in body["pills"]] == [p["edi_code"] for p in expected]
    for got, want in zip(body["pills"], expected):
        assert got["box"] == pytest.approx(want["box"], abs=0.05)
        assert got["cls_conf"] == pytest.approx(want["cls_conf"], abs=1e-4)
        assert len(got["top5"]) == 5 and got["top5"][0]["edi_code"] == got["edi_code"]


def test_batch_endpoint_returns_one_result_per_photo(server):
    photos = server.releases.photos[:3]
    files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in photos]
    r = httpx.post(server.url + "/v1/predict/batch", files=files, timeout=60)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["filename"] for x in results] == [p.name for p in photos]
    for photo, res in zip(photos, results):
        single = httpx.post(
            server.url + "/v1/predict", files={"file": (photo.name, photo.read_bytes())}
        ).json()
        assert [p["edi_code"] for p in res["pills"]] == [p["edi_code"] for p in single["pills"]]
    bad = files[:1] + [("files", ("bad.jpg", b"\xff\xd8\xffjunk", "image/jpeg"))]
    assert_error(httpx.post(server.url + "/v1/predict/batch", files=bad), 400, "bad.jpg")


def test_started_on_model_path(server):
    first = server.initial
    assert (first["source"], first["version"]) == ("MODEL_PATH", server.releases.a.name)
    assert first["release_dir"] == str(server.releases.a.resolve())
    assert server.url.startswith("http://127.0.0.1:")


def test_model_endpoint_hashes_every_file_of_the_release(server):
    info = httpx.get(server.url + "/v1/model").json()
    folder = Path(info["release_dir"])
    assert info["degraded"] is False
    assert info["engine"] == "onnxruntime" and "CPUExecutionProvider" in info["providers"]
    assert info["precision"] == {"detection": "fp32", "classification": "fp32"}
    on_disk = {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in folder.rglob("*")
        if p.is_file() and not p.is_symlink() and p.name != "manifest.json"
    }
    assert info["files"] == on_disk and len(on_disk) >= 4
    assert info["models"]["classification"] == f"classification-{info['version']}.onnx"
    assert info["class_map"]["sha256"] == sha256_file(server.releases.cfg.paths.class_map_path)
    live = httpx.get(server.url + "/health/live")
    assert live.status_code == 200 and live.json() == {"status": "alive"}
    ready = httpx.get(server.url + "/health/ready").json()
    assert ready["status"] == "ready" and ready["model_version"] == info["version"]


def test_metrics_count_requests_batches_and_the_model(server):
    httpx.post(
        server.url + "/v1/predict",
        files={"file": ("p.jpg", server.releases.photos[0].read_bytes())},
    )
    httpx.post(server.url + "/v1/predict", content=b"x", headers={"content-type": "text/plain"})
    text = httpx.get(server.url + "/metrics").text
    version = httpx.get(server.url + "/v1/model").json()["version"]
    assert (
        f'pillsnap_http_requests_total{{method="POST",model_version="{version}",'
        'route="/v1/predict",status="200"}'
    ) in text
    assert 'route="/v1/predict",status="415"' in text
    assert 'pillsnap_batch_size_count{stage="detector"}' in text
    assert 'pillsnap_batch_size_count{stage="classifier"}' in text
    assert f'version="{version}"' in text and "pillsnap_model_info{" in text
    assert "pillsnap_model_load_seconds " in text
    assert "pillsnap_http_request_duration_seconds_bucket" in text
    assert 'pillsnap_rejected_uploads_total{reason="415"}' in text


# -- bad input -------------------------------------------------------------------------------


def raw_request(
    url: str, head: str, body: bytes = b"", read_timeout: float = 10
) -> tuple[int, bytes]:
    """HTTP over a plain socket (for headers httpx refuses to send, e.g. a lying Content-Length)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=read_timeout) as sock:
        sock.sendall(head.encode() + b"\r\n\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"content-length":
            return int(value)
    return 0


def test_oversized_bodies_get_413_before_the_body_is_read(server):
    url = server.url
    # Declared 500 MB, not one byte sent (with and without Expect: 100-continue).
    for expect in ("", "\r\nExpect: 100-continue"):
        start = time.perf_counter()
        status, body = raw_request(
            url,
            "POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: 500000000{expect}",
        )
        assert status == 413 and b"exceeds" in body and time.perf_counter() - start < 5
    # Streamed (chunked, no length): stopped once past the limit, not after 50 MB.
    sent = 0

    def chunks():
        nonlocal sent
        for _ in range(800):
            sent += 64 * 1024
            yield b"\xff" * (64 * 1024)

    r = httpx.post(url + "/v1/predict", content=chunks(), headers={"content-type": "image/jpeg"})
    assert_error(r, 413, "exceeds")
    assert sent < 20 * MAX_UPLOAD
    big = b"\xff\xd8\xff" + b"\0" * (MAX_UPLOAD + 10)
    assert_error(httpx.post(url + "/v1/predict", files={"file": ("big.jpg", big)}), 413)
    assert_error(
        httpx.post(url + "/v1/predict", content=big, headers={"content-type": "image/jpeg"}), 413
    )
    assert httpx.get(url + "/health/ready").status_code == 200


def test_wrong_content_types_get_415(server):
    for ctype in ("text/plain", "application/json", "image/gif", ""):
        r = httpx.post(
            server.url + "/v1/predict", content=b"GIF89a....", headers={"content-type": ctype}
        )
        assert_error(r, 415, "content type")
    r = httpx.post(
        server.url + "/v1/predict/batch", content=b"x", headers={"content-type": "image/png"}
    )
    assert_error(r, 415)


def _png_header_bomb(side: int) -> bytes:
    """A real 1-bit PNG of side x side black pixels: ~110 kB for 900 Mpx, 2.7 GB once RGB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    comp, row = zlib.compressobj(9), b"\0" * (1 + (side + 7) // 8)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_with_memory_bounded(server):
    bomb = _png_header_bomb(30_000)
    assert len(bomb) < MAX_UPLOAD
    before = server.proc.reset_peak()
    r = httpx.post(server.url + "/v1/predict", content=bomb, headers={"content-type": "image/png"})
    assert_error(r, 400, "30000x30000", str(MAX_PIXELS))
    over = io.BytesIO()
    Image.new("RGB", (2100, 2000), (200, 30, 30)).save(over, "PNG")  # 4.2 Mpx > 4 Mpx limit
    r = httpx.post(
        server.url + "/v1/predict", files={"file": ("big.png", over.getvalue(), "image/png")}
    )
    assert_error(r, 400, "pixels")
    peak = server.proc.memory_kb("VmHWM")
    assert peak - before < 60_000, (before, peak)  # decoding would have needed gigabytes


def test_corrupt_truncated_empty_and_non_images_get_400(server):
    photo = server.releases.photos[2].read_bytes()
    png = io.BytesIO()
    Image.new("RGB", (300, 200), (10, 200, 10)).save(png, "PNG")
    gif = io.BytesIO()
    Image.new("RGB", (30, 20)).save(gif, "GIF")
    cases = {
        "truncated JPEG": (photo[: len(photo) * 6 // 10], "truncated"),
        "JPEG cut in its header": (photo[:200], "corrupt"),
        "truncated PNG": (png.getvalue()[: len(png.getvalue()) * 8 // 10], "PNG"),
        "zero bytes": (b"", "empty"),
        "text": (b"hello, this is not a photo", "not a JPEG"),
        "GIF sent as JPEG": (gif.getvalue(), "not a JPEG"),
        "JPEG magic and junk": (b"\xff\xd8\xff" + bytes(range(256)) * 20, "JPEG"),
    }
    for name, (data, word) in cases.items():
        r = httpx.post(
            server.url + "/v1/predict", content=data, headers={"content-type": "image/jpeg"}
        )
        assert r.status_code == 400, (name, r.status_code, r.text)
        assert_error(r, 400, word)
        r = httpx.post(server.url + "/v1/predict", files={"file": ("x.jpg", data, "image/jpeg")})
        assert_error(r, 400)
    assert_error(
        httpx.post(server.url + "/v1/predict", files={"other": ("x.jpg", photo)}), 400, "'file'"
    )
    ok = httpx.post(
        server.url + "/v1/predict", files={"file": ("p.png", png.getvalue(), "image/png")}
    )
    assert ok.status_code == 200 and ok.json()["image"]["format"] == "PNG"


def test_unknown_routes_and_methods_keep_the_error_shape(server):
    assert_error(httpx.get(server.url + "/nope"), 404)
    assert_error(httpx.get(server.url + "/v1/predict"), 405)
    r = httpx.get(server.url + "/health/live", headers={"x-request-id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = httpx.get(server.url + "/nope", headers={"x-request-id": "bad id with spaces"})
    assert r.headers["x-request-id"] != "bad id with spaces" and r.json()["request_id"]


JUNK_TYPES = [
    "image/jpeg",
    "image/png",
    "image/webp",
    "application/octet-stream",
    "multipart/form-data",
    "multipart/form-data; boundary=xyz",
    "application/json",
    "text/plain",
    "image/gif",
    "",
    "\x7f\x7f",
    "a" * 300,
    "image/jpeg; charset=\u00e9",
]


def _fuzz_body(rng: random.Random, photo: bytes) -> bytes:
    kind = rng.randrange(10)
    if kind == 0:
        return b""
    if kind == 1:
        return rng.randbytes(rng.randint(1, 5000))
    if kind == 2:
        return photo[: rng.randint(1, len(photo))]
    if kind == 3:
        return rng.choice(
            [b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"RIFF\0\0\0\0WEBP"]
        ) + rng.randbytes(300)
    if kind == 4:
        part = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n'
        return part + photo[: rng.randint(0, 4000)] + rng.choice([b"\r\n--xyz--\r\n", b""])
    if kind == 5:
        path = rng.choice(["..", "/etc", "http://x/y", "", 7, None, ["a"], "a" * 5000])
        return json.dumps({"model_path": path}).encode()
    if kind == 6:
        return b"{not json"
    if kind == 7:
        return rng.randbytes(MAX_UPLOAD + rng.choice([-1, 0, 1, 70_000]))
    return photo


def _fuzz_request(rng: random.Random, photo: bytes) -> dict:
    headers = {"content-type": rng.choice(JUNK_TYPES)}
    if rng.random() < 0.3:
        headers["x-request-id"] = rng.choice(["ok-1", "x" * 100, "\u00e9\u00e9", "a b", ""])
    if rng.random() < 0.3:  # never the real token: the fuzz must not switch the model
        headers["authorization"] = rng.choice(["Bearer wrong", "Bearer", "Basic abc", "wrong"])
    if rng.random() < 0.15:  # anything, anywhere
        method = rng.choice(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"])
        url = rng.choice([*POSTS, *GETS, "/nope", "/v1/predict/x", "/%2e%2e/etc/passwd"])
    elif rng.random() < 0.75:
        method, url = "POST", rng.choice(POSTS + ["/v1/predict"] * 3)
    else:
        method, url = rng.choice(["GET", "HEAD"]), rng.choice(GETS)
    return {
        "method": method,
        "url": url,
        "content": _fuzz_body(rng, photo),
        "headers": {k: v.encode("utf-8") for k, v in headers.items()},
    }


@pytest.mark.slow
def test_fuzz_every_endpoint_no_500_and_still_ready(server):
    rng = random.Random(1234)
    photo = server.releases.photos[3].read_bytes()
    statuses: dict[int, int] = {}
    deadline, count = time.monotonic() + 15, 0
    with httpx.Client(base_url=server.url, timeout=30) as client:
        while count < 600 and time.monotonic() < deadline:
            req = _fuzz_request(rng, photo)
            try:
                r = client.request(**req)
            except httpx.LocalProtocolError:
                continue  # a header h11 refuses to send: nothing reached the server
            count += 1
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            assert r.status_code < 500 or r.status_code == 503, (req["method"], req["url"], r.text)
            if r.status_code >= 400 and req["method"] != "HEAD":
                body = r.json()
                assert set(body) == {"error", "request_id"}, (req, body)
                assert body["request_id"] == r.headers["x-request-id"]
    print(f"fuzz: {count} requests, statuses {sorted(statuses.items())}")
    assert count >= 100, f"only {count} fuzz requests in the time bound"
    assert len(statuses) >= 5, statuses
    # lying headers only a raw socket sends
    for length in ("abc", "-5", "3"):
        head = f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: {length}"
        status, _ = raw_request(server.url, head, b"\xff\xd8\xff", read_timeout=15)
        assert 400 <= status < 500, (length, status)
    # a client that declares more than it sends and hangs up: the server drops it quietly
    parts = urlsplit(server.url)
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        sock.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 5000\r\n\r\n\xff\xd8\xff"
        )
    assert httpx.get(server.url + "/health/ready").status_code == 200
    ok = httpx.post(server.url + "/v1/predict", files={"file": ("p.jpg", photo)})
    assert ok.status_code == 200 and ok.json()["pills"]
    log = server.proc.log()
    assert "internal error" not in log and "Traceback" not in log, log[-3000:]
