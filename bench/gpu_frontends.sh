#!/usr/bin/env bash
# Several gRPC front processes on a GPU, in one call on a lent 16-core GPU machine: install
# inferd from wheels carried in .whl/ (as bench/gpu_check.sh), then
# bench/gpu_frontends.py (BERT-base, inferd --frontends 1/2/4/8 vs the in-process engine,
# echo servicers at 1/2/4/8 processes). About 5 minutes; the bench is cut off at 7.
# Results land in $OUT (the device tool's folder; /tmp/gpu-frontends elsewhere).
#
# Build the carried wheels first (bench/device_setup.sh says how).
#
#   there: bash bench/gpu_frontends.sh [gpu_frontends.py options]
set -uo pipefail
OUT=${OUT:-/tmp/gpu-frontends}
source "$(dirname "$0")/device_setup.sh"
python3 -m inferd.server serve --help | grep -A2 -- --frontends >>"$OUT/env.txt"
timeout 420 python3 -m inferd.bench.gpu_frontends --out "$OUT" "$@" 2>&1 \
    | tee "$OUT/bench.log" | tail -n 40
