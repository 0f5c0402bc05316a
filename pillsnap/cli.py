"""The ``pillsnap`` console script: a thin dispatcher to each feature's ``main(argv)``.

Subcommand modules are imported lazily so ``pillsnap --help`` stays fast.
"""

from __future__ import annotations

import importlib
import logging
import sys

from pillsnap.exceptions import PillsnapError, UserInputError

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "synth": (
        "pillsnap.synth.cli",
        "generate the synthetic pill experiment / train its fixture models",
    ),
    "infer": ("pillsnap.infer", "run torch / onnx / tensorrt inference on images"),
    "compare": (
        "pillsnap.equivalence.cli",
        "Torch <-> ONNX equivalence check, writes export_report.json",
    ),
    "release": ("pillsnap.release.cli", "run the papermill release; verify / diff releases"),
    "quantize": ("pillsnap.quantize.cli", "static INT8 (QDQ) models, gated against float32"),
    "serve": ("pillsnap.serve.cli", "HTTP API over a verified release (FastAPI + uvicorn)"),
    "bench": (
        "pillsnap.bench.cli",
        "benchmark every engine / provider of a release, with accuracy",
    ),
}


def _usage() -> str:
    rows = "\n".join(f"  {name:<10} {help_}" for name, (_, help_) in SUBCOMMANDS.items())
    return f"usage: pillsnap <command> [options]\n\ncommands:\n{rows}\n\n`pillsnap <command> --help` for its options."


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"pillsnap: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    module = importlib.import_module(SUBCOMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except UserInputError as exc:
        print(f"pillsnap {name}: error: {exc}", file=sys.stderr)
        return 2
    except PillsnapError as exc:
        print(f"pillsnap {name}: failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
