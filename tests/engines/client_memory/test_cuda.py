"""Triton's CUDA shared memory.

Without a GPU (CI): the registry's refusals and the engine-side pieces that are plain
torch or plain logic (typed device views, slicing device outputs, an instance keeping
outputs as tensors), and what a server answers over gRPC.

With a GPU (bench/gpu_cuda_shm.sh on a lent machine): tritonclient's own CUDA shared
memory utilities against real ``inferd serve`` processes, one process and two front
processes, for a CPU model (inputs copied to the host once) and a pytorch model on the
GPU (inputs read in place, outputs written from the device), plus hostile registrations.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import functools
import os
import queue
import shutil
import textwrap
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import tritonclient.grpc as tritongrpc
import tritonclient.utils.shared_memory as system_shm
from google.protobuf import text_format
from tritonclient.utils import (
    InferenceServerException,
    deserialize_bytes_tensor,
    serialize_byte_tensor,
)

from inferd.engines import (
    Engine,
    EngineError,
    ErrorCode,
    InferRequest,
    InferResponse,
    InputTensor,
    OutputTensor,
    RequestedOutput,
)
from inferd.engines.backends.base import InstanceSpec
from inferd.engines.backends.pytorch import TorchBackend
from inferd.engines.client_memory.cuda import CudaSharedMemory, _Region, _RegionBytes
from inferd.engines.client_memory.region_table import RegionTable
from inferd.engines.demo.repository import build_demo_repository
from inferd.engines.execution.packing import scatter
from inferd.engines.types import DeviceBytes, SharedMemoryRef
from inferd.engines.validation import TensorSpec, validate_request
from inferd.protos import model_config_pb2
from tests.support.server_process import ServerProcess, serve
from tests.support.torch_model_builders import WIDTH, mlp_config, write_add_sub, write_torchscript

TIMEOUT_S = 30.0

try:  # tritonclient's CUDA helpers need cuda-python, which only a GPU machine has
    import tritonclient.utils.cuda_shared_memory as cuda_shm
except (ImportError, RuntimeError):
    cuda_shm = None

NEEDS_GPU = pytest.mark.skipif(
    not torch.cuda.is_available() or cuda_shm is None,
    reason="needs a CUDA GPU and cuda-python (tritonclient's CUDA shared memory); CI has "
    "neither: bench/gpu_cuda_shm.sh runs these on a lent GPU machine",
)


def _error(call: Callable[[], object]) -> Any:
    with pytest.raises((EngineError, InferenceServerException)) as raised:
        call()
    return raised.value


# --- the registry, without a GPU ---------------------------------------------------------


def test_registering_is_refused_while_shared_memory_is_off() -> None:
    error = _error(lambda: CudaSharedMemory(enabled=False).register("r", b"\0" * 64, 0, 64))
    assert error.code is ErrorCode.UNAVAILABLE
    assert "CUDA shared memory is off on this server: start inferd with --allow-client-shm" in (
        error.message
    )


def test_status_and_unregister_know_no_regions() -> None:
    regions = CudaSharedMemory(enabled=True)
    assert regions.status("") == []
    error = _error(lambda: regions.status("gpu0"))
    assert error.code is ErrorCode.NOT_FOUND
    assert error.message == "Unable to find cuda shared memory region: 'gpu0'"
    regions.unregister("gpu0")  # an unknown name is not an error, as in Triton
    regions.unregister("")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "a shared memory region needs a name"),
        ("inferd_ring", "names starting with 'inferd_' are reserved for inferd"),
        ("x" * 1025, "shared memory region names are at most 1024 characters"),
    ],
)
def test_names_are_checked_before_anything_else(name: str, message: str) -> None:
    error = _error(lambda: CudaSharedMemory(enabled=True).register(name, b"\0" * 64, 0, 64))
    assert error.code is ErrorCode.INVALID_ARGUMENT
    assert message in error.message


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_registering_without_a_gpu_says_why() -> None:
    error = _error(lambda: CudaSharedMemory(enabled=True).register("r", b"\0" * 64, 0, 64))
    assert error.code is ErrorCode.INVALID_ARGUMENT
    assert error.message.startswith(
        "failed to register CUDA shared memory region: 'r', GPUs not supported on this "
        "server: torch sees no CUDA device here"
    )


def test_a_request_naming_an_unknown_region_is_not_found() -> None:
    regions = CudaSharedMemory(enabled=True)
    request = InferRequest(
        "m", None, [InputTensor("X", "FP32", (1,), SharedMemoryRef("nowhere", 0, 4))]
    )
    with regions.request() as memory:
        error = _error(lambda: memory.read_inputs(request, on_device=False))
    assert error.code is ErrorCode.NOT_FOUND
    assert error.message == "Unable to find shared memory region: 'nowhere'"
    output = RequestedOutput("Y", region=SharedMemoryRef("elsewhere", 0, 4))
    request = InferRequest("m", None, [], requested_outputs=(output,))
    with regions.request() as memory:
        error = _error(lambda: memory.read_inputs(request, on_device=False))
    assert error.message == "Unable to find shared memory region: 'elsewhere'"


# --- engine pieces that are plain torch ----------------------------------------------------


class _HostBytes(DeviceBytes):
    """Bytes that say they are on a device: what validation does with device bytes."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.nbytes = len(data)

    def typed(self, datatype: str, shape: tuple[int, ...]) -> object:
        return np.frombuffer(self._data, np.float32).reshape(shape)


