#!/usr/bin/env bash
# The pytorch backend's GPU check, in one call on a lent GPU machine (docs/benchmarks.md):
# install inferd from wheels carried in .whl/, run the GPU tests, then bench/gpu_torch.py.
# Results land in $OUT (the device tool's folder; /tmp/gpu-check elsewhere).
# Build the carried wheels first (bench/device_setup.sh says how).
#
#   there: bash bench/gpu_check.sh [gpu_torch.py options]
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
source "$(dirname "$0")/device_setup.sh"
timeout 150 python3 -m pytest tests/engines/backends/test_pytorch.py -q -p no:cacheprovider 2>&1 \
    | tee "$OUT/pytest.txt" | tail -n 15
timeout 420 python3 -m inferd.bench.gpu_torch --out "$OUT" "$@" 2>&1 \
    | tee "$OUT/bench.log" | tail -n 45
