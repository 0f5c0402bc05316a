"""``pillsnap synth``: generate the synthetic pill data set; ``pillsnap synth train``: fixture models.

The CLI only parses arguments and calls ``generate_dataset`` / ``train_fixtures``.
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import fields

from pillsnap.synth.dataset import SPLITS, generate_dataset
from pillsnap.synth.train_classifier import ClassifierTrainSpec
from pillsnap.synth.train_detector import DetectorTrainSpec

DEFAULT_CONFIG = "examples/synthetic/config.yaml"


def _generate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pillsnap synth",
        description="Generate seeded synthetic pill photos (YOLO detection data), classifier crops and a class map. "
        "`pillsnap synth train --help` trains the fixture models on them.",
    )
    p.add_argument("--out", default="data/synthetic", help="output folder (default: %(default)s)")
    p.add_argument(
        "--classes", type=int, default=40, help="number of pill classes (default: %(default)s)"
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed; same seed -> identical files (default: %(default)s)",
    )
    p.add_argument(
        "--splits", nargs="+", choices=SPLITS, default=list(SPLITS), help="splits to write"
    )
    p.add_argument(
        "--train-photos", type=int, default=1000, help="photos in train (default: %(default)s)"
    )
    p.add_argument(
        "--val-photos", type=int, default=200, help="photos in val (default: %(default)s)"
    )
    p.add_argument(
        "--no-detection",
        action="store_true",
        help="write classification crops only (one-pill close-ups), e.g. for --classes 5000",
    )
    p.add_argument(
        "--crops-per-class",
        type=int,
        default=1,
        help="crops per class and split with --no-detection (default: %(default)s)",
    )
    p.add_argument(
        "--crop-padding",
        type=float,
        default=None,
        help="box padding of the crops; default: classification.preprocessing.crop_padding of --config",
    )
    p.add_argument(
        "--config", default=None, help="config whose crop_padding to use (default: built-in 0.0)"
    )
    p.add_argument(
        "--force", action="store_true", help="replace the generated splits in a non-empty --out"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pillsnap synth train",
        description="Train the fixture detector (YOLO11n) and classifier (timm) of the demo experiment on the "
        "synthetic data, measure them on val and write fixture_quality.json.",
    )
    p.add_argument("--config", default=DEFAULT_CONFIG, help="demo config (default: %(default)s)")
    p.add_argument("--only", choices=["detection", "classification"], help="train one model only")
    p.add_argument(
        "--eval-only", action="store_true", help="measure the saved checkpoints, do not train"
    )
    p.add_argument(
        "--workdir",
        default="yolo_runs",
        help="Ultralytics run folder (git-ignored; default: %(default)s)",
    )
    p.add_argument(
        "overrides", nargs="*", help="dotted config overrides, e.g. classification.img_size=160"
    )
    for prefix, spec in (("det", DetectorTrainSpec), ("cls", ClassifierTrainSpec)):
        for f in fields(spec):
            if f.type in ("int", "float") and f.name != "imgsz":  # imgsz: detection.imgsz
                p.add_argument(
                    f"--{prefix}-{f.name.replace('_', '-')}",
                    type=int if f.type == "int" else float,
                    default=f.default,
                    dest=f"{prefix}_{f.name}",
                    help="(default: %(default)s)",
                )
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(argv or [])
    if argv and argv[0] == "train":
        return _train(argv[1:])
    args = _generate_parser().parse_args(argv)
    padding = args.crop_padding
    if padding is None:
        padding = 0.0
        if args.config:
            from pillsnap.config import load_config

            padding = load_config(args.config).classification.preprocessing.crop_padding
    summary = generate_dataset(
        args.out,
        num_classes=args.classes,
        seed=args.seed,
        splits=args.splits,
        train_photos=args.train_photos,
        val_photos=args.val_photos,
        force=args.force,
        detection=not args.no_detection,
        crops_per_class=args.crops_per_class,
        crop_padding=padding,
        progress=not args.quiet,
    )
    print(summary.format())
    return 0


def _train(argv: list[str]) -> int:
    from pillsnap.config import load_config
    from pillsnap.synth.train import TASKS, train_fixtures

    args = _train_parser().parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    det = DetectorTrainSpec(
        **{f.name: getattr(args, f"det_{f.name}", f.default) for f in fields(DetectorTrainSpec)}
    )
    cls = ClassifierTrainSpec(
        **{f.name: getattr(args, f"cls_{f.name}", f.default) for f in fields(ClassifierTrainSpec)}
    )
    tasks = (args.only,) if args.only else TASKS
    command = "pillsnap synth train " + shlex.join(argv)
    quality = train_fixtures(
        cfg, tasks, det, cls, args.workdir, command=command.strip(), eval_only=args.eval_only
    )
    for task in tasks:
        rec = quality[task]
        print(f"{task}: {rec['metrics']} -> {'PASS' if rec['passed'] else 'FAIL'}")
    print(
        f"sizes (MB): {quality['sizes_mb']}; written {cfg.paths.exp_dir / 'fixture_quality.json'}"
    )
    return 0 if all(quality[t]["passed"] for t in tasks) else 1