def test_validation_checks_device_bytes_by_size_and_keeps_them_typed() -> None:
    specs = (TensorSpec("X", "FP32", (2,)),)
    outputs = (TensorSpec("Y", "FP32", (2,)),)
    good = InputTensor("X", "FP32", (1, 2), _HostBytes(np.ones(2, np.float32).tobytes()))
    validate_request(InferRequest("m", None, [good]), specs, outputs, max_batch_size=4)
    assert good.array is not None and good.array.tolist() == [[1.0, 1.0]]

    short = InputTensor("X", "FP32", (1, 2), _HostBytes(b"\0" * 4))
    error = _error(lambda: validate_request(InferRequest("m", None, [short]), specs, outputs, 4))
    assert "input byte size mismatch for input 'X' for model 'm'. Expected 8, got 4" in (
        error.message
    )
    unresolved = InputTensor("X", "FP32", (1, 2), SharedMemoryRef("r", 0, 8))
    error = _error(
        lambda: validate_request(InferRequest("m", None, [unresolved]), specs, outputs, 4)
    )
    assert error.code is ErrorCode.INTERNAL


def test_region_bytes_view_in_place_when_aligned_and_copy_when_not() -> None:
    memory = torch.arange(16, dtype=torch.uint8)
    aligned = _RegionBytes(memory[4:12]).typed("INT32", (1, 2))
    assert isinstance(aligned, torch.Tensor)
    assert aligned.data_ptr() == memory[4:].data_ptr()  # the client's memory itself
    assert aligned.flatten().tolist() == np.arange(4, 12, dtype=np.uint8).view(np.int32).tolist()
    shifted = _RegionBytes(memory[1:9]).typed("INT32", (2,))
    assert isinstance(shifted, torch.Tensor)
    assert shifted.tolist() == np.arange(1, 9, dtype=np.uint8).view(np.int32).tolist()


def test_scatter_slices_device_tensors_by_rows() -> None:
    batch: dict[str, Any] = {"Y": torch.arange(12).reshape(6, 2)}  # device tensors slice too
    parts: list[dict[str, Any]] = scatter(batch, [1, 3, 2])
    assert [part["Y"].tolist() for part in parts] == [
        [[0, 1]],
        [[2, 3], [4, 5], [6, 7]],
        [[8, 9], [10, 11]],
    ]
    assert parts[1]["Y"].data_ptr() == batch["Y"][1].data_ptr()  # views, not copies


def test_a_torch_instance_returns_device_outputs_as_fresh_tensors(tmp_path: Path) -> None:
    module = write_torchscript(tmp_path, "mlp")
    config = model_config_pb2.ModelConfig()
    text_format.Parse(mlp_config("mlp", "model.pt"), config)
    instance = TorchBackend().load(
        tmp_path / "mlp" / "1" / "model.pt", config, InstanceSpec(0, "CPU")
    )
    inputs = np.random.default_rng(0).standard_normal((3, WIDTH), dtype=np.float32)
    kept = instance.infer({"INPUT0": inputs}, ["OUTPUT0"], frozenset({"OUTPUT0"}))
    host = instance.infer({"INPUT0": inputs}, ["OUTPUT0"])
    assert isinstance(kept["OUTPUT0"], torch.Tensor)
    assert kept["OUTPUT0"].dtype == torch.float32
    assert isinstance(host["OUTPUT0"], np.ndarray)
    np.testing.assert_allclose(kept["OUTPUT0"].numpy(), host["OUTPUT0"], rtol=1e-6)
    with torch.inference_mode():
        expected = module(torch.from_numpy(inputs)).numpy()
    np.testing.assert_allclose(host["OUTPUT0"], expected, rtol=1e-5, atol=1e-6)


# --- over gRPC, without a GPU ---------------------------------------------------------------


