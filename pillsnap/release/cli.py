"""``pillsnap release``: run a release, verify or diff release records.

pillsnap release [--config PATH] [--set KEY=VALUE ...] [--opset N] [--tag TAG] ...
pillsnap release verify runs/<tag>
pillsnap release diff runs/<a> runs/<b> [--all]
pillsnap release latest [--config PATH]        # newest verified release folder
pillsnap release list [--config PATH]          # every record: released, latest, failed, aborted
pillsnap release clean --aborted [--failed] [--dry-run] [--config PATH]
pillsnap release preflight [--config PATH]     # check every input of a release, write nothing
pillsnap release checkpoints [--config PATH]   # the checkpoint paths a release would read

Exit codes: 0 done, 1 a stage, gate or verification failed, 2 bad input (nothing written).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from pillsnap.config import add_config_arguments, load_config

ACTIONS = ("verify", "diff", "latest", "list", "clean", "preflight", "checkpoints")


def _config_args(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "compare.mode=smoke")
    parser.add_argument(
        "--exp-dir", help="override paths.exp_dir (checkpoints/ and class_map.json)"
    )
    parser.add_argument("--out-dir", help="override paths.out_dir (where runs/<tag>/ goes)")


def _run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pillsnap release",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _config_args(p)
    p.add_argument("--opset", type=int, help="ONNX opset (default export.opset, 17)")
    p.add_argument(
        "--compare-mode", choices=["smoke", "coverage", "full"], help="override compare.mode"
    )
    p.add_argument("--tag", default="", help="release tag; default a new <UTC>-<gitsha> tag")
    p.add_argument("--stages", help="comma-separated stage notebooks (default release.stages)")
    p.add_argument(
        "--notebooks-dir", help="folder of the stage notebooks (default release.notebooks_dir)"
    )
    p.add_argument(
        "--kernel", help="Jupyter kernel name (default: 'pillsnap', installed if missing)"
    )
    p.add_argument(
        "--cell-timeout", type=int, default=None, help="seconds per notebook cell (default none)"
    )
    return p


def _overrides(args: argparse.Namespace) -> list[str]:
    extra = list(args.overrides)
    for flag, key in (
        ("exp_dir", "paths.exp_dir"),
        ("out_dir", "paths.out_dir"),
        ("opset", "export.opset"),
        ("compare_mode", "compare.mode"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            extra.append(f"{key}={value}")
    return extra


def _show(path: Path) -> str:
    """Relative to the cwd when inside it (short, copy-pasteable), else absolute."""
    path = Path(path).absolute()
    return os.path.relpath(path) if path.is_relative_to(Path.cwd()) else str(path)


def cmd_run(argv: list[str]) -> int:
    from pillsnap.release.run import run_release

    args = _run_parser().parse_args(argv)
    overrides = _overrides(args)
    cfg = load_config(args.config, overrides)
    logging.getLogger("papermill").setLevel(logging.WARNING)
    outcome = run_release(
        cfg,
        version_tag=args.tag,
        stages=args.stages.split(",") if args.stages else None,
        notebooks_dir=args.notebooks_dir,
        kernel_name=args.kernel,
        command=["pillsnap", "release", *argv],
        overrides=overrides,
        cell_timeout_s=args.cell_timeout,
        progress=lambda msg: print(msg, flush=True),
    )
    if outcome.report:
        import json

        from pillsnap.report.tables import skipped_summary

        for line in skipped_summary(json.loads(outcome.report.read_text())):
            print(line, file=sys.stderr)
    if not outcome.passed:
        print(f"[FAILED] release {outcome.tag}: {outcome.failure}", file=sys.stderr)
        print(f"Record: {_show(outcome.path)}", file=sys.stderr)
        return 1
    print(f"[OK] Exported: {' '.join(_show(p) for p in outcome.onnx_files.values())}")
    print(f"Report: {_show(outcome.report) if outcome.report else '-'}")
    print(f"Record: {' '.join(_show(p) for p in outcome.html)}")
    print(f"Release: {_show(outcome.path)} (latest -> {outcome.tag})")
    return 0


def cmd_verify(argv: list[str]) -> int:
    from pillsnap.release.manifest import verify_release

    p = argparse.ArgumentParser(
        prog="pillsnap release verify",
        description="recompute hashes against manifest.json; validate the report",
    )
    p.add_argument("release_dir", help="a release folder, e.g. runs/latest or runs/<tag>")
    args = p.parse_args(argv)
    result = verify_release(args.release_dir)
    print(result.summary(), file=sys.stdout if result.ok else sys.stderr)
    return 0 if result.ok else 1


def cmd_diff(argv: list[str]) -> int:
    from pillsnap.release.diff import diff_releases, format_diff

    p = argparse.ArgumentParser(
        prog="pillsnap release diff", description="what changed between two releases"
    )
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--all", action="store_true", help="list unchanged values too")
    args = p.parse_args(argv)
    from pillsnap.exceptions import UserInputError
    from pillsnap.release.manifest import MANIFEST_NAME

    for folder in (args.a, args.b):
        if not (Path(folder) / MANIFEST_NAME).is_file():
            what = "does not exist" if not Path(folder).exists() else f"has no {MANIFEST_NAME}"
            raise UserInputError(
                f"{folder} is not a release folder: it {what}. `release diff` compares two "
                f"release records, e.g. runs/<tag-a> runs/latest (`pillsnap release list` shows them)."
            )
    try:
        rows = diff_releases(args.a, args.b)
    except (ValueError, OSError) as exc:  # a manifest that is not JSON or of another format
        raise UserInputError(f"cannot compare {args.a} and {args.b}: {exc}") from None
    names = Path(args.a).resolve().name, Path(args.b).resolve().name  # `latest` -> its tag
    print(format_diff(rows, *names, only_changed=not args.all))
    return 0


def cmd_latest(argv: list[str]) -> int:
    from pillsnap.release.manifest import find_newest_release

    p = argparse.ArgumentParser(
        prog="pillsnap release latest", description="print the newest verified release"
    )
    _config_args(p)
    args = p.parse_args(argv)
    cfg = load_config(args.config, _overrides(args))
    newest = find_newest_release(cfg.paths.out_dir)
    from pillsnap.release.promote import current_latest

    linked = current_latest(cfg.paths.out_dir)
    if (newest.resolve() if newest else None) != linked:
        print(
            f"warning: {cfg.paths.out_dir / 'latest'} points at {linked or 'nothing'}, the newest "
            f"verified release is {newest or 'none'}; the next `pillsnap release` repairs the link "
            "before it starts",
            file=sys.stderr,
        )
    if newest is None:
        print(f"no verified release in {cfg.paths.out_dir}", file=sys.stderr)
        return 1
    print(newest)
    return 0


def cmd_list(argv: list[str]) -> int:
    from pillsnap.release.promote import list_records

    p = argparse.ArgumentParser(
        prog="pillsnap release list",
        description="every run record in paths.out_dir: released (latest), failed, aborted, partial",
    )
    _config_args(p)
    args = p.parse_args(argv)
    out = load_config(args.config, _overrides(args)).paths.out_dir
    rows = list_records(out) if out.is_dir() else []
    if not rows:
        print(f"no release records in {out}")
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['name']:<{width}}  {r['status']:<8}  {r['size_mb']:>8} MB")
    aborted = sum(r["status"] == "aborted" for r in rows)
    if aborted:
        print(f"{aborted} aborted run(s): remove with `pillsnap release clean --aborted`")
    return 0


def cmd_clean(argv: list[str]) -> int:
    from pillsnap.exceptions import UserInputError
    from pillsnap.release.promote import clean_records

    p = argparse.ArgumentParser(
        prog="pillsnap release clean",
        description="remove the records of killed (--aborted) and/or failed (--failed) runs; "
        "releases are never removed",
    )
    _config_args(p)
    p.add_argument("--aborted", action="store_true", help="<tag>.aborted folders (killed runs)")
    p.add_argument("--failed", action="store_true", help="<tag>.failed folders (failed runs)")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed")
    args = p.parse_args(argv)
    statuses = tuple(s for s in ("aborted", "failed") if getattr(args, s))
    if not statuses:
        raise UserInputError("say what to remove: `--aborted` and/or `--failed`")
    out = load_config(args.config, _overrides(args)).paths.out_dir
    removed = clean_records(out, statuses, dry_run=args.dry_run) if out.is_dir() else []
    verb = "would remove" if args.dry_run else "removed"
    for folder in removed:
        print(f"{verb} {_show(folder)}")
    print(f"{verb} {len(removed)} {' and '.join(statuses)} record(s) in {_show(out)}")
    return 0


def cmd_preflight(argv: list[str]) -> int:
    from pillsnap.release.run import absolute_paths, preflight_release

    p = argparse.ArgumentParser(
        prog="pillsnap release preflight",
        description="check everything a release needs (checkpoints weights-only, class map, "
        "data, output folder) without writing anything; exit 2 names each problem",
    )
    _config_args(p)
    args, _run_options = p.parse_known_args(argv)  # accepts a full `release` command line
    preflight_release(absolute_paths(load_config(args.config, _overrides(args))))
    print("preflight passed: checkpoints, class map, data and output folder are usable")
    return 0


def cmd_checkpoints(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="pillsnap release checkpoints",
        description="print the detection and classification checkpoint paths, one a line",
    )
    _config_args(p)
    args, _run_options = p.parse_known_args(argv)  # accepts a full `release` command line
    cfg = load_config(args.config, _overrides(args))
    for task in ("detection", "classification"):
        print(cfg.checkpoint_path(task, must_exist=False))  # type: ignore[arg-type]
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ACTIONS:
        return {
            "verify": cmd_verify,
            "diff": cmd_diff,
            "latest": cmd_latest,
            "list": cmd_list,
            "clean": cmd_clean,
            "preflight": cmd_preflight,
            "checkpoints": cmd_checkpoints,
        }[argv[0]](argv[1:])
    if argv and argv[0] == "run":
        argv = argv[1:]
    return cmd_run(argv)
