"""How much does ``pillsnap compare`` cost beyond the model compute it cannot avoid?

Two measurements (not a test; CPU heavy, run by hand):

``fixture``
    The demo experiment in coverage mode. The comparison runs in-process with every
    ``Runner.infer`` call recorded (engine, task, batch shape); the same sequence of
    calls is then replayed serially on fresh runners with inputs of the same shapes:
    that is the pure model compute of the same samples (Torch forward + ORT run;
    conv-net compute time does not depend on pixel values), each engine with all its
    threads, one engine after the other. Reported: ``overhead = wall / pure compute``
    for the in-process call with the config's ``compare.parallel_engines`` (the demo:
    side by side), for the same call with the engines in turn, and for the whole
    ``pillsnap compare`` process (which adds interpreter start, imports and model
    loading). Target: in-process <= 1.10 on the 2-core CPU.

``production``
    efficientnetv2_s at 384 px with 5000 classes (random weights; timing only), one
    image per class from the synthetic generator's many-class mode, coverage mode.
    ``--subset N`` measures N images (``compare.max_total=N, min_classes=N``) and
    extrapolates linearly to 5000, clearly labelled.

    python benchmarks/bench_compare.py fixture
    python benchmarks/bench_compare.py production --subset 200
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import pillsnap  # noqa: F401 - offline Ultralytics before anything imports it

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "synthetic" / "config.yaml"


def record_infer_calls() -> list[tuple[str, tuple[int, ...]]]:
    """Patch ``Runner.infer`` to log ``(runner name, batch shape)`` of every call."""
    from pillsnap.engines.runners import Runner

    calls: list[tuple[str, tuple[int, ...]]] = []
    original = Runner.infer

    def infer(self, batch):
        calls.append((self.name, tuple(batch.shape)))
        return original(self, batch)

    Runner.infer = infer
    return calls


def replay(cfg, calls, models: dict[str, str]) -> dict[str, float]:
    """Seconds of pure compute per runner for the recorded calls (serial, inputs pre-built)."""
    from pillsnap.engines.runners import create_runner

    totals: dict[str, float] = {}
    rng = np.random.default_rng(0)
    for task, onnx_path in models.items():
        for engine, path in (("torch", None), ("onnx", onnx_path)):
            with create_runner(engine, task, cfg, path) as runner:
                mine = [shape for name, shape in calls if name == runner.name]
                if not mine:
                    continue
                runner.infer(
                    rng.random(mine[0], dtype=np.float32)
                )  # warm-up, as the real run's first batch is
                total = 0.0
                for shape in mine:
                    x = rng.random(shape, dtype=np.float32)
                    start = time.perf_counter()
                    runner.infer(x)
                    total += time.perf_counter() - start
                totals[runner.name] = total
    return totals


def ensure_val_data(cfg, work: Path):
    """The config's data when present, else the val split generated into ``work`` (same seed as the demo)."""
    from pillsnap.config import apply_overrides
    from pillsnap.synth import generate_dataset

    have = (
        cfg.paths.detection_data
        and Path(cfg.paths.detection_data).exists()
        and cfg.paths.classification_data
        and (Path(cfg.paths.classification_data) / "val").exists()
    )
    if have:
        return cfg
    synth = (
        json.loads((DEMO.parent / "fixture_quality.json").read_text()).get("synth", {})
        if (DEMO.parent / "fixture_quality.json").exists()
        else {}
    )
    generate_dataset(
        work / "data",
        num_classes=cfg.classification.num_classes,
        seed=synth.get("seed", 0),
        splits=("val",),
        val_photos=synth.get("val_photos", 200),
        force=True,
    )
    return apply_overrides(
        cfg,
        {
            "paths.detection_data": str(work / "data" / "detection" / "data.yaml"),
            "paths.classification_data": str(work / "data" / "classification"),
        },
    )


