"""Throughput of Torch eager vs ONNX Runtime (CPU), and of the batched pipeline vs a per-crop loop.

Not a test: run it by hand on an otherwise idle machine, e.g.

    python benchmarks/bench_engines.py                     # fixture + production sizes
    python benchmarks/bench_engines.py --skip-production   # fixture only, ~30 s

Models: the embedded fixture (examples/synthetic) and the production architectures
with random weights (timm efficientnetv2_s at 384 px with 5000 classes, Ultralytics
YOLO11m at 640 px from yolo11m.yaml); random weights run exactly as fast as trained
ones. Each model is exported with the project's exporter into a temporary folder.
The pipeline rows use the synthetic validation photos (regenerate them with
`pillsnap synth` when data/synthetic is missing).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def timed_pair(fns: dict, warmup: int, iterations: int) -> dict:
    """Median seconds per call of several functions measured in turn, one call each per round.

    The median resists the odd hiccup of a shared machine; interleaving gives every engine
    the same share of whatever else the machine runs.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict = {name: [] for name in fns}
    for _ in range(iterations):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def bench_model(label: str, cfg, task: str, batch: int, args, out_dir: Path) -> dict:
    from pillsnap.engines.runners import create_runner
    from pillsnap.models.export import export_classification_onnx, export_detection_onnx

    exporter = export_detection_onnx if task == "detection" else export_classification_onnx
    start = time.perf_counter()
    onnx_path = exporter(cfg, None, out_dir, tag=label.replace(" ", "_")).onnx_path
    export_s = time.perf_counter() - start
    size = cfg.detection.imgsz if task == "detection" else cfg.classification.crop_size
    x = np.random.default_rng(0).random((batch, 3, size, size), dtype=np.float32)
    row = {"model": label, "input": f"{batch}x3x{size}x{size}", "export_s": export_s}
    with create_runner("torch", task, cfg) as t, create_runner("onnx", task, cfg, onnx_path) as o:
        secs = timed_pair(
            {"torch": lambda: t.infer(x), "onnx": lambda: o.infer(x)}, args.warmup, args.iterations
        )
    row.update({engine: batch / s for engine, s in secs.items()})
    row["ratio"] = row["onnx"] / row["torch"]
    print(
        f"  {label}: torch {row['torch']:.2f} img/s, onnxruntime {row['onnx']:.2f} img/s "
        f"({row['ratio']:.2f}x), export {export_s:.1f} s",
        flush=True,
    )
    return row


def production_config(cfg, root: Path):
    """The production architectures with random weights, saved as checkpoints under ``root``."""
    from pillsnap.config import apply_overrides
    from pillsnap.models.classifier import (
        build_classification_model,
        save_classification_checkpoint,
    )
    from pillsnap.models.detector import build_detection_model, save_detection_checkpoint

    prod = apply_overrides(
        cfg,
        {
            "paths.exp_dir": str(root),
            "paths.class_map": None,
            "classification.backbone": "efficientnetv2_s",
            "classification.num_classes": 5000,
            "classification.img_size": 384,
            "classification.preprocessing.resize": None,
            "classification.preprocessing.crop": None,
            "detection.architecture": "yolo11m",
            "detection.imgsz": 640,
        },
    )
    ckpts = root / "checkpoints"
    save_classification_checkpoint(
        ckpts / prod.classification.checkpoint,
        build_classification_model("efficientnetv2_s", 5000),
        {"backbone": "efficientnetv2_s"},
    )
    save_detection_checkpoint(
        ckpts / prod.detection.checkpoint, build_detection_model("yolo11m", 1), 640
    )
    return prod


def val_photos(cfg, pattern: str | None, count: int) -> list[Path]:
    import yaml

    if pattern:
        from pillsnap.infer import expand_inputs

        return expand_inputs(pattern)[:count]
    data = cfg.paths.detection_data
    if data is None or not Path(data).exists():
        sys.exit(
            f"no synthetic val photos ({data}): run `pillsnap synth` first or pass --photos GLOB"
        )
    spec = yaml.safe_load(Path(data).read_text())
    folder = Path(spec.get("path") or Path(data).parent) / spec["val"]
    return sorted(folder.glob("*.jpg"))[:count]


