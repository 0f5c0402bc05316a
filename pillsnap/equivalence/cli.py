"""``pillsnap compare``: Torch <-> ONNX equivalence from the command line.

With ``--classification-onnx`` / ``--detection-onnx`` the given files are checked
against the checkpoints named by the config (only the models given are compared;
end-to-end parity needs both). Without them both models are exported first into
``--out-dir`` (default ``{paths.out_dir}/<version tag>``). Exit codes: 0 passed,
1 a gate failed (reason and likely causes printed and written to
``export_report.json``), 2 bad input (including an ONNX exported for another
pre-processing), found by the preflight before anything is exported or written.

``--out-dir`` must be a new folder or one that is not a release record: a release
folder (``manifest.json``), anything inside it, ``latest`` and the ``.partial`` /
``.failed`` / ``.aborted`` names are refused. Without ``--out-dir``, ONNX files from
a release folder write their report into ``{paths.out_dir}/scratch/compare-<tag>/``.
An earlier comparison in the output folder (``export_report.json``, ``equivalence/``) is
never replaced silently: ``--force`` replaces it, or choose another ``--out-dir``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pillsnap.config import add_config_arguments
from pillsnap.preflight import run_preflight

if TYPE_CHECKING:
    from pillsnap.config import Config

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
    p.add_argument(
        "--out-dir",
        type=Path,
        help="new (or scratch) folder for the report and exports; release folders are refused",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an earlier comparison (export_report.json, equivalence/) in the output folder",
    )
    p.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bars or progress log: only warnings and the final summary",
    )
    return p


def default_out_dir(cfg: Config, onnx: dict[str, Path], tag: str) -> Path:
    """``{paths.out_dir}/<tag>`` when exporting; else the first ONNX file's folder, unless that is
    a release record, whose report must not be replaced: then a new scratch folder."""
    from pillsnap.names import SCRATCH, record_of, reserved_reason

    if not onnx:
        return cfg.paths.out_dir / tag
    folder = Path(next(iter(onnx.values()))).parent
    if record_of(folder) is None and not reserved_reason(folder.name):
        return folder
    from pillsnap.versioning import utc_timestamp

    scratch = cfg.paths.out_dir / SCRATCH / f"compare-{utc_timestamp()}"
    log.warning(
        "%s is a release record; writing the comparison into %s (pass --out-dir to choose)",
        folder,
        scratch,
    )
    return scratch


def refuse_earlier_comparison(out_dir: Path, force: bool) -> None:
    """An earlier report (or its per-sample data) in ``out_dir`` stays unless ``--force``."""
    from pillsnap.equivalence.store import FOLDER, REPORT_NAME
    from pillsnap.exceptions import UserInputError

    earlier = [p.name for p in (out_dir / REPORT_NAME, out_dir / FOLDER) if p.exists()]
    if earlier and not force:
        raise UserInputError(
            f"{out_dir} already holds an earlier comparison ({', '.join(earlier)}); pass --force "
            "to replace it, or --out-dir NEW_FOLDER to keep it"
        )


def main(argv: list[str] | None = None) -> int:
    from pillsnap.config import load_config
    from pillsnap.versioning import prepare_version_tag

    args = build_parser().parse_args(argv)
    if args.quiet:
        logging.getLogger().setLevel(logging.WARNING)
    overrides = list(args.overrides) + ([f"compare.mode={args.mode}"] if args.mode else [])
    cfg = load_config(args.config, overrides)
    onnx = {
        task: path
        for task, path in (
            ("classification", args.classification_onnx),
            ("detection", args.detection_onnx),
        )
        if path is not None
    }
    tasks = list(onnx) or ["detection", "classification"]
    tag = "" if onnx else prepare_version_tag()
    out_dir = args.out_dir or default_out_dir(cfg, onnx, tag)
    run_preflight(
        cfg,
        checkpoints=tasks,
        onnx=onnx,
        class_map=True,
        data=tasks,
        out_dir=out_dir,
        out_dir_key="--out-dir" if args.out_dir else "paths.out_dir",
    )
    refuse_earlier_comparison(
        out_dir, args.force
    )  # after the release-record refusal, which --force never lifts
    exports = None
    if not onnx:
        from pillsnap.models.export import export_models

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
    from pillsnap.report.tables import skipped_summary

    for line in skipped_summary(result.report):
        print(line, file=sys.stderr)
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
