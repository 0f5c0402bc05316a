#!/usr/bin/env bash
# One-command ONNX release (spec E-6): export both models, prove Torch/ONNX parity,
# write runs/<tag>/ and move `latest` -- all through `pillsnap release`.
#
#   scripts/export_onnx.sh                      # CONFIG=config.yaml, OPSET=17
#   OPSET=18 CONFIG=examples/synthetic/config.yaml scripts/export_onnx.sh --set compare.mode=smoke
#
# Environment: CONFIG (default $PILLSNAP_CONFIG or config.yaml), OPSET (default 17),
# PYTHON (default .venv/bin/python of this checkout, else python3).
# Extra arguments are passed to `pillsnap release` (e.g. --tag, --set KEY=VALUE, --stages).
# Exit: 0 release promoted; 1 a stage or gate failed (record kept as runs/<tag>.failed);
#       2 bad input (missing config, a checkpoint that does not load, class map, data, output folder).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONFIG="${CONFIG:-${PILLSNAP_CONFIG:-config.yaml}}"
OPSET="${OPSET:-17}"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$here/.venv/bin/python" ]]; then PYTHON="$here/.venv/bin/python"; else PYTHON=python3; fi
fi

if [[ ! -f "$CONFIG" ]]; then
  echo "[ERROR] config not found: $CONFIG (set CONFIG=path/to/config.yaml)" >&2
  exit 2
fi
if ! [[ "$OPSET" =~ ^[0-9]+$ ]]; then
  echo "[ERROR] OPSET must be an integer, got '$OPSET' (default 17; try 18 for unsupported operators)" >&2
  exit 2
fi

# `pillsnap release` runs the preflight before anything is written: both checkpoints load
# weights-only into the configured models, the class map fits, the val data is readable,
# the output folder can be written (exit 2). Paths come from the config, never hard-coded.
status=0
"$PYTHON" -m pillsnap.cli release --config "$CONFIG" --opset "$OPSET" "$@" || status=$?
if [[ "$status" -ne 0 ]]; then
  if [[ "$status" -eq 2 ]]; then  # bad input, found by the preflight before any work
    echo "[ERROR] the preflight refused the release (exit 2); nothing was written. Fix the config ($CONFIG) or the files named above." >&2
    exit 2
  fi
  echo "[ERROR] release failed (exit $status); see the messages above" >&2
  exit 1
fi