def bench_pipeline(cfg, engine: str, models: tuple, photos: list[Path], args) -> list[dict]:
    from pillsnap.pipeline import Pipeline
    from pillsnap.preprocess import load_image

    images = [
        load_image(p) for p in photos
    ]  # decode once: the rows compare inference, not JPEG decoding
    rows = []
    with Pipeline.from_config(cfg, engine, *models, batch_size=args.batch) as pipe:
        pills = sum(len(r) for r in pipe.predict(images))  # warm-up, and the pill count
        secs = timed_pair(
            {
                "batched": lambda: pipe.predict(images, batch_size=args.batch),
                "per-crop loop": lambda: pipe.predict(images, batch_size=1),
            },
            0,
            max(1, args.iterations // 2),
        )
        for mode, seconds in secs.items():
            rows.append(
                {
                    "engine": engine,
                    "mode": mode,
                    "images": len(images),
                    "pills": pills,
                    "s": seconds,
                    "img_s": len(images) / seconds,
                }
            )
    rows[0]["speedup"], rows[1]["speedup"] = rows[0]["img_s"] / rows[1]["img_s"], 1.0
    print(
        f"  pipeline {engine}: batched {rows[0]['img_s']:.2f} img/s vs per-crop loop {rows[1]['img_s']:.2f} img/s "
        f"({rows[0]['speedup']:.2f}x, {rows[0]['pills']} pills)",
        flush=True,
    )
    return rows


def print_tables(model_rows: list[dict], pipe_rows: list[dict]) -> None:
    print("\n| model | input | torch eager img/s | ORT CPU img/s | ORT / torch |")
    print("|---|---|---:|---:|---:|")
    for r in model_rows:
        print(
            f"| {r['model']} | {r['input']} | {r['torch']:.2f} | {r['onnx']:.2f} | {r['ratio']:.2f}x |"
        )
    if pipe_rows:
        print("\n| pipeline engine | mode | photos | pills | seconds | img/s | speedup |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for r in pipe_rows:
            print(
                f"| {r['engine']} | {r['mode']} | {r['images']} | {r['pills']} | {r['s']:.2f} | {r['img_s']:.2f} "
                f"| {r['speedup']:.2f}x |"
            )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", type=Path, default=ROOT / "examples" / "synthetic" / "config.yaml")
    p.add_argument(
        "--photos", help="photo glob for the pipeline rows (default: the synthetic val split)"
    )
    p.add_argument("--photo-count", type=int, default=24)
    p.add_argument("--batch", type=int, default=16, help="pipeline batch (images and crops)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iterations", type=int, default=4)
    p.add_argument("--skip-production", action="store_true", help="fixture sizes only")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import torch

    from pillsnap.config import load_config

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; onnxruntime CPUExecutionProvider, "
        f"ORT_ENABLE_ALL, threads auto; load average at start {_load()}",
        flush=True,
    )
    model_rows, pipe_rows = [], []
    with tempfile.TemporaryDirectory(prefix="pillsnap-bench-") as tmp:
        tmp = Path(tmp)
        cfg = load_config(args.config, {"paths.out_dir": str(tmp / "runs")})
        for task in ("classification", "detection"):
            cfg.checkpoint_path(task)  # fail early, naming the missing fixture checkpoint
        fixture_onnx = {}
        for label, task, batch in (
            ("classifier fixture", "classification", 16),
            ("detector fixture", "detection", 4),
        ):
            model_rows.append(bench_model(label, cfg, task, batch, args, tmp / "runs"))
            fixture_onnx[task] = tmp / "runs" / f"{task}-{label.replace(' ', '_')}.onnx"
        if not args.skip_production:
            prod = production_config(cfg, tmp / "prod")
            model_rows.append(
                bench_model(
                    "classifier efficientnetv2_s 5000 cls",
                    prod,
                    "classification",
                    4,
                    args,
                    tmp / "runs",
                )
            )
            model_rows.append(
                bench_model("detector yolo11m", prod, "detection", 1, args, tmp / "runs")
            )
        photos = val_photos(cfg, args.photos, args.photo_count)
        pipe_rows += bench_pipeline(
            cfg, "onnx", (fixture_onnx["detection"], fixture_onnx["classification"]), photos, args
        )
        pipe_rows += bench_pipeline(cfg, "torch", (None, None), photos, args)
    print_tables(model_rows, pipe_rows)
    print(
        f"\nload average at the end: {_load()} on {os.cpu_count()} CPUs (includes this run itself; a start "
        f"load above ~0.5 means other work competed and the figures are pessimistic)"
    )
    return 0


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


if __name__ == "__main__":
    sys.exit(main())
