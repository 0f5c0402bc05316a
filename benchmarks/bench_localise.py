"""What does the per-layer localisation (``compare.localise``) add to a passing comparison?

Not a test; run by hand on an idle machine:

    python benchmarks/bench_localise.py [--rounds 3] [--mode smoke|coverage]

Exports the demo experiment once, then runs ``run_equivalence`` in-process with
``compare.localise=on_failure`` (a passing release: localisation skipped) and
``always`` (both models localised on their probe samples), interleaved, the order
alternating per round. Prints per round the wall time ratio always / on_failure and
the seconds the localisation itself took (``divergence.<model>.elapsed_s``); the
machine drifts between rounds, so the per-round ratio is the figure to quote.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import pillsnap  # noqa: F401 - offline Ultralytics before anything imports it

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "synthetic" / "config.yaml"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mode", default="smoke", choices=["smoke", "coverage"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from pillsnap.config import apply_overrides, load_config
    from pillsnap.equivalence.run import run_equivalence
    from pillsnap.models.export import export_models

    with tempfile.TemporaryDirectory(prefix="bench-localise-") as tmp:
        cfg = load_config(DEMO, {"paths.out_dir": tmp, "compare.mode": args.mode})
        exports = export_models(cfg, Path(tmp) / "release", tag="20250101-000000-bench00")
        ratios, shares = [], []
        for rnd in range(args.rounds):
            order = ("on_failure", "always") if rnd % 2 == 0 else ("always", "on_failure")
            wall, spent = {}, {}
            for mode in order:
                c = apply_overrides(cfg, {"compare.localise": mode})
                out = Path(tmp) / f"out-{rnd}-{mode}"
                start = time.perf_counter()
                result = run_equivalence(c, exports, out_dir=out, progress=False)
                wall[mode] = time.perf_counter() - start
                sections = result.report.get("divergence") or {}
                spent[mode] = {m: d["elapsed_s"] for m, d in sections.items()}
                if result.failed:
                    print(f"round {rnd} {mode}: comparison FAILED ({result.failure_reason})")
            ratio = wall["always"] / wall["on_failure"]
            local = sum(spent["always"].values())
            ratios.append(ratio)
            shares.append(local / wall["always"])
            print(
                f"round {rnd}: wall on_failure {wall['on_failure']:.1f} s, always {wall['always']:.1f} s "
                f"(ratio {ratio:.3f}); localisation {local:.2f} s = {local / wall['always']:.1%} of the run "
                + ", ".join(f"{m} {s:.2f} s" for m, s in spent["always"].items())
            )
        print(
            f"median of {args.rounds} rounds: wall ratio always/on_failure {statistics.median(ratios):.3f}, "
            f"localisation share of the run {statistics.median(shares):.1%}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
