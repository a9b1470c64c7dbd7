#!/usr/bin/env bash
# The pytorch backend's GPU check, in one call on a lent GPU machine (docs/benchmarks.md):
# install inferd from wheels carried in .whl/, run the GPU tests, then bench/gpu_torch.py.
# Results land in $OUT (the device tool's folder; /tmp/gpu-check elsewhere).
#
#   here:  pip wheel --no-deps -w .whl . && pip download --no-deps -d .whl \
#            grpcio-health-checking==1.76.0 grpcio-reflection==1.76.0
#   there: bash bench/gpu_check.sh [gpu_torch.py options]
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$OUT/env.txt" 2>&1
lscpu | grep -E "^Model name|^CPU\(s\)" >>"$OUT/env.txt"
timeout 150 python3 -m pytest tests/test_torch_backend.py -q -p no:cacheprovider 2>&1 \
    | tee "$OUT/pytest.txt" | tail -n 15
timeout 420 python3 -m inferd.bench.gpu_torch --out "$OUT" "$@" 2>&1 \
    | tee "$OUT/bench.log" | tail -n 45
