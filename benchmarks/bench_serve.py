"""Requests/s and p50/p99 latency of ``pillsnap serve``, dynamic batching on vs off.

Not a test: run it by hand on an otherwise idle machine, e.g.

    python benchmarks/bench_serve.py                            # newest verified release in runs/
    python benchmarks/bench_serve.py --model-path runs/<tag> --seconds 10 --rounds 5

Two real uvicorn processes (``pillsnap serve``, access log off) serve the same release on
loopback, one with ``serve.batching=true`` and one with ``false`` (every photo alone
through each model). Closed-loop clients (1 and 8, one keep-alive connection each) post
the demo validation photos (raw ``image/jpeg`` bodies) for ``--seconds`` per cell. Each
round measures every (mode, concurrency) cell, in an order that alternates between
rounds, so both modes get the same share of whatever else the machine runs; the
figures are the medians over rounds of the per-round ratios (batching on / off):
throughput at concurrency 8 (target >= 1.5x) and p99 latency at concurrency 1
(target <= 1.2x).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODES = {"on": ["--set", "serve.batching=true"], "off": ["--set", "serve.batching=false"]}


def start_server(
    config: Path, mode: str, model_path: str | None, log_dir: Path, extra: list[str]
) -> tuple:
    env = {k: v for k, v in os.environ.items() if k != "MODEL_PATH"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    if model_path:
        env["MODEL_PATH"] = str(Path(model_path).resolve())
    log = open(log_dir / f"server-{mode}.log", "wb")  # noqa: SIM115 - open while it runs
    cmd = [sys.executable, "-m", "pillsnap.cli", "serve", "--config", str(config)]
    cmd += ["--port", "0", "--no-access-log", *MODES[mode], *extra]
    proc = subprocess.Popen(cmd, cwd=log_dir, env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + 300
    url = None
    while time.monotonic() < deadline and proc.poll() is None:
        text = (log_dir / f"server-{mode}.log").read_text(errors="replace")
        found = re.search(r"listening on (http://[\d.]+:\d+)", text)
        if found:
            url = found.group(1)
            try:
                if httpx.get(url + "/health/ready", timeout=5).status_code == 200:
                    return proc, url
            except httpx.TransportError:
                pass
        time.sleep(0.2)
    raise SystemExit(f"server ({mode}) did not get ready; see {log_dir}/server-{mode}.log")


def load(url: str, photos: list[bytes], clients: int, seconds: float) -> dict:
    """Closed loop: each client posts, waits for the answer, posts the next photo."""
    latencies: list[float] = []
    failures: list[str] = []
    stop = time.monotonic() + seconds
    lock = threading.Lock()

    def client(i: int) -> None:
        mine: list[float] = []
        with httpx.Client(base_url=url, timeout=120) as c:
            n = i
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                r = c.post(
                    "/v1/predict",
                    content=photos[n % len(photos)],
                    headers={"content-type": "image/jpeg"},
                )
                if r.status_code != 200:
                    failures.append(f"{r.status_code}: {r.text[:200]}")
                mine.append(time.perf_counter() - t0)
                n += clients
        with lock:
            latencies.extend(mine)

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ms = np.asarray(latencies) * 1000
    return {
        "requests": len(latencies),
        "failures": len(failures),
        "req_per_s": len(latencies) / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "first_failure": failures[0] if failures else None,
        "latencies_ms": ms.tolist(),
    }


def batch_counts(url: str) -> dict[str, tuple[float, float, float]]:
    """(requests, model calls, model seconds) so far per stage, from /metrics."""
    text = httpx.get(url + "/metrics").text

    def value(name: str, stage: str) -> float:
        found = re.search(rf'{name}{{stage="{stage}"}} ([\d.e+-]+)', text)
        return float(found.group(1)) if found else 0.0

    return {
        stage: (
            value("pillsnap_batch_size_sum", stage),
            value("pillsnap_batch_size_count", stage),
            value("pillsnap_batch_seconds_sum", stage),
        )
        for stage in ("detector", "classifier")
    }


def measure(url: str, photos: list[bytes], clients: int, seconds: float) -> dict:
    """``load`` plus the mean requests per detector / classifier call during it."""
    before = batch_counts(url)
    start = time.perf_counter()
    res = load(url, photos, clients, seconds)
    wall = time.perf_counter() - start
    after = batch_counts(url)
    busy = 0.0
    for stage, (n, calls, secs) in after.items():
        dn, dc = n - before[stage][0], calls - before[stage][1]
        res[f"batch_{stage}"] = dn / dc if dc else 0.0
        busy += secs - before[stage][2]
    res["model_busy"] = busy / wall  # share of the wall time the model thread computed
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", type=Path, default=ROOT / "examples" / "synthetic" / "config.yaml")
    p.add_argument("--model-path", help="release to serve (default: newest verified in out_dir)")
    p.add_argument(
        "--photos", type=Path, default=ROOT / "data" / "synthetic" / "detection" / "images" / "val"
    )
    p.add_argument("--seconds", type=float, default=8.0, help="per cell (default 8)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="passed to both servers, e.g. --set serve.max_wait_ms=10",
    )
    args = p.parse_args(argv)
    photos = [f.read_bytes() for f in sorted(args.photos.glob("*.jpg"))[:32]]
    if not photos:
        raise SystemExit(f"no photos in {args.photos}: run `pillsnap synth --splits val`")
    log_dir = Path(tempfile.mkdtemp(prefix="bench_serve-"))
    extra = [x for o in args.overrides for x in ("--set", o)]
    servers = {m: start_server(args.config, m, args.model_path, log_dir, extra) for m in MODES}
    try:
        for _, url in servers.values():
            load(url, photos, 8, args.warmup)
        cells = [(m, c) for m in MODES for c in (1, 8)]
        rounds = []
        for r in range(args.rounds):
            order = cells if r % 2 == 0 else cells[::-1]
            res = {f"{m}/c{c}": measure(servers[m][1], photos, c, args.seconds) for m, c in order}
            rounds.append(res)
            print(
                f"round {r + 1}: "
                + "  ".join(
                    f"{k} {v['req_per_s']:.1f} req/s p99 {v['p99_ms']:.0f} ms"
                    for k, v in sorted(res.items())
                ),
                flush=True,
            )
    finally:
        for proc, _ in servers.values():
            proc.send_signal(signal.SIGTERM)
        for proc, _ in servers.values():
            proc.wait(60)
    keys = sorted(rounds[0])
    failures = sum(v["failures"] for res in rounds for v in res.values())
    print(
        f"\nserve benchmark: {len(photos)} demo photos, {args.rounds} rounds x {args.seconds:.0f} s per cell, "
        f"{os.cpu_count()} CPUs; {failures} failed requests"
    )
    print(
        f"{'cell':<8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'det/call':>9} {'cls/call':>9}"
        f" {'model busy':>11}   (medians over rounds; requests per detector / classifier call)"
    )
    fields = ("req_per_s", "p50_ms", "p99_ms", "batch_detector", "batch_classifier", "model_busy")
    table = {}
    for k in keys:
        med = {f: statistics.median(res[k][f] for res in rounds) for f in fields}
        table[k] = med
        print(
            f"{k:<8} {med['req_per_s']:>8.1f} {med['p50_ms']:>8.1f} {med['p99_ms']:>8.1f}"
            f" {med['batch_detector']:>9.2f} {med['batch_classifier']:>9.2f}"
            f" {med['model_busy']:>10.0%}"
        )
    thr = [res["on/c8"]["req_per_s"] / res["off/c8"]["req_per_s"] for res in rounds]
    p99 = [res["on/c1"]["p99_ms"] / res["off/c1"]["p99_ms"] for res in rounds]
    pooled = {
        k: np.percentile(np.concatenate([res[k]["latencies_ms"] for res in rounds]), [50, 99])
        for k in keys
    }
    p50_8 = [res["on/c8"]["p50_ms"] / res["off/c8"]["p50_ms"] for res in rounds]
    print(
        f"throughput at concurrency 8, on/off: {statistics.median(thr):.2f}x "
        f"(per round {', '.join(f'{x:.2f}' for x in thr)}; target >= 1.5x)"
    )
    print(
        f"p99 latency at concurrency 1, on/off: {statistics.median(p99):.2f}x "
        f"(per round {', '.join(f'{x:.2f}' for x in p99)}; target <= 1.2x); "
        f"over all rounds' requests: {pooled['on/c1'][1] / pooled['off/c1'][1]:.2f}x "
        f"({pooled['on/c1'][1]:.0f} vs {pooled['off/c1'][1]:.0f} ms)"
    )
    print(f"p50 latency at concurrency 8, on/off: {statistics.median(p50_8):.2f}x")
    for res in rounds:
        for v in res.values():
            v.pop("latencies_ms")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "rounds": rounds,
                    "medians": table,
                    "throughput_ratio_c8": thr,
                    "p99_ratio_c1": p99,
                },
                indent=2,
            )
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