@pytest.fixture(scope="module", params=["1", "2"], ids=lambda n: f"frontends-{n}")
def cpu_server(demo_repository: Path, request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    yield from serve(demo_repository, "--allow-client-shm", "--frontends", request.param)


def _simple_inputs() -> list[tritongrpc.InferInput]:
    inputs = [tritongrpc.InferInput(f"INPUT{i}", [1, 16], "INT32") for i in range(2)]
    for tensor in inputs:
        tensor.set_data_from_numpy(np.ones((1, 16), np.int32))
    return inputs


def _assert_still_serves(client: tritongrpc.InferenceServerClient) -> None:
    result = client.infer("simple", _simple_inputs(), client_timeout=TIMEOUT_S)
    assert result.as_numpy("OUTPUT0").tolist() == [[2] * 16]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_server_without_a_gpu_answers_every_cuda_rpc(cpu_server: ServerProcess) -> None:
    client = tritongrpc.InferenceServerClient(cpu_server.address)
    try:
        assert not client.get_cuda_shared_memory_status().regions
        client.unregister_cuda_shared_memory()
        handle = base64.b64encode(os.urandom(64))  # as tritonclient's get_raw_handle gives it
        refused = _error(lambda: client.register_cuda_shared_memory("gpu0", handle, 0, 64))
        assert refused.status() == "StatusCode.INVALID_ARGUMENT"
        assert "failed to register CUDA shared memory region: 'gpu0', GPUs not supported" in (
            refused.message()
        )
        outputs = [tritongrpc.InferRequestedOutput("OUTPUT0")]
        outputs[0].set_shared_memory("gpu0", 64)
        missing = _error(
            lambda: client.infer(
                "simple", _simple_inputs(), outputs=outputs, client_timeout=TIMEOUT_S
            )
        )
        assert missing.status() == "StatusCode.NOT_FOUND"
        assert "Unable to find shared memory region: 'gpu0'" in missing.message()
        _assert_still_serves(client)
    finally:
        client.close()


# --- with a GPU: tritonclient's CUDA shared memory against real servers --------------------

GPU_MODEL = "gpu_add_sub"
GPU_CONFIG = textwrap.dedent(
    f"""
    name: "{GPU_MODEL}"
    platform: "pytorch_libtorch"
    max_batch_size: 8
    input [
      {{ name: "left" data_type: TYPE_INT32 dims: [ 16 ] }},
      {{ name: "right" data_type: TYPE_INT32 dims: [ 16 ] }}
    ]
    output [
      {{ name: "SUM__0" data_type: TYPE_INT32 dims: [ 16 ] }},
      {{ name: "DIFF__1" data_type: TYPE_INT32 dims: [ 16 ] }}
    ]
    instance_group [ {{ kind: KIND_GPU count: 2 }} ]
    dynamic_batching {{ max_queue_delay_microseconds: 2000 }}
    """
)
ROW_BYTES = 16 * 4


class _AddSub(torch.nn.Module):
    def forward(self, left: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return left + right, left - right


@pytest.fixture(scope="module")
def gpu_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cuda-shm")
    demo = build_demo_repository(root / "demo")
    repository = root / "models"
    for name in ("simple", "simple_string"):
        shutil.copytree(demo / name, repository / name)
    version = repository / GPU_MODEL / "1"
    version.mkdir(parents=True)
    (repository / GPU_MODEL / "config.pbtxt").write_text(GPU_CONFIG)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(_AddSub().eval()).save(str(version / "model.pt"))
    return repository


@pytest.fixture(scope="module", params=["1", "2"], ids=lambda n: f"frontends-{n}")
def gpu_server(gpu_repository: Path, request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    if not torch.cuda.is_available() or cuda_shm is None:
        pytest.skip("needs a CUDA GPU and cuda-python")
    yield from serve(gpu_repository, "--allow-client-shm", "--frontends", request.param)


@pytest.fixture
def gpu_client(gpu_server: ServerProcess) -> Iterator[tritongrpc.InferenceServerClient]:
    client = tritongrpc.InferenceServerClient(gpu_server.address)
    yield client
    client.unregister_cuda_shared_memory()
    client.unregister_system_shared_memory()
    client.close()


@pytest.fixture
def cuda_regions(
    gpu_client: tritongrpc.InferenceServerClient,
) -> Iterator[Callable[..., Any]]:
    """Allocate GPU memory, register it under a fresh name: (handle, name)."""
    assert cuda_shm is not None
    made: list[Any] = []

    def make(byte_size: int, register: bool = True) -> tuple[Any, str]:
        name = f"cuda_{uuid.uuid4().hex[:12]}"
        handle = cuda_shm.create_shared_memory_region(name, byte_size, 0)
        made.append(handle)
        if register:
            raw = cuda_shm.get_raw_handle(handle)
            gpu_client.register_cuda_shared_memory(name, raw, 0, byte_size)
        return handle, name

    yield make
    gpu_client.unregister_cuda_shared_memory()  # the server unmaps before the memory goes
    for handle in made:
        cuda_shm.destroy_shared_memory_region(handle)


def _read(handle: Any, dtype: np.dtype, count: int, offset: int) -> np.ndarray:
    assert cuda_shm is not None
    whole = cuda_shm.get_contents_as_numpy(handle, np.uint8, [offset + count * dtype.itemsize])
    return whole[offset:].view(dtype)


def _add_sub(
    client: tritongrpc.InferenceServerClient,
    model: str,
    names: tuple[str, str],
    inputs_region: str,
    outputs_region: str,
    rows: int = 1,
    out_offset: int = 0,
) -> tritongrpc.InferResult:
    nbytes = rows * ROW_BYTES
    inputs = [tritongrpc.InferInput(name, [rows, 16], "INT32") for name in names]
    inputs[0].set_shared_memory(inputs_region, nbytes)
    inputs[1].set_shared_memory(inputs_region, nbytes, offset=nbytes)
    output_names = ("SUM__0", "DIFF__1") if model == GPU_MODEL else ("OUTPUT0", "OUTPUT1")
    outputs = [tritongrpc.InferRequestedOutput(name) for name in output_names]
    outputs[0].set_shared_memory(outputs_region, nbytes, offset=out_offset)
    outputs[1].set_shared_memory(outputs_region, nbytes, offset=out_offset + nbytes)
    return client.infer(model, inputs, outputs=outputs, client_timeout=TIMEOUT_S)


@NEEDS_GPU
def test_register_status_and_unregister(
    gpu_client: tritongrpc.InferenceServerClient, cuda_regions: Callable[..., Any]
) -> None:
    _, first = cuda_regions(256)
    _, second = cuda_regions(1024)
    status = gpu_client.get_cuda_shared_memory_status()
    assert {name: (r.device_id, r.byte_size) for name, r in status.regions.items()} == {
        first: (0, 256),
        second: (0, 1024),
    }
    gpu_client.unregister_cuda_shared_memory(first)
    assert list(gpu_client.get_cuda_shared_memory_status().regions) == [second]
    gpu_client.unregister_cuda_shared_memory()
    assert not gpu_client.get_cuda_shared_memory_status().regions


@NEEDS_GPU
@pytest.mark.parametrize(
    ("model", "names"),
    [("simple", ("INPUT0", "INPUT1")), (GPU_MODEL, ("left", "right"))],
    ids=["cpu-model", "gpu-model"],
)
def test_inputs_and_outputs_in_cuda_shared_memory(
    gpu_client: tritongrpc.InferenceServerClient,
    cuda_regions: Callable[..., Any],
    model: str,
    names: tuple[str, str],
) -> None:
    assert cuda_shm is not None
    left = np.arange(16, dtype=np.int32).reshape(1, 16)
    right = np.full((1, 16), 3, dtype=np.int32)
    in_handle, in_name = cuda_regions(2 * ROW_BYTES)
    cuda_shm.set_shared_memory_region(in_handle, [left, right])
    out_handle, out_name = cuda_regions(32 + 2 * ROW_BYTES)
    result = _add_sub(gpu_client, model, names, in_name, out_name, out_offset=32)
    response = result.get_response()
    assert [(o.datatype, list(o.shape)) for o in response.outputs] == [("INT32", [1, 16])] * 2
    assert list(response.raw_output_contents) == [b"", b""]  # the values are in the region
    assert _read(out_handle, np.dtype(np.int32), 16, 32).tolist() == (left + right)[0].tolist()
    difference = _read(out_handle, np.dtype(np.int32), 16, 32 + ROW_BYTES)
    assert difference.tolist() == (left - right)[0].tolist()


@NEEDS_GPU
def test_one_allocation_under_two_names(
    gpu_client: tritongrpc.InferenceServerClient, cuda_regions: Callable[..., Any]
) -> None:
    """Inputs under one name, outputs under another, one allocation: mapped once."""
    assert cuda_shm is not None
    handle, inputs_name = cuda_regions(4 * ROW_BYTES)
    left = np.arange(16, dtype=np.int32).reshape(1, 16)
    cuda_shm.set_shared_memory_region(handle, [left, left])
    outputs_name = f"{inputs_name}_out"
    raw = cuda_shm.get_raw_handle(handle)
    gpu_client.register_cuda_shared_memory(outputs_name, raw, 0, 4 * ROW_BYTES)
    _add_sub(
        gpu_client, GPU_MODEL, ("left", "right"), inputs_name, outputs_name,
        out_offset=2 * ROW_BYTES,
    )  # fmt: skip
    total = _read(handle, np.dtype(np.int32), 16, 2 * ROW_BYTES)
    assert total.tolist() == (2 * left)[0].tolist()
    gpu_client.unregister_cuda_shared_memory(inputs_name)  # the other name still maps it
    again = _add_sub(
        gpu_client, "simple", ("INPUT0", "INPUT1"), outputs_name, outputs_name,
        out_offset=2 * ROW_BYTES,
    )  # fmt: skip
    assert again.get_response().outputs[0].name == "OUTPUT0"


@NEEDS_GPU
def test_concurrent_requests_batch_on_the_device(
    gpu_client: tritongrpc.InferenceServerClient, cuda_regions: Callable[..., Any]
) -> None:
    """Requests in CUDA shared memory, and plain ones beside them, batched together."""
    assert cuda_shm is not None
    count = 24
    lefts = [np.full((2, 16), index, np.int32) for index in range(count)]
    right = np.arange(32, dtype=np.int32).reshape(2, 16)
    regions = []
    for left in lefts:
        in_handle, in_name = cuda_regions(4 * ROW_BYTES)
        cuda_shm.set_shared_memory_region(in_handle, [left, right])
        out_handle, out_name = cuda_regions(4 * ROW_BYTES)
        regions.append((in_name, out_handle, out_name))

    def in_shared_memory(index: int) -> None:
        in_name, _, out_name = regions[index]
        _add_sub(gpu_client, GPU_MODEL, ("left", "right"), in_name, out_name, rows=2)

    def plain(index: int) -> np.ndarray:
        inputs = [tritongrpc.InferInput(name, [2, 16], "INT32") for name in ("left", "right")]
        inputs[0].set_data_from_numpy(lefts[index])
        inputs[1].set_data_from_numpy(right)
        result = gpu_client.infer(GPU_MODEL, inputs, client_timeout=TIMEOUT_S)
        return result.as_numpy("SUM__0")

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        shared = [pool.submit(in_shared_memory, index) for index in range(count)]
        inline = [pool.submit(plain, index) for index in range(count)]
        for done in shared:
            done.result()
        for index, answered in enumerate(inline):
            assert answered.result().tolist() == (lefts[index] + right).tolist()
    for index, (_, out_handle, _) in enumerate(regions):
        total = _read(out_handle, np.dtype(np.int32), 32, 0).reshape(2, 16)
        assert total.tolist() == (lefts[index] + right).tolist(), index


@NEEDS_GPU
def test_bytes_tensors_through_cuda_shared_memory(
    gpu_client: tritongrpc.InferenceServerClient, cuda_regions: Callable[..., Any]
) -> None:
    assert cuda_shm is not None
    first = np.array([[str(i).encode() for i in range(16)]], dtype=np.object_)
    second = np.array([[b"1"] * 16], dtype=np.object_)
    serialized = [serialize_byte_tensor(first), serialize_byte_tensor(second)]
    sizes = [len(part.item()) for part in serialized]
    in_handle, in_name = cuda_regions(sum(sizes))
    cuda_shm.set_shared_memory_region(in_handle, serialized)
    out_handle, out_name = cuda_regions(1024)
    inputs = [tritongrpc.InferInput(f"INPUT{i}", [1, 16], "BYTES") for i in range(2)]
    inputs[0].set_shared_memory(in_name, sizes[0])
    inputs[1].set_shared_memory(in_name, sizes[1], offset=sizes[0])
    outputs = [tritongrpc.InferRequestedOutput("OUTPUT0")]
    outputs[0].set_shared_memory(out_name, 1024)
    gpu_client.infer("simple_string", inputs, outputs=outputs, client_timeout=TIMEOUT_S)
    raw = cuda_shm.get_contents_as_numpy(out_handle, np.uint8, [1024]).tobytes()
    sums = deserialize_bytes_tensor(raw)[:16]
    assert [int(value) for value in sums] == [i + 1 for i in range(16)]


@NEEDS_GPU
def test_stream_infer_reads_and_writes_cuda_shared_memory(
    gpu_client: tritongrpc.InferenceServerClient, cuda_regions: Callable[..., Any]
) -> None:
    assert cuda_shm is not None
    left = np.arange(16, dtype=np.int32).reshape(1, 16)
    in_handle, in_name = cuda_regions(2 * ROW_BYTES)
    cuda_shm.set_shared_memory_region(in_handle, [left, left])
    out_handle, out_name = cuda_regions(2 * ROW_BYTES)
    answers: queue.Queue[Any] = queue.Queue()
    gpu_client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        inputs = [tritongrpc.InferInput(name, [1, 16], "INT32") for name in ("left", "right")]
        inputs[0].set_shared_memory(in_name, ROW_BYTES)
        inputs[1].set_shared_memory(in_name, ROW_BYTES, offset=ROW_BYTES)
        outputs = [tritongrpc.InferRequestedOutput("SUM__0")]
        outputs[0].set_shared_memory(out_name, ROW_BYTES)
        gpu_client.async_stream_infer(GPU_MODEL, inputs, outputs=outputs)
        result, error = answers.get(timeout=TIMEOUT_S)
    finally:
        gpu_client.stop_stream()
    assert error is None and result is not None
    assert _read(out_handle, np.dtype(np.int32), 16, 0).tolist() == (2 * left)[0].tolist()


@NEEDS_GPU
def test_hostile_registrations_are_refused_and_the_server_serves(
    gpu_client: tritongrpc.InferenceServerClient, cuda_regions: Callable[..., Any]
) -> None:
    assert cuda_shm is not None
    handle, _ = cuda_regions(256, register=False)
    raw = cuda_shm.get_raw_handle(handle)
    cases = [
        (("big", raw, 0, 1 << 40), "larger than the"),
        (("short", base64.b64encode(b"x" * 10), 0, 64), "raw_handle holds 10 bytes"),
        (("garbage", base64.b64encode(os.urandom(64)), 0, 64), "failed to open CUDA IPC"),
        (("device", raw, 99, 64), "device_id 99 is not a GPU of this server"),
        (("negative", raw, -1, 64), "device_id -1 is not a GPU of this server"),
        (("inferd_x", raw, 0, 64), "reserved for inferd"),
    ]
    for arguments, message in cases:
        error = _error(functools.partial(gpu_client.register_cuda_shared_memory, *arguments))
        assert error.status() == "StatusCode.INVALID_ARGUMENT", arguments[0]
        assert message in error.message(), (arguments[0], error.message())
    _assert_still_serves(gpu_client)

    gpu_client.register_cuda_shared_memory("mine", raw, 0, 256)
    twice = _error(lambda: gpu_client.register_cuda_shared_memory("mine", raw, 0, 256))
    assert twice.status() == "StatusCode.ALREADY_EXISTS"
    key = f"/cudatest_{uuid.uuid4().hex}"
    system = system_shm.create_shared_memory_region("sys", key, 64)
    try:
        clash = _error(lambda: gpu_client.register_system_shared_memory("mine", key, 64))
        assert clash.status() == "StatusCode.ALREADY_EXISTS"
        assert "shared memory region 'mine' already in manager" in clash.message()
    finally:
        system_shm.destroy_shared_memory_region(system)
    _assert_still_serves(gpu_client)


@NEEDS_GPU
def test_slices_outside_a_region_are_refused(
    gpu_client: tritongrpc.InferenceServerClient, cuda_regions: Callable[..., Any]
) -> None:
    _, name = cuda_regions(ROW_BYTES)
    cases = [
        (ROW_BYTES, 4, "Invalid offset for shared memory region"),
        (2**63 - 1, 4, "Invalid offset for shared memory region"),
        (8, ROW_BYTES, "Invalid offset + byte size for shared memory region"),
    ]
    for offset, size, message in cases:
        inputs = _simple_inputs()
        inputs[0].set_shared_memory(name, size, offset=offset)
        error = _error(functools.partial(gpu_client.infer, "simple", inputs))
        assert error.status() == "StatusCode.INVALID_ARGUMENT"
        assert message in error.message()
    outputs = [tritongrpc.InferRequestedOutput("OUTPUT0")]
    outputs[0].set_shared_memory(name, 8)
    small = _error(lambda: gpu_client.infer("simple", _simple_inputs(), outputs=outputs))
    assert small.status() == "StatusCode.INVALID_ARGUMENT"
    assert "should be at least 64 bytes to hold the results" in small.message()
    gpu_client.unregister_cuda_shared_memory(name)
    inputs = _simple_inputs()
    inputs[0].set_shared_memory(name, ROW_BYTES)
    gone = _error(lambda: gpu_client.infer("simple", inputs))
    assert gone.status() == "StatusCode.NOT_FOUND"
    _assert_still_serves(gpu_client)


# --- the engine's CUDA path, with CPU tensors standing in for the mapped GPU memory -------
#
# Everything but the driver calls runs for real: leases, host copies and views, typed
# device views, the instance keeping outputs as tensors, writing outputs into regions.


def _cpu_backed(max_request_bytes: int = 2**31 - 1) -> CudaSharedMemory:
    """Regions whose memory is CPU tensors, so nothing is mapped or unmapped."""
    regions = CudaSharedMemory(enabled=True, max_request_bytes=max_request_bytes)
    regions._torch = torch
    regions.table = RegionTable("cuda", lambda region: None, max_regions=8)
    return regions


def _region_on_cpu(regions: CudaSharedMemory, name: str, size: int) -> torch.Tensor:
    memory = torch.zeros(size, dtype=torch.uint8)
    regions.table.add(_Region(name, 0, size, b"\0" * 64, memory))
    return memory


def test_inputs_become_host_copies_or_views_of_the_region() -> None:
    regions = _cpu_backed()
    memory = _region_on_cpu(regions, "in", 64)
    memory[:16] = torch.arange(16, dtype=torch.uint8)
    strings = serialize_byte_tensor(np.array([b"ab", b"c"], dtype=np.object_)).item()
    memory[16 : 16 + len(strings)] = torch.frombuffer(bytearray(strings), dtype=torch.uint8)
    request = InferRequest(
        "m",
        None,
        [
            InputTensor("A", "INT32", (2,), SharedMemoryRef("in", 4, 8)),
            InputTensor("S", "BYTES", (2,), SharedMemoryRef("in", 16, len(strings))),
        ],
    )
    with regions.request() as held:
        assert held.copies_inputs(request, on_device=True)  # BYTES always go to the host
        held.read_inputs(request, on_device=True)
        device_view, strings_copy = request.inputs[0].data, request.inputs[1].data
        assert isinstance(device_view, DeviceBytes) and device_view.nbytes == 8
        typed = device_view.typed("INT32", (2,))
        assert isinstance(typed, torch.Tensor) and typed.data_ptr() == memory[4:].data_ptr()
        assert isinstance(strings_copy, memoryview) and bytes(strings_copy) == strings
        memory[4] = 99  # a view sees the client's later writes; a copy does not
        assert typed[0].item() == np.frombuffer(bytes(memory[4:8].tolist()), np.int32)[0]

    request = InferRequest(
        "m", None, [InputTensor("A", "INT32", (2,), SharedMemoryRef("in", 4, 8))]
    )
    with regions.request() as held:
        assert held.copies_inputs(request, on_device=False)
        held.read_inputs(request, on_device=False)
        copy = request.inputs[0].data
        assert isinstance(copy, memoryview) and bytes(copy) == bytes(memory[4:12].tolist())


def test_one_request_copies_at_most_max_request_bytes_to_the_host() -> None:
    regions = _cpu_backed(max_request_bytes=12)
    _region_on_cpu(regions, "in", 64)

    def request() -> InferRequest:
        return InferRequest(
            "m",
            None,
            [
                InputTensor("A", "INT32", (2,), SharedMemoryRef("in", 0, 8)),
                InputTensor("B", "INT32", (2,), SharedMemoryRef("in", 8, 8)),
            ],
        )

    with regions.request() as held:
        error = _error(lambda: held.read_inputs(request(), on_device=False))
    assert error.code is ErrorCode.INVALID_ARGUMENT
    assert "input tensor 'B' for model 'm': the request's inputs in shared memory add up to " in (
        error.message
    )
    assert "16 bytes, more than the 12 bytes this server copies for one request" in error.message
    with regions.request() as held:  # views of device memory take no host memory
        held.read_inputs(request(), on_device=True)


def test_outputs_are_written_into_their_regions_from_host_or_device() -> None:
    regions = _cpu_backed()
    memory = _region_on_cpu(regions, "out", 64)
    outputs = (
        RequestedOutput("HOST", region=SharedMemoryRef("out", 0, 8)),
        RequestedOutput("KEPT", region=SharedMemoryRef("out", 8, 8)),
        RequestedOutput("TEXT", region=SharedMemoryRef("out", 16, 32)),
        RequestedOutput("INLINE"),
    )
    request = InferRequest("m", None, [], requested_outputs=outputs)
    host = np.array([1, 2], np.int32)
    kept = torch.tensor([3.5, -1.0], dtype=torch.float32)  # as an instance keeps it
    text = np.array([b"xyz"], dtype=np.object_)
    inline = np.array([7], np.int64)
    response = InferResponse(
        "m",
        1,
        "",
        [
            OutputTensor("HOST", "INT32", host),
            OutputTensor("KEPT", "FP32", kept),  # type: ignore[arg-type]
            OutputTensor("TEXT", "BYTES", text),
            OutputTensor("INLINE", "INT64", inline),
        ],
    )
    with regions.request() as held:
        held.read_inputs(request, on_device=True)
        held.write_outputs(response)
    raw = bytes(memory.tolist())
    assert raw[:8] == host.tobytes()
    assert raw[8:16] == kept.numpy().tobytes()
    assert raw[16:23] == serialize_byte_tensor(text).item() == b"\x03\x00\x00\x00xyz"
    written = {output.name: output for output in response.outputs}
    assert [written[name].in_shared_memory for name in ("HOST", "KEPT", "TEXT", "INLINE")] == [
        True,
        True,
        True,
        False,
    ]
    assert written["KEPT"].data.shape == (2,) and written["KEPT"].data.dtype == np.float32
    assert written["INLINE"].data is inline


def test_an_output_larger_than_its_slice_is_refused() -> None:
    regions = _cpu_backed()
    _region_on_cpu(regions, "out", 64)
    output = RequestedOutput("Y", region=SharedMemoryRef("out", 0, 4))
    request = InferRequest("m", None, [], requested_outputs=(output,))
    response = InferResponse("m", 1, "", [OutputTensor("Y", "INT32", np.zeros(2, np.int32))])
    with regions.request() as held:
        held.read_inputs(request, on_device=False)
        error = _error(lambda: held.write_outputs(response))
    assert error.code is ErrorCode.INVALID_ARGUMENT
    assert error.message == (
        "shared memory size specified with the request for output 'Y' (4 bytes) should be "
        "at least 8 bytes to hold the results (model 'm')"
    )


def test_the_engine_serves_a_request_whose_tensors_are_in_cuda_regions(
    demo_repository: Path,
) -> None:
    """`simple` (ONNX Runtime): inputs copied to the host, outputs written back up."""
    regions = _cpu_backed()
    inputs_memory = _region_on_cpu(regions, "in", 128)
    outputs_memory = _region_on_cpu(regions, "out", 160)
    left, right = np.arange(16, dtype=np.int32), np.full(16, 5, np.int32)
    inputs_memory[:] = torch.from_numpy(np.concatenate([left, right]).view(np.uint8).copy())
    engine = Engine(demo_repository, cuda_shared_memory=regions)
    engine.load("simple", demo_repository / "simple")
    request = InferRequest(
        "simple",
        None,
        [
            InputTensor("INPUT0", "INT32", (1, 16), SharedMemoryRef("in", 0, 64)),
            InputTensor("INPUT1", "INT32", (1, 16), SharedMemoryRef("in", 64, 64)),
        ],
        requested_outputs=(
            RequestedOutput("OUTPUT0", region=SharedMemoryRef("out", 32, 64)),
            RequestedOutput("OUTPUT1", region=SharedMemoryRef("out", 96, 64)),
        ),
    )
    try:
        response = asyncio.run(engine.infer(request))
    finally:
        engine.close()
    assert [(o.name, o.in_shared_memory, o.data.shape) for o in response.outputs] == [
        ("OUTPUT0", True, (1, 16)),
        ("OUTPUT1", True, (1, 16)),
    ]
    written = np.frombuffer(bytes(outputs_memory.tolist()), np.int32)
    assert written[8:24].tolist() == (left + right).tolist()
    assert written[24:40].tolist() == (left - right).tolist()


def test_the_device_path_reads_inputs_in_place_and_keeps_outputs_as_tensors(
    tmp_path: Path,
) -> None:
    """What a pytorch model on a GPU does, on CPU tensors: the model is told its
    instances take device tensors (on a GPU they say so themselves)."""
    write_add_sub(tmp_path, "add_sub")
    regions = _cpu_backed()
    inputs_memory = _region_on_cpu(regions, "in", 24)
    outputs_memory = _region_on_cpu(regions, "out", 24)
    left, right = np.array([[1, 2, 3]], np.int32), np.array([[10, 20, 30]], np.int32)
    inputs_memory[:] = torch.from_numpy(np.concatenate([left, right], axis=None).view(np.uint8))
    engine = Engine(tmp_path, cuda_shared_memory=regions)
    engine.load("add_sub", tmp_path / "add_sub")
    model = engine.model("add_sub", None)
    model.takes_device_tensors = True
    request = InferRequest(
        "add_sub",
        None,
        [
            InputTensor("left", "INT32", (1, 3), SharedMemoryRef("in", 0, 12)),
            InputTensor("right", "INT32", (1, 3), SharedMemoryRef("in", 12, 12)),
        ],
        requested_outputs=(
            RequestedOutput("SUM__0", region=SharedMemoryRef("out", 0, 12)),
            RequestedOutput("DIFF__1"),
        ),
    )
    try:
        response = asyncio.run(engine.infer(request))
    finally:
        engine.close()
    assert isinstance(request.inputs[0].data, DeviceBytes)  # read in place, not copied
    by_name = {output.name: output for output in response.outputs}
    assert by_name["SUM__0"].in_shared_memory and by_name["SUM__0"].data.shape == (1, 3)
    written = np.frombuffer(bytes(outputs_memory.tolist()), np.int32)
    assert written[:3].tolist() == (left + right)[0].tolist()
    # Not in a region: an ndarray in the response, as always.
    assert isinstance(by_name["DIFF__1"].data, np.ndarray)
    assert by_name["DIFF__1"].data.tolist() == (left - right).tolist()
