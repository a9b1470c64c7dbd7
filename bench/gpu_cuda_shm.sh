#!/usr/bin/env bash
# CUDA shared memory on a lent GPU machine, in one call: install inferd and the carried
# wheels (bench/device_setup.sh says how to build them; add tritonclient==2.73.0 and
# python-rapidjson for cp312 beside msgspec), run tests/engines/client_memory/test_cuda.py with
# tritonclient's own CUDA helpers (cuda-python is on the machine), then
# bench/gpu_cuda_shm.py. About 3 minutes. Results land in $OUT (/tmp/gpu-cuda-shm elsewhere).
#
#   there: bash bench/gpu_cuda_shm.sh [gpu_cuda_shm.py options]
set -uo pipefail
OUT=${OUT:-/tmp/gpu-cuda-shm}
source "$(dirname "$0")/device_setup.sh"
python3 -m pip list 2>/dev/null | grep -i -E "^(cuda-bindings|cuda-python|protobuf|torch) " >>"$OUT/env.txt"
# tritonclient's generated code is protobuf 6; the machine's protobuf 7 warns about it once,
# which the suite's filterwarnings=error would turn into an import error.
timeout 240 python3 -m pytest tests/engines/client_memory/test_cuda.py -q -p no:cacheprovider \
    -W "ignore:Protobuf gencode version:UserWarning" -rs 2>&1 | tee "$OUT/pytest.txt" | tail -n 40
timeout 200 python3 -m inferd.bench.gpu_cuda_shm --out "$OUT" "$@" 2>&1 \
    | tee "$OUT/bench.log" | tail -n 20
