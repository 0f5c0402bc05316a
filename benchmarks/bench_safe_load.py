"""Safe (weights-only) checkpoint loading vs the loaders it replaced, side by side.

    .venv/bin/python benchmarks/bench_safe_load.py [--rounds 5]

For each checkpoint, each round times the old load and the new one back to back (order
alternating), and the script prints the median of each and the median of the per-round
ratios (new / old), since the machine drifts between rounds. Checkpoints: the committed
fixture detector and classifier, plus production-size random-weight ones written into a
temporary folder (YOLO11m, efficientnetv2_s with 5000 classes).

* detector, old: ``ultralytics.nn.tasks.load_checkpoint(path, fuse=False)`` (full unpickling;
  only used here, on files this script trusts because it wrote them or they are committed);
  new: ``pillsnap.models.detector.load_detection_checkpoint``.
* classifier, old: ``torch.load(weights_only=True)`` (what pillsnap did first; it fell back to
  full unpickling on refusal); new: ``pillsnap.models.safe_load.safe_load``.
* preflight: ``run_preflight`` as ``pillsnap release`` calls it on the demo config (absolute
  time; it had no counterpart before).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "synthetic"


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare(name: str, old: Callable[[], object], new: Callable[[], object], rounds: int) -> None:
    old(), new()  # warm caches and imports
    olds, news, ratios = [], [], []
    for i in range(rounds):
        if i % 2:
            n, o = timed(new), timed(old)
        else:
            o, n = timed(old), timed(new)
        olds.append(o)
        news.append(n)
        ratios.append(n / o)
    print(
        f"{name:<44} old {statistics.median(olds):7.3f} s   new {statistics.median(news):7.3f} s"
        f"   new/old (median of rounds) {statistics.median(ratios):5.2f}x"
    )


def main() -> None:
    import torch
    from ultralytics.nn.tasks import load_checkpoint

    from pillsnap.config import load_config
    from pillsnap.models.classifier import build_classification_model
    from pillsnap.models.detector import (
        build_detection_model,
        load_detection_checkpoint,
        save_detection_checkpoint,
    )
    from pillsnap.models.safe_load import safe_load
    from pillsnap.preflight import run_preflight

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    with tempfile.TemporaryDirectory() as tmp:
        big_det = Path(tmp) / "yolo11m.pt"
        save_detection_checkpoint(big_det, build_detection_model("yolo11m", 1), 640)
        big_cls = Path(tmp) / "effv2s.pt"
        model = build_classification_model("efficientnetv2_s", 5000)
        torch.save({"model": {k: v.half() for k, v in model.state_dict().items()}}, big_cls)
        for label, path in (
            ("detector fixture (yolo11n, 5 MB)", DEMO / "checkpoints" / "detection_best.pt"),
            (f"detector yolo11m ({big_det.stat().st_size / 1e6:.0f} MB)", big_det),
        ):
            compare(
                label,
                lambda p=path: load_checkpoint(str(p), fuse=False),
                lambda p=path: load_detection_checkpoint(p),
                rounds,
            )
        for label, path in (
            ("classifier fixture (b0, 12 MB)", DEMO / "checkpoints" / "classification_best.pt"),
            (f"classifier efficientnetv2_s ({big_cls.stat().st_size / 1e6:.0f} MB)", big_cls),
        ):
            compare(
                label,
                lambda p=path: torch.load(p, map_location="cpu", weights_only=True),
                lambda p=path: safe_load(p, what="classification checkpoint"),
                rounds,
            )
    cfg = load_config(DEMO / "config.yaml")
    times = [
        timed(
            lambda: run_preflight(
                cfg,
                checkpoints=("detection", "classification"),
                class_map=True,
                data=("detection", "classification"),
                out_dir=cfg.paths.out_dir,
            )
        )
        for _ in range(rounds)
    ]
    print(
        f"{'preflight of a demo release (both models, data)':<44} {statistics.median(times):.3f} s"
    )


if __name__ == "__main__":
    main()
