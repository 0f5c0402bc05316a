"""The engines side by side on this CPU, for the fixture and the production-size models.

A thin caller of ``pillsnap.bench`` (the timing, the rounds, the intervals are the
benchmark stage's): it builds two release-like folders, runs ``run_benchmark`` on each
and prints the ratios the README quotes. Not a test: run it on a machine as quiet as
you can get, e.g.

    python benchmarks/bench_engines.py                     # fixture + production sizes (~30 min on 2 cores)
    python benchmarks/bench_engines.py --skip-production   # fixture only (~5 min)
    python benchmarks/bench_engines.py --no-spinning       # ONNX Runtime without intra-op spinning

* fixture: the embedded demo models (examples/synthetic), exported with the project's
  exporter, INT8 made by ``benchmarks/int8_models.py`` (the product's ``minmax_pc_u8``
  recipe and known exclusions: static QDQ U8S8, per-channel, calibrated on 16 real val inputs) -- accuracy and agreement on the fixed val subset;
* production: timm efficientnetv2_s at 384 px with 5000 classes and Ultralytics YOLO11m at
  640 px, random weights (they run exactly as fast as trained ones), INT8 calibrated on
  random inputs: speed only, their accuracy means nothing.

Every configuration runs with the same threads (``--threads``, default all cores). OpenVINO
rows need the extra (``pip install 'pillsnap[openvino]'``); without it they say so.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
TAG = "20250101-000000-bench00"
CPU_CONFIGS = [
    "torch-cpu-fp32",
    "ort-cpu-fp32",
    "ort-cpu-int8",
    "openvino-cpu",
    "openvino-cpu-fp32",
    "openvino-cpu-int8",
]
RATIOS = [  # (label, configuration, versus)
    ("ORT fp32 / Torch", "ort-cpu-fp32", "torch-cpu-fp32"),
    ("ORT INT8 / ORT fp32", "ort-cpu-int8", "ort-cpu-fp32"),
    ("OpenVINO / ORT fp32", "openvino-cpu", "ort-cpu-fp32"),
    ("ORT INT8 / OpenVINO", "ort-cpu-int8", "openvino-cpu"),
    ("OV INT8 / OpenVINO", "openvino-cpu-int8", "openvino-cpu"),
    ("OpenVINO / Torch", "openvino-cpu", "torch-cpu-fp32"),
    ("OV f32 / ORT fp32", "openvino-cpu-fp32", "ort-cpu-fp32"),
]


def fixture_release(cfg, folder: Path) -> Path:
    from int8_models import calibration_batch, quantize_int8

    from pillsnap.models.export import export_models

    for task, res in export_models(cfg, folder, TAG).items():
        quantize_int8(Path(res.onnx_path), calibration_batch(cfg, task, 16), task, cfg=cfg)
    return folder


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
            # no val data for these classes: seeded random inputs, no accuracy or pipeline rows
            "benchmark.accuracy_images": 0,
            "benchmark.accuracy_photos": 0,
            "benchmark.pipeline_photos": 0,
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


def production_release(prod, folder: Path) -> Path:
    from int8_models import quantize_int8

    from pillsnap.models.export import export_models

    rng = np.random.default_rng(0)
    for task, res in export_models(prod, folder, TAG).items():
        size = prod.detection.imgsz if task == "detection" else prod.classification.crop_size
        quantize_int8(
            Path(res.onnx_path), rng.random((8, 3, size, size), np.float32), task, cfg=prod
        )
    return folder


def ratio_lines(label: str, record: dict) -> list[str]:
    from pillsnap.bench.stats import find_ratio
    from pillsnap.bench.tables import interval_text

    lines = [
        f"\n{label}: per-round speed-up ratios, median over rounds [95% bootstrap interval]",
        "| model | batch | rounds | " + " | ".join(r[0] for r in RATIOS) + " |",
        "|---|---:|---:|" + "---:|" * len(RATIOS),
    ]
    for task in record["settings"]["models"]:
        for batch in record["settings"]["batch_sizes"]:
            cells = []
            rounds = len(record["round_orders"].get(f"{task}@{batch}", []))
            for _, name, versus in RATIOS:
                iv = find_ratio(record["ratios"], task, batch, name, versus)
                cells.append(interval_text(iv, "x", 3) if iv else "-")
            lines.append(f"| {task} | {batch} | {rounds} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", type=Path, default=ROOT / "examples" / "synthetic" / "config.yaml")
    p.add_argument("--skip-production", action="store_true", help="fixture models only")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--min-seconds", type=float, default=1.0, help="per configuration and round")
    p.add_argument("--batch", default="1,8")
    p.add_argument("--threads", type=int, default=0, help="0 = all usable cores")
    p.add_argument("--no-spinning", action="store_true", help="ONNX Runtime allow_spinning=0")
    p.add_argument(
        "--out", type=Path, help="folder for the benchmark.json records (default: temporary)"
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from pillsnap.bench import run_benchmark
    from pillsnap.bench.tables import goal_text, results_table, text_table
    from pillsnap.config import apply_overrides, load_config

    overrides = {
        "benchmark.configurations": CPU_CONFIGS,
        "benchmark.batch_sizes": [int(b) for b in args.batch.split(",")],
        "benchmark.rounds": args.rounds,
        "benchmark.min_calls": 1,
        "benchmark.min_seconds": args.min_seconds,
        "benchmark.warmup_calls": 2,
        "benchmark.warmup_seconds": 1.0,
        "benchmark.max_seconds": 7200,
        "benchmark.accuracy_images": 200,
        "benchmark.accuracy_photos": 24,
        "benchmark.pipeline_photos": 16,
        "benchmark.threads": args.threads,
        "benchmark.ort_spinning": not args.no_spinning,
    }
    print(f"load average at start {os.getloadavg()} on {os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory(prefix="pillsnap-bench-") as tmp:
        out = args.out or Path(tmp) / "records"
        out.mkdir(parents=True, exist_ok=True)
        cfg = apply_overrides(
            load_config(args.config, {"paths.out_dir": str(Path(tmp) / "runs")}), overrides
        )
        jobs = [("fixture", cfg, fixture_release(cfg, Path(tmp) / "fixture" / TAG))]
        if not args.skip_production:
            prod = production_config(cfg, Path(tmp) / "prod")
            jobs.append(
                ("production", prod, production_release(prod, Path(tmp) / "production" / TAG))
            )
        for label, job_cfg, folder in jobs:
            print(
                f"\n=== {label}: {job_cfg.classification.backbone} / {job_cfg.detection.architecture}",
                flush=True,
            )
            result = run_benchmark(job_cfg, folder, out / f"{label}.json", progress=False)
            record = result.record
            env = record["environment"]
            print(
                f"{env['cpu']['model']}, {record['settings']['threads']} threads, int8 class "
                f"{env['cpu']['int8_class']}, OMP_WAIT_POLICY={env['threading']['OMP_WAIT_POLICY']}, "
                f"ORT spinning {env['threading']['ort_intra_op_spinning']}, load {env['load_average_start']} -> "
                f"{env['load_average_end']}, {record['budget']['used_s']:.0f} s"
            )
            cols = [
                "model",
                "configuration",
                "batch",
                "ms/batch (median [95% CI])",
                "img/s",
                "noisy",
                "accuracy",
                "agreement",
                "reason",
            ]
            print(text_table(results_table(record), cols))
            print("\n".join(ratio_lines(label, record)))
            print(goal_text(record))
            for note in record["budget"]["notes"]:
                print("note:", note)
            print(f"record: {result.path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
