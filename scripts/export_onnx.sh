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
#       2 bad input (missing config / checkpoint).
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

# Pre-check: both checkpoints exist (paths come from the config, never hard-coded).
mapfile -t checkpoints < <("$PYTHON" -m pillsnap.release checkpoints --config "$CONFIG" "$@")
if [[ "${#checkpoints[@]}" -ne 2 ]]; then
  echo "[ERROR] could not read checkpoint paths from $CONFIG" >&2
  exit 2
fi
tasks=(detection classification)
for i in 0 1; do
  if [[ ! -f "${checkpoints[$i]}" ]]; then
    echo "[ERROR] ${tasks[$i]} checkpoint not found: ${checkpoints[$i]}" >&2
    echo "        fix paths.exp_dir / ${tasks[$i]}.checkpoint in $CONFIG" >&2
    exit 2
  fi
done

# The driver prints "[OK] Exported: ...", "Report: ..." on success and the failed
# record's path on failure; its exit code is ours.
status=0
"$PYTHON" -m pillsnap.cli release --config "$CONFIG" --opset "$OPSET" "$@" || status=$?
if [[ "$status" -ne 0 ]]; then
  echo "[ERROR] release failed (exit $status); see the messages above" >&2
  [[ "$status" -eq 2 ]] && exit 2  # bad input: nothing was written
  exit 1
fi
