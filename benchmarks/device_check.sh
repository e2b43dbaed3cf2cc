#!/usr/bin/env bash
# The device check on one GPU, in under 8 minutes: see benchmarks/device_check.py for the rows.
#   bash benchmarks/device_check.sh                      # random published-size weights
#   MVDREAM_OFFICIAL=/path/to/MVDream bash benchmarks/device_check.sh   # with the official UNet row
# Extra arguments go to device_check.py (e.g. --model PATH). Writes device_check.log and device_check.json
# to $OUT (the device machine's output folder) or the current folder.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
args=(--json "$out/device_check.json")
if [ -n "${MVDREAM_OFFICIAL:-}" ]; then args+=(--official "$MVDREAM_OFFICIAL"); fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 470 python benchmarks/device_check.py "${args[@]}" "$@" 2>&1 | tee "$out/device_check.log"
