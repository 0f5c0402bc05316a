"""``python -m pillsnap.infer`` / ``pillsnap infer``: run a model or the pipeline on images.

Results go to ``--out`` as JSON lines (one per image), or to stdout; progress and
the summary go to stderr. ``--out`` must be a new file (``--force`` replaces one), not
a folder nor one of the inputs; it is written to a temporary file and moved into place
at the end, so a run that processes nothing leaves an earlier result as it was. Unreadable files are reported and skipped; the exit
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
    p.add_argument(
        "--out",
        type=Path,
        help="write JSON lines to this new file (atomically) instead of stdout; never an input",
    )
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
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
    if args.quantize:
        from pillsnap.quantize.infer import check_engine, int8_models

        check_engine(args.engine)
        if args.model:  # the float32 models and --out pass before any of them is quantized
            preflight_infer(argparse.Namespace(**{**vars(args), "engine": "onnx"}), cfg, files)
        args.model, warnings = int8_models(cfg, args.task, list(args.model), args.engine)
        args.engine = "onnx"
        for warning in warnings:
            print(f"pillsnap infer: warning: {warning}", file=sys.stderr)
    preflight_infer(args, cfg, files)
    predict, describe = _make_task(args, cfg)
    processed, skipped, found = 0, [], 0
    start = time.perf_counter()
    sink: IO[str] = _open_result(args.out) if args.out else sys.stdout
    completed = False
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
                            f"skipped {path}: {_reason(exc)}",
                            file=sys.stderr,
                        )
                for path, record, count in zip(paths, *predict(images)):
                    sink.write(json.dumps({"path": str(path), **record}) + "\n")
                    found += count
                processed += len(paths)
                bar.update(len(files[first : first + args.batch]))
        completed = True
    finally:
        if args.out:  # --out is replaced only by a finished run that processed something
            _close_result(sink, args.out, keep=completed and processed > 0)
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
    if args.out and processed:
        print(f"results: {args.out}", file=sys.stderr)
    if processed == 0:
        kept = f"; {args.out} was not written" if args.out else ""
        print(f"pillsnap infer: no image could be processed{kept}", file=sys.stderr)
        return 1
    return 0


def _task_models(args: argparse.Namespace) -> dict[str, Path | None]:
    """``{task: model path or None (the config's checkpoint)}`` of the run; a usage error if the
    number of ``--model`` paths does not fit the task and engine."""
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
    tasks = {"pipeline": ["detection", "classification"], "detect": ["detection"]}
    return dict(zip(tasks.get(args.task, ["classification"]), models))


def preflight_infer(args: argparse.Namespace, cfg: Any, files: list[Path]) -> None:
    """The models load (checkpoints weights-only, ONNX files readable, of their task), the class
    map fits, and ``--out`` is a new file (or ``--force``) that is none of the inputs."""
    from pillsnap.preflight import run_preflight

    models = _task_models(args)
    torch = args.engine == "torch"
    inputs = [*files, *(m for m in models.values() if m), *([args.config] if args.config else [])]
    if torch:
        inputs += [cfg.checkpoint_path(t, must_exist=False) for t, m in models.items() if m is None]
    run_preflight(
        cfg,
        checkpoints=list(models) if torch else [],
        checkpoint_paths=models if torch else None,
        onnx={} if torch else {t: m for t, m in models.items() if m},
        onnx_keys=dict.fromkeys(models, "--model"),
        class_map=args.task in ("pipeline", "classify"),
        out_file=args.out,
        inputs=inputs,
        force=args.force,
    )


def _open_result(path: Path) -> IO[str]:
    """A temporary file next to ``path`` (its folder created if missing); see ``_close_result``."""
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    import os

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return open(tmp, "w", encoding="utf-8")  # closed by _close_result


def _close_result(sink: IO[str], path: Path, keep: bool) -> None:
    """Replace ``path`` with the finished results atomically, or drop them (``path`` untouched)."""
    import os

    from pillsnap.fileio import chmod_default

    sink.flush()
    os.fsync(sink.fileno())
    sink.close()
    if keep:
        chmod_default(sink.name)
        os.replace(sink.name, path)
    else:
        Path(sink.name).unlink(missing_ok=True)


def _make_task(args: argparse.Namespace, cfg: Any) -> tuple[Any, Any]:
    """``predict(images) -> (records, counts)`` for the task, and a one-line engine description."""
    from pillsnap.classmap import ClassMap
    from pillsnap.engines.runners import create_runner
    from pillsnap.pipeline import Pipeline, classify_images, detect_images
    from pillsnap.postprocess import detections_to_dicts
    from pillsnap.preprocess import PreprocessSpec

    models = list(_task_models(args).values())
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
    return str(getattr(exc, "reason", None) or exc)


def _describe(*runners: Any) -> str:
    parts = []
    for r in runners:
        d = r.describe()
        parts.append(f"{d['engine']} {d['precision']} on {','.join(d['providers']) or d['device']}")
    return "; ".join(parts)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
