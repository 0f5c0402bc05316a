"""``pillsnap quantize``: the INT8 stage from the command line.

Quantizes the float32 ONNX files of ``--out-dir`` (a release folder in the making, or
any folder holding ``detection-<tag>.onnx`` / ``classification-<tag>.onnx``); without
them, both models are exported there first. Without ``--out-dir`` a new folder
``{paths.out_dir}/<version tag>`` is used. Writes ``<task>-<tag>.int8.onnx``,
``quantization.json``, ``quantization/`` and the ``quantization`` sections of
``export_report.json``. Exit codes: 0 INT8 passed (or failed with
``quantize.required: false``: no INT8 files, said so), 1 INT8 failed its gates, 2 bad
input (including a finished release folder, which is never modified).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pillsnap.config import add_config_arguments


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pillsnap quantize",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(p, "quantize.calibration_count=100")
    p.add_argument("--out-dir", type=Path, help="folder with the float32 ONNX files to quantize")
    p.add_argument("--tag", default="", help="version tag of the files (default: from the files)")
    p.add_argument("--quiet", action="store_true", help="only warnings and the final summary")
    return p


def main(argv: list[str] | None = None) -> int:
    from pillsnap.config import load_config
    from pillsnap.quantize.stage import ensure_float_models, quantize_release
    from pillsnap.versioning import prepare_version_tag

    args = build_parser().parse_args(argv)
    if args.quiet:
        logging.getLogger().setLevel(logging.WARNING)
    cfg = load_config(args.config, args.overrides)
    tag = args.tag
    folder = args.out_dir
    if folder is None:
        tag = tag or prepare_version_tag()
        folder = cfg.paths.out_dir / tag
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "manifest.json").is_file():
        from pillsnap.exceptions import UserInputError

        raise UserInputError(
            f"{folder} is a finished release (manifest.json): it is never modified; pass a new "
            "--out-dir, or run `pillsnap release` with the quantization stage"
        )
    floats = ensure_float_models(cfg, folder, tag)
    result = quantize_release(cfg, folder, tag)
    for task, outcome in result.outcomes.items():
        print(
            f"{task}: recipe {outcome.recipe['name']} (reduce_range {outcome.recipe['reduce_range']}), "
            f"{len(outcome.search_groups)} group(s) kept float by the search, "
            f"{outcome.speed.get('speedup', float('nan')):.2f}x float32 at batch "
            f"{outcome.speed.get('batch')}; source {floats[task].name}"
        )
    print(result.summary_line())
    print(f"record: {folder / 'quantization.json'}")
    if result.failed and result.required:
        print(f"\nFAILED: {result.reason}", file=sys.stderr)
        for outcome in result.outcomes.values():
            for cause in outcome.causes:
                print(f"  likely cause: {cause['title']}: {cause['evidence']}", file=sys.stderr)
                print(f"  fix: {cause['advice']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