def bench_fixture(args: argparse.Namespace) -> dict:
    """Best of ``--repeat`` rounds (the machine is shared: the minimum is the least disturbed run)."""
    from pillsnap.config import apply_overrides, load_config
    from pillsnap.equivalence.run import run_equivalence
    from pillsnap.models.export import export_models

    work = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    cfg = ensure_val_data(load_config(args.config, [f"compare.mode={args.mode}"]), work)
    exports = export_models(cfg, work / "release")
    models = {t: r.onnx_path for t, r in exports.items()}
    overrides = [
        f"--set=paths.{k}={cfg.paths.model_dump()[k]}"
        for k in ("detection_data", "classification_data")
    ]
    calls = record_infer_calls()
    in_turn_cfg = apply_overrides(cfg, {"compare.parallel_engines": False})
    walls, in_turn_walls, pures, cli_walls, pure_by_runner = [], [], [], [], {}

    def timed(run_cfg, out: Path, into: list[float]):
        start = time.perf_counter()
        res = run_equivalence(
            run_cfg, None, models["classification"], models["detection"], out, progress=False
        )
        into.append(time.perf_counter() - start)
        return res

    for i in range(args.repeat):
        timed(in_turn_cfg, work / f"inturn{i}", in_turn_walls)
        calls.clear()
        result = timed(cfg, work / f"inproc{i}", walls)
        recorded = list(calls)
        pure = replay(cfg, recorded, models)
        pures.append(sum(pure.values()))
        pure_by_runner = pure if pures[-1] == min(pures) else pure_by_runner
        start = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pillsnap.cli",
                "compare",
                "--config",
                str(args.config),
                "--mode",
                args.mode,
                "--classification-onnx",
                models["classification"],
                "--detection-onnx",
                models["detection"],
                "--out-dir",
                str(work / f"cli{i}"),
                "--quiet",
                *overrides,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        cli_walls.append(time.perf_counter() - start)
    compute = min(pures)
    return {
        "mode": args.mode,
        "repeats": args.repeat,
        "failed": result.failed,
        "cli_exit_code": proc.returncode,
        "classification_images": result.report["models"]["classification"]["compare"][
            "sampled_images"
        ],
        "detection_photos": result.report["models"]["detection"]["compare"]["sampled_images"],
        "infer_calls": len(recorded),
        "pure_compute_s": round(compute, 2),
        "pure_compute_runs_s": [round(v, 2) for v in pures],
        "pure_compute_by_runner_s": {k: round(v, 2) for k, v in pure_by_runner.items()},
        "in_process_wall_s": round(min(walls), 2),
        "in_process_wall_runs_s": [round(v, 2) for v in walls],
        "in_process_overhead": round(min(walls) / compute, 3),
        # Each round's wall over the replay measured right after it: robust to the machine's drift.
        "in_process_overhead_per_round": [round(w / p, 3) for w, p in zip(walls, pures)],
        "in_process_overhead_median": round(
            float(np.median([w / p for w, p in zip(walls, pures)])), 3
        ),
        "engines": result.report["timing"]["engines"],
        "in_turn_wall_s": round(min(in_turn_walls), 2),
        "in_turn_wall_runs_s": [round(v, 2) for v in in_turn_walls],
        "in_turn_overhead": round(min(in_turn_walls) / compute, 3),
        "in_turn_overhead_median": round(
            float(np.median([w / p for w, p in zip(in_turn_walls, pures)])), 3
        ),
        "cli_process_wall_s": round(min(cli_walls), 2),
        "cli_wall_runs_s": [round(v, 2) for v in cli_walls],
        "cli_overhead": round(min(cli_walls) / compute, 3),
    }


def bench_production(args: argparse.Namespace) -> dict:
    import torch

    from pillsnap.config import Config, apply_overrides
    from pillsnap.equivalence.run import run_equivalence
    from pillsnap.models.classifier import (
        build_classification_model,
        export_classification_onnx,
        save_classification_checkpoint,
    )
    from pillsnap.synth import generate_dataset

    work = Path(tempfile.mkdtemp(prefix="bench-compare-prod-"))
    n = args.subset or args.classes
    t0 = time.perf_counter()
    generate_dataset(
        work / "data",
        num_classes=args.classes,
        seed=0,
        splits=("val",),
        detection=False,
        crops_per_class=1,
    )
    synth_s = time.perf_counter() - t0
    torch.manual_seed(0)
    model = build_classification_model("efficientnetv2_s", args.classes)
    save_classification_checkpoint(
        work / "checkpoints" / "classification_best.pt",
        model,
        {"backbone": "efficientnetv2_s", "num_classes": args.classes},
    )
    overrides = {
        "paths.exp_dir": str(work),
        "paths.class_map": str(work / "data" / "class_map.json"),
        "paths.classification_data": str(work / "data" / "classification"),
        "classification.backbone": "efficientnetv2_s",
        "classification.num_classes": args.classes,
        "classification.img_size": 384,
        "compare.mode": "coverage",
        "compare.per_class_k": 1,
        "compare.min_classes": min(n, 1000),
        "compare.max_total": n,
    }
    cfg = apply_overrides(
        Config(), overrides
    )  # production defaults: 384 px, ImageNet normalisation
    t0 = time.perf_counter()
    exported = export_classification_onnx(cfg, None, work / "release", "bench")
    export_s = time.perf_counter() - t0
    calls = record_infer_calls()
    t0 = time.perf_counter()
    result = run_equivalence(cfg, None, exported.onnx_path, None, work / "release", progress=True)
    wall = time.perf_counter() - t0
    pure = replay(cfg, calls, {"classification": exported.onnx_path}) if args.replay else {}
    images = result.report["models"]["classification"]["compare"]["sampled_images"]
    out = {
        "classes": args.classes,
        "images_measured": images,
        "synth_s": round(synth_s, 1),
        "export_s": round(export_s, 1),
        "compare_wall_s": round(wall, 1),
        "per_image_s": round(wall / images, 4),
        "runner_compute_s": result.report["timing"],
    }
    if pure:
        out["pure_compute_s"] = round(sum(pure.values()), 1)
        out["overhead"] = round(wall / sum(pure.values()), 3)
    if images < args.classes:
        out["EXTRAPOLATED_full_coverage_wall_s"] = round(wall / images * args.classes, 0)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="what", required=True)
    f = sub.add_parser("fixture")
    f.add_argument("--config", type=Path, default=DEMO)
    f.add_argument("--mode", default="coverage", choices=["smoke", "coverage", "full"])
    f.add_argument(
        "--repeat", type=int, default=3, help="rounds; the best (least disturbed) is reported"
    )
    pr = sub.add_parser("production")
    pr.add_argument("--classes", type=int, default=5000)
    pr.add_argument(
        "--subset", type=int, default=0, help="measure this many images and extrapolate"
    )
    pr.add_argument(
        "--replay", action="store_true", help="also replay the calls for the pure compute time"
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    result = bench_fixture(args) if args.what == "fixture" else bench_production(args)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
