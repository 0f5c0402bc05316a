"""``pillsnap bench``: benchmark a release from the command line and print the tables.

pillsnap bench --config C [--release runs/latest] [--only classifier] [--batch 1,8]
               [--configs ort-cpu-fp32,openvino-cpu] [--out FILE.json] [--set KEY=VALUE ...]

Exit codes: 0 measured, 1 a configuration of ``benchmark.require`` did not run,
2 bad input (unknown configuration, missing release, bad batch list).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pillsnap.config import add_config_arguments, load_config
from pillsnap.exceptions import UserInputError

_ONLY = {
    "classifier": "classification",
    "classification": "classification",
    "detector": "detection",
    "detection": "detection",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pillsnap bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(p, "benchmark.rounds=3")
    p.add_argument(
        "--release", help="release folder (default: <paths.out_dir>/latest, the newest release)"
    )
    p.add_argument("--only", choices=sorted(_ONLY), help="benchmark one model only")
    p.add_argument("--batch", help="comma-separated batch sizes (default benchmark.batch_sizes)")
    p.add_argument(
        "--configs", help="comma-separated configurations (default benchmark.configurations)"
    )
    p.add_argument(
        "--out",
        help="where benchmark.json goes (default <paths.out_dir>/benchmarks/<tag>-<UTC>.json; "
        "a finished release is never modified)",
    )
    p.add_argument("--quiet", action="store_true", help="only warnings and the final tables")
    return p


def _overrides(args: argparse.Namespace) -> list[str]:
    extra = list(args.overrides)
    if args.only:
        extra.append(f"benchmark.models=[{_ONLY[args.only]}]")
    if args.batch:
        try:
            sizes = [int(v) for v in args.batch.split(",") if v.strip()]
        except ValueError:
            raise UserInputError(f"--batch {args.batch!r}: expected integers such as 1,8") from None
        extra.append(f"benchmark.batch_sizes={sizes}")
    if args.configs:
        names = [v.strip() for v in args.configs.split(",") if v.strip()]
        extra.append(f"benchmark.configurations=[{','.join(names)}]")
    return extra


def main(argv: list[str] | None = None) -> int:
    from pillsnap.bench import run_benchmark, tables
    from pillsnap.bench.artifacts import tag_of
    from pillsnap.versioning import utc_timestamp

    args = _parser().parse_args(argv)
    if args.quiet:
        logging.getLogger().setLevel(logging.WARNING)
    cfg = load_config(args.config, _overrides(args))
    release = Path(args.release) if args.release else cfg.paths.out_dir / "latest"
    if not release.is_dir():
        raise UserInputError(
            f"no release at {release}: run `pillsnap release --config ...` first or pass --release DIR"
        )
    out = Path(args.out) if args.out else None
    if out is None:
        out = cfg.paths.out_dir / "benchmarks" / f"{tag_of(release)}-{utc_timestamp()}.json"
    if out.exists():
        raise UserInputError(f"{out} exists; pass another --out (a record is never overwritten)")
    result = run_benchmark(cfg, release, out, progress=not args.quiet)
    record = result.record
    print(tables.text_table(tables.environment_table(record)))
    print()
    print(
        tables.text_table(
            tables.results_table(record),
            [
                "model",
                "configuration",
                "batch",
                "ms/batch (median [95% CI])",
                "p99",
                "img/s",
                "noisy",
                "accuracy",
                "agreement",
                "reason",
            ],
        )
    )
    for versus in ("torch-cpu-fp32", "openvino-cpu"):
        frame = tables.ratio_table(record, versus)
        if len(frame):
            print(f"\nspeed-up over {versus} (per-round ratios)")
            print(tables.text_table(frame))
    if record["pipeline"]:
        print("\npipeline per photo (ms)")
        print(tables.text_table(tables.pipeline_table(record)))
    print()
    print(tables.goal_text(record))
    for note in record["budget"]["notes"]:
        print(f"note: {note}")
    print(f"\nrecord: {result.path}")
    if result.failed:
        print(f"[FAILED] {result.failure_reason}", file=sys.stderr)
        return 1
    return 0
