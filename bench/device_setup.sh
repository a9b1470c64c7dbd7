# Sourced by the one-call device scripts (bench/gpu_check.sh, gpu_frontends.sh, gpu_cuda_shm.sh):
# installs inferd and the wheels carried in .whl/ into /tmp/site (the device has torch,
# grpcio, protobuf and uvloop; Python 3.12), and records the machine in $OUT/env.txt.
# Build the wheels here, before the call:
#
#   pip wheel --no-deps -w .whl . && \
#   pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --platform manylinux2014_x86_64 -d .whl msgspec && \
#   pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --platform manylinux_2_28_x86_64 -d .whl tritonclient==2.73.0 python-rapidjson
# (tritonclient: bench/gpu_cuda_shm.sh's tests and bench only.)
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$OUT/env.txt" 2>&1
lscpu | grep -E "^Model name|^CPU\(s\)" >>"$OUT/env.txt"
