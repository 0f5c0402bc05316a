"""``pillsnap compare``: Torch <-> ONNX equivalence from the command line.

With ``--classification-onnx`` / ``--detection-onnx`` the given files are checked
against the checkpoints named by the config (only the models given are compared;
end-to-end parity needs both). Without them both models are exported first into
``--out-dir`` (default ``{paths.out_dir}/<version tag>``). Exit codes: 0 passed,
1 a gate failed (reason and likely causes printed and written to
``export_report.json``), 2 bad input (including an ONNX exported for another
pre-processing).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pillsnap.config import add_config_arguments

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pillsnap compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(p, "compare.seed=3")
    p.add_argument(
        "--mode",
        choices=["smoke", "coverage", "full"],
        help="sampling mode (overrides compare.mode)",
    )
    p.add_argument(
        "--classification-onnx", type=Path, help="compare this classifier ONNX instead of exporting"
    )
    p.add_argument(
        "--detection-onnx", type=Path, help="compare this detector ONNX instead of exporting"
    )
    p.add_argument("--out-dir", type=Path, help="release folder for the report (and exports)")
    p.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bars or progress log: only warnings and the final summary",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    from pillsnap.config import load_config

    args = build_parser().parse_args(argv)
    if args.quiet:
        logging.getLogger().setLevel(logging.WARNING)
    overrides = list(args.overrides) + ([f"compare.mode={args.mode}"] if args.mode else [])
    cfg = load_config(args.config, overrides)
    exports = None
    out_dir = args.out_dir
    if args.classification_onnx is None and args.detection_onnx is None:
        from pillsnap.models.export import export_models
        from pillsnap.versioning import prepare_version_tag

        tag = prepare_version_tag()
        out_dir = out_dir or cfg.paths.out_dir / tag
        log.info("exporting both models into %s ...", out_dir)
        exports = export_models(cfg, out_dir, tag)

    from pillsnap.equivalence.run import run_equivalence

    result = run_equivalence(
        cfg,
        exports,
        args.classification_onnx,
        args.detection_onnx,
        out_dir,
        progress=not args.quiet,
    )
    # Without --quiet the library has logged each parity line and the verdict as it finished.
    if args.quiet:
        for parity in (result.classification, result.detection, result.end_to_end):
            if parity is not None:
                print(parity.summary_line())
        for localised in result.divergence.values():
            print(localised.summary())
        print(result.verdict.summary_line())
    if exports:
        print("exported: " + " ".join(str(res.onnx_path) for res in exports.values()))
    print(f"report: {result.report_path}")
    if not result.failed:
        return 0
    print("\nFAILED:", file=sys.stderr)
    for check in result.verdict.failed_checks:
        print(f"  - {check.describe()}", file=sys.stderr)
    for localised in result.divergence.values():
        print(f"layer by layer: {localised.headline()}", file=sys.stderr)
    if result.verdict.causes:
        print("likely causes (most likely first):", file=sys.stderr)
        for i, cause in enumerate(result.verdict.causes, 1):
            print(
                f"  {i}. [{cause['model']}] {cause['title']} (score {cause['score']:.2f}): {cause['evidence']}",
                file=sys.stderr,
            )
            print(f"     fix: {cause['advice']}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
