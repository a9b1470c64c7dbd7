#!/usr/bin/env bash
# Several gRPC front processes on a GPU, in one call on a lent 16-core GPU machine: install
# inferd from wheels carried in .whl/ (as bench/gpu_check.sh), then
# bench/gpu_frontends.py (BERT-base, inferd --frontends 1/2/4/8 vs the in-process engine,
# echo servicers at 1/2/4/8 processes). About 5 minutes; the bench is cut off at 7.
# Results land in $OUT (the device tool's folder; /tmp/gpu-frontends elsewhere).
#
#   here:  pip wheel --no-deps -w .whl . && pip download --no-deps -d .whl \
#            grpcio-health-checking==1.76.0 grpcio-reflection==1.76.0 && \
#          pip download --no-deps --only-binary=:all: --python-version 3.12 \
#            --platform manylinux2014_x86_64 -d .whl msgspec   # the device has Python 3.12
#   there: bash bench/gpu_frontends.sh [gpu_frontends.py options]
set -uo pipefail
OUT=${OUT:-/tmp/gpu-frontends}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$OUT/env.txt" 2>&1
lscpu | grep -E "^Model name|^CPU\(s\)" >>"$OUT/env.txt"
python3 -m inferd.server serve --help | grep -A2 -- --frontends >>"$OUT/env.txt"
timeout 420 python3 -m inferd.bench.gpu_frontends --out "$OUT" "$@" 2>&1 \
    | tee "$OUT/bench.log" | tail -n 40
