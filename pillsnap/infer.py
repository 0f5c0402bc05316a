"""``python -m pillsnap.infer`` / ``pillsnap infer``: run a model or the pipeline on images.

Results go to ``--out`` as JSON lines (one per image), or to stdout; progress and
the summary go to stderr. Unreadable files are reported and skipped; the exit
code is 0 when at least one image was processed, 1 when none could be, 2 on a
usage error.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import sys
import time
from pathlib import Path
from typing import IO, Any

from pillsnap.config import add_config_arguments
from pillsnap.exceptions import DataError, PillsnapError, UserInputError

TASKS = ("pipeline", "detect", "classify")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pillsnap infer", description=__doc__.split("\n")[0])
    p.add_argument(
        "--engine",
        choices=("torch", "onnx", "tensorrt"),
        default="torch",
        help="torch runs checkpoints, onnx / tensorrt run exported .onnx files (default torch)",
    )
    p.add_argument(
        "--model",
        nargs="+",
        type=Path,
        metavar="PATH",
        default=[],
        help="model file(s); pipeline: DETECTOR CLASSIFIER. torch defaults to the config's checkpoints",
    )
    p.add_argument(
        "--inputs", required=True, help='image glob or folder, e.g. "photos/**/*.jpg" (quote it)'
    )
    p.add_argument(
        "--batch", type=int, default=16, help="images (and crops) per batch (default 16)"
    )
    p.add_argument(
        "--task", choices=TASKS, default="pipeline", help="default pipeline (detect -> classify)"
    )
    add_config_arguments(p, "postprocess.nms.conf_threshold=0.4")
    p.add_argument(
        "--quantize",
        choices=("int8",),
        help="run INT8 models (ONNX Runtime CPU): the release's, or --model quantized and cached",
    )
    p.add_argument("--out", type=Path, help="write JSON lines here instead of stdout")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    try:
        return run(args)
    except UserInputError as exc:
        print(f"pillsnap infer: error: {exc}", file=sys.stderr)
        return 2
    except PillsnapError as exc:
        print(f"pillsnap infer: failed: {exc}", file=sys.stderr)
        return 1


def expand_inputs(pattern: str) -> list[Path]:
    """Files matched by a glob (``**`` recursive) or contained in a folder, sorted."""
    root = Path(pattern).expanduser()
    matches = (
        root.rglob("*")
        if root.is_dir()
        else (Path(p) for p in glob.glob(str(root), recursive=True))
    )
    files = sorted(p for p in matches if p.is_file())
    if not files:
        raise UserInputError(
            f"--inputs {pattern!r} matches no files; quote the glob and check the path"
        )
    return files


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from pillsnap.config import load_config
    from pillsnap.preprocess import load_image

    if args.batch <= 0:
        raise UserInputError(f"--batch must be positive, got {args.batch}")
    cfg = load_config(args.config, args.overrides)
    files = expand_inputs(args.inputs)
    if args.quantize:  # INT8: the release's models, or --model quantized and cached beside it
        from pillsnap.quantize.infer import int8_models

        args.model, warnings = int8_models(cfg, args.task, list(args.model), args.engine)
        args.engine = "onnx"
        for warning in warnings:
            print(f"pillsnap infer: warning: {warning}", file=sys.stderr)
    predict, describe = _make_task(args, cfg)
    processed, skipped, found = 0, [], 0
    start = time.perf_counter()
    sink: IO[str] = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115
    try:
        with tqdm(total=len(files), unit="img", file=sys.stderr, disable=None) as bar:
            for first in range(0, len(files), args.batch):
                paths, images = [], []
                for path in files[first : first + args.batch]:
                    try:
                        images.append(load_image(path))
                        paths.append(path)
                    except DataError as exc:
                        skipped.append(path)
                        tqdm.write(
                            f"skipped {path}: not a readable image ({_reason(exc)})",
                            file=sys.stderr,
                        )
                for path, record, count in zip(paths, *predict(images)):
                    sink.write(json.dumps({"path": str(path), **record}) + "\n")
                    found += count
                processed += len(paths)
                bar.update(len(files[first : first + args.batch]))
    finally:
        if args.out:
            sink.close()
    elapsed = time.perf_counter() - start
    what = (
        "pills"
        if args.task == "pipeline"
        else "detections"
        if args.task == "detect"
        else "classified"
    )
    print(
        f"{processed} image(s) processed, {len(skipped)} skipped, {found} {what}, {elapsed:.2f} s, "
        f"{processed / elapsed if elapsed else 0.0:.2f} images/s [{describe()}]",
        file=sys.stderr,
    )
    if args.out:
        print(f"results: {args.out}", file=sys.stderr)
    if processed == 0:
        print("pillsnap infer: no image could be processed", file=sys.stderr)
        return 1
    return 0


def _make_task(args: argparse.Namespace, cfg: Any) -> tuple[Any, Any]:
    """``predict(images) -> (records, counts)`` for the task, and a one-line engine description."""
    from pillsnap.classmap import ClassMap
    from pillsnap.engines.runners import create_runner
    from pillsnap.pipeline import Pipeline, classify_images, detect_images
    from pillsnap.postprocess import detections_to_dicts
    from pillsnap.preprocess import PreprocessSpec

    models = list(args.model)
    wanted = 2 if args.task == "pipeline" else 1
    if len(models) not in ((0, wanted) if args.engine == "torch" else (wanted,)):
        names = "DETECTOR.onnx CLASSIFIER.onnx" if wanted == 2 else "MODEL"
        raise UserInputError(
            f"--task {args.task} with --engine {args.engine} needs --model {names} "
            f"(got {len(models)} path(s))"
            + ("; torch may omit --model" if args.engine == "torch" else "")
        )
    models += [None] * (wanted - len(models))
    if args.task == "pipeline":
        pipe = Pipeline.from_config(
            cfg, args.engine, models[0], models[1], batch_size=args.batch
        ).activate()

        def predict(images: list) -> tuple[list, list]:
            pills = pipe.predict(images)
            return [{"pills": [p.to_dict() for p in ps]} for ps in pills], [len(ps) for ps in pills]

        return predict, lambda: _describe(pipe.detector, pipe.classifier)
    task = "detection" if args.task == "detect" else "classification"
    runner = create_runner(args.engine, task, cfg, models[0]).activate()
    if task == "detection":

        def predict(images: list) -> tuple[list, list]:
            dets = detect_images(runner, images, cfg, args.batch)
            return [{"detections": detections_to_dicts(d)} for d in dets], [len(d) for d in dets]
    else:
        class_map, spec = (
            ClassMap.load(cfg.paths.class_map_path),
            PreprocessSpec.from_config(cfg.classification),
        )

        def predict(images: list) -> tuple[list, list]:
            scores = classify_images(runner, images, spec, class_map, args.batch)
            return [
                {
                    "class_index": s.class_index,
                    "edi_code": s.edi_code,
                    "name": s.name,
                    "conf": round(s.conf, 6),
                    "top5": [
                        {"index": i, "edi_code": e, "prob": round(p, 6)} for i, e, p in s.top5
                    ],
                }
                for s in scores
            ], [1] * len(scores)

    return predict, lambda: _describe(runner)


def _reason(exc: DataError) -> str:
    cause = exc.__cause__
    if isinstance(
        cause, ImportError
    ):  # Ultralytics' PIL patch tries an absent HEIF plugin on unknown files
        return "unrecognised file format"
    return str(cause or exc)


def _describe(*runners: Any) -> str:
    parts = []
    for r in runners:
        d = r.describe()
        parts.append(f"{d['engine']} {d['precision']} on {','.join(d['providers']) or d['device']}")
    return "; ".join(parts)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
