"""Static INT8 (QDQ) vs float32 on ONNX Runtime's CPU kernels, side by side, with the CPU's flags.

    .venv/bin/python benchmarks/bench_quantize.py [fixture] [production] [--rounds N] [--json OUT]

* fixture: the demo's two models exported, then the quantization stage itself
  (``quantize_release``: recipes, exclusions, the int8 gates on the val images
  calibration did not see); its gate metrics, then INT8 vs float32 at the benchmark
  batches (classifier 16, detector 4), plus dynamic quantization of the classifier
  (``quantize_dynamic``: no calibration, the sketch the spec rejects) for reference;
* production: efficientnetv2_s at 384 px with 5000 classes and yolo11m at 640 px,
  random weights (speed only; no download), exported by the project's exporters,
  quantized by the stage's recipe and known exclusions on random calibration inputs.

Every speed figure is the median over interleaved rounds of the per-round time ratio
float32 / INT8 (order alternating each round): the only figure that holds on a shared,
drifting machine. A script, not a test: it prints, it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "synthetic" / "config.yaml"


def speed(cfg, task, fp32, int8, batch, rounds):
    from pillsnap.config import apply_overrides
    from pillsnap.quantize.gate import speedup

    return speedup(apply_overrides(cfg, {"quantize.speed_rounds": rounds}), task, fp32, int8, batch)


def row(name, batch, s):
    return (
        f"  {name:<46} batch {batch:>2}: fp32 {s['fp32_ms']:>8.1f} ms, int8 {s['int8_ms']:>8.1f} ms, "
        f"speedup {s['speedup']:.2f}x (per-round {min(s['ratios']):.2f}-{max(s['ratios']):.2f}, "
        f"{s['rounds']} rounds)"
    )


def fixture(rounds: int, out: dict) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from pillsnap.config import load_config
    from pillsnap.models.export import export_models
    from pillsnap.quantize import quantize_release
    from pillsnap.quantize.calibrate import CalibrationReader, default_loader
    from pillsnap.quantize.gate import speed_batch
    from pillsnap.quantize.recipes import quiet_ort_quantization

    cfg = load_config(DEMO)
    with tempfile.TemporaryDirectory(prefix="bench-quantize-") as tmp:
        folder = Path(tmp)
        tag = "20250101-000000-bench00"
        exports = export_models(cfg, folder, tag)
        started = time.perf_counter()
        result = quantize_release(cfg, folder, tag)
        stage_s = time.perf_counter() - started
        print(
            f"\nfixture: quantization stage {stage_s:.0f} s wall, verdict {'passed' if not result.failed else 'FAILED: ' + str(result.reason)}"
        )
        gates = result.final.checks if result.final is not None else []
        for check in gates:
            print(f"  gate {check.describe():<70} {'pass' if check.passed else 'FAIL'}")
        out["fixture"] = {
            "stage_s": round(stage_s, 1),
            "failed": result.failed,
            "gates": [c.to_dict() for c in gates],
        }
        for task, batch_size in (("classification", 16), ("detection", 4)):
            fp32 = Path(exports[task].onnx_path)
            int8 = result.shipped.get(task)
            outcome = result.outcomes[task]
            if int8 is None:  # a failed stage removed its files: nothing to time
                print(f"  {task}: no INT8 model shipped ({outcome.reason}); no speed row")
                continue
            items = outcome.calibration.paths[:batch_size]
            reader = CalibrationReader(items, "x", default_loader(cfg, task), batch_size)
            batch = speed_batch(reader.first_images(batch_size), batch_size)
            s = speed(cfg, task, fp32, int8, batch, rounds)
            print(row(f"{task} {outcome.recipe['name']} (real images)", batch_size, s))
            out["fixture"][task] = {"recipe": outcome.recipe, **s}
            if task == "classification":
                dyn = folder / "classification.dynamic.onnx"
                with quiet_ort_quantization():
                    quantize_dynamic(str(outcome.float_path), str(dyn), weight_type=QuantType.QInt8)
                s = speed(cfg, task, fp32, dyn, batch, rounds)
                print(row("classification dynamic INT8 (quantize_dynamic)", batch_size, s))
                out["fixture"]["classification_dynamic"] = s


def production(rounds: int, out: dict) -> None:
    import torch

    from pillsnap.classmap import ClassMap, PillClass
    from pillsnap.config import load_config
    from pillsnap.config.quantize import Recipe
    from pillsnap.models.classifier import (
        build_classification_model,
        save_classification_checkpoint,
    )
    from pillsnap.models.detector import build_detection_model, save_detection_checkpoint
    from pillsnap.models.export import export_models
    from pillsnap.quantize import exclusions, recipes
    from pillsnap.quantize.calibrate import CalibrationReader
    from pillsnap.quantize.recipes import quiet_ort_quantization

    with tempfile.TemporaryDirectory(prefix="bench-quantize-prod-") as tmp:
        root = Path(tmp)
        torch.manual_seed(0)
        cfg = load_config(
            None, {"paths.exp_dir": str(root), "paths.class_map": str(root / "class_map.json")}
        )
        ckpts = root / "checkpoints"
        c, d = cfg.classification, cfg.detection
        save_classification_checkpoint(
            ckpts / c.checkpoint,
            build_classification_model(c.backbone, c.num_classes),
            {"backbone": c.backbone, "num_classes": c.num_classes},
        )
        save_detection_checkpoint(
            ckpts / d.checkpoint, build_detection_model(d.architecture, d.num_classes), d.imgsz
        )
        ClassMap(
            [PillClass(i, f"c{i:04d}", f"99{i:07d}", f"pill {i}") for i in range(c.num_classes)],
            {"synthetic": True},
        ).save(root / "class_map.json")
        t0 = time.perf_counter()
        exports = export_models(cfg, root / "release", "20250101-000000-prod000")
        print(f"\nproduction sizes (random weights): exported in {time.perf_counter() - t0:.0f} s")
        cpu = recipes.cpu_record()
        rng = np.random.default_rng(0)
        for task, size, batches in (
            ("classification", c.img_size, (1, 4)),
            ("detection", d.imgsz, (1,)),
        ):
            fp32 = Path(exports[task].onnx_path)
            pre = recipes.preprocess_model(fp32, root / f"{task}.pre.onnx")
            import onnx

            known = exclusions.known_exclusions(
                cfg, task, onnx.load(str(pre), load_external_data=False)
            )
            data = rng.standard_normal((8, 3, size, size)).astype(np.float32)
            if task == "detection":
                data = rng.random((8, 3, size, size), dtype=np.float32)  # letterboxed [0, 1]
            reader = CalibrationReader(
                [Path(str(i)) for i in range(8)],
                onnx.load(str(pre), load_external_data=False).graph.input[0].name,
                lambda p, data=data: data[int(p.name)],
                2,
            )
            t0 = time.perf_counter()
            int8 = recipes.quantize_model(
                pre,
                root / f"{task}.int8.onnx",
                Recipe.minmax_per_channel(),
                cpu,
                reader,
                root / f"{task}-cal.json",
                [e.node for e in known],
            )
            print(
                f"  {task}: quantize_static (8 random calibration inputs) {time.perf_counter() - t0:.0f} s, {len(known)} nodes kept float"
            )
            out.setdefault("production", {})[task] = {}
            for bs in batches:
                s = speed(cfg, task, fp32, int8, data[:bs], rounds)
                print(row(f"{task} {exports[task].arch} {size}px minmax_pc_u8", bs, s))
                out["production"][task][f"batch_{bs}"] = s
            if task == "classification":
                from onnxruntime.quantization import QuantType, quantize_dynamic

                dyn = root / "classification.dynamic.onnx"
                with quiet_ort_quantization():
                    quantize_dynamic(str(pre), str(dyn), weight_type=QuantType.QInt8)
                s = speed(cfg, task, fp32, dyn, data[:4], max(3, rounds // 3))
                print(row("classification dynamic INT8 (quantize_dynamic)", 4, s))
                out["production"]["classification_dynamic"] = s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("parts", nargs="*", help="fixture and/or production (default: both)")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds per figure")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from pillsnap.environment import library_versions
    from pillsnap.quantize.recipes import cpu_record, flags_text

    cpu = cpu_record()
    versions = library_versions()
    print(
        f"CPU: {cpu['model']}, {cpu['cores']} cores; INT8 class {cpu['int8_class']}; flags {flags_text(cpu)}"
    )
    print(
        f"onnxruntime {versions.get('onnxruntime')}, onnx {versions.get('onnx')}, torch {versions.get('torch')}"
    )
    out: dict = {"cpu": cpu, "versions": versions}
    parts = args.parts or ["fixture", "production"]
    unknown = [p for p in parts if p not in ("fixture", "production")]
    if unknown:
        parser.error(f"unknown part(s) {unknown}; expected fixture and/or production")
    for part in parts:
        {"fixture": fixture, "production": production}[part](args.rounds, out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
