"""Triton's system shared memory through tritonclient, against real ``inferd serve`` processes
started with ``--allow-client-shm``; plus the registry's own guarantees, tested directly.

Hostile cases each check the status, the message and that the server still serves.
"""

from __future__ import annotations

import contextlib
import os
import queue
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tritongrpc
import tritonclient.utils.shared_memory as shm
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

from inferd.engines import EngineError, ErrorCode
from inferd.engines.client_memory.system import SystemSharedMemoryRegistry
from tests.support.model_builders import DATATYPES
from tests.support.server_process import ServerProcess, serve
from tests.support.waiting import wait_until

TIMEOUT_S = 30.0
INT32_BYTES = 16 * 4  # one row of `simple`'s INT32 [16] tensors


# Every test over a server runs against one process and against two front processes,
# whose registrations live in the engine process and are mirrored by each front.
# One process, with each gRPC front (the threads front, its default, hands shared-memory
# requests to its event loop), and front processes (asyncio fronts).
SERVER_MODES = {
    "frontends-1": ("--frontends", "1"),
    "frontends-2": ("--frontends", "2"),
    "asyncio-front": ("--grpc-front", "asyncio"),
}


@pytest.fixture(scope="module", params=list(SERVER_MODES.values()), ids=list(SERVER_MODES))
def shm_server(demo_repository: Path, request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    yield from serve(demo_repository, "--allow-client-shm", *request.param)


@pytest.fixture(scope="module", params=list(SERVER_MODES.values()), ids=list(SERVER_MODES))
def shm_test_server(
    test_repository: Path, request: pytest.FixtureRequest
) -> Iterator[ServerProcess]:
    yield from serve(test_repository, "--allow-client-shm", *request.param)


@pytest.fixture
def client(shm_server: ServerProcess) -> Iterator[tritongrpc.InferenceServerClient]:
    client = tritongrpc.InferenceServerClient(shm_server.address)
    yield client
    client.unregister_system_shared_memory()
    client.close()


@pytest.fixture
def regions() -> Iterator[Callable[[int], tuple[Any, str]]]:
    """Create client-side shm objects (handle, key); destroyed after the test."""
    made: list[Any] = []

    def make(byte_size: int) -> tuple[Any, str]:
        key = f"/shmtest_{uuid.uuid4().hex}"
        handle = shm.create_shared_memory_region(key[1:], key, byte_size)
        made.append(handle)
        return handle, key

    yield make
    for handle in made:
        shm.destroy_shared_memory_region(handle)


def _simple_inputs(first: np.ndarray, second: np.ndarray) -> list[tritongrpc.InferInput]:
    inputs = [tritongrpc.InferInput(f"INPUT{i}", [1, 16], "INT32") for i in range(2)]
    inputs[0].set_data_from_numpy(first)
    inputs[1].set_data_from_numpy(second)
    return inputs


def _assert_still_serves(client: tritongrpc.InferenceServerClient) -> None:
    first = np.arange(16, dtype=np.int32).reshape(1, 16)
    second = np.ones((1, 16), dtype=np.int32)
    result = client.infer("simple", _simple_inputs(first, second), client_timeout=TIMEOUT_S)
    assert result.as_numpy("OUTPUT0").tolist() == (first + second).tolist()


def _error(call: Callable[[], object]) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as raised:
        call()
    return raised.value


# --- inputs and outputs in shared memory ---------------------------------------------------


def test_simple_inputs_and_outputs_in_shared_memory_with_offsets(
    client: tritongrpc.InferenceServerClient, regions: Callable[[int], tuple[Any, str]]
) -> None:
    first = np.arange(16, dtype=np.int32).reshape(1, 16)
    second = np.full((1, 16), 3, dtype=np.int32)
    # Inputs: one object, registered from offset 32, the tensors at 8 and 8 + 64 in the region.
    in_handle, in_key = regions(32 + 8 + 2 * INT32_BYTES)
    shm.set_shared_memory_region(in_handle, [first, second], offset=32 + 8)
    client.register_system_shared_memory("in", in_key, 8 + 2 * INT32_BYTES, offset=32)
    out_handle, out_key = regions(16 + 2 * INT32_BYTES)
    client.register_system_shared_memory("out", out_key, 16 + 2 * INT32_BYTES)

    inputs = [tritongrpc.InferInput(f"INPUT{i}", [1, 16], "INT32") for i in range(2)]
    inputs[0].set_shared_memory("in", INT32_BYTES, offset=8)
    inputs[1].set_shared_memory("in", INT32_BYTES, offset=8 + INT32_BYTES)
    outputs = [tritongrpc.InferRequestedOutput(f"OUTPUT{i}") for i in range(2)]
    outputs[0].set_shared_memory("out", INT32_BYTES, offset=16)
    outputs[1].set_shared_memory("out", INT32_BYTES, offset=16 + INT32_BYTES)
    result = client.infer("simple", inputs, outputs=outputs, client_timeout=TIMEOUT_S)

    response = result.get_response()
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("OUTPUT0", "INT32", [1, 16]),
        ("OUTPUT1", "INT32", [1, 16]),
    ]
    # As Triton: a buffer per output, empty for the ones written to shared memory.
    assert list(response.raw_output_contents) == [b"", b""]
    total = shm.get_contents_as_numpy(out_handle, np.int32, [1, 16], offset=16)
    difference = shm.get_contents_as_numpy(out_handle, np.int32, [1, 16], offset=16 + INT32_BYTES)
    assert total.tolist() == (first + second).tolist()
    assert difference.tolist() == (first - second).tolist()


def test_an_output_in_shared_memory_beside_one_inline(
    client: tritongrpc.InferenceServerClient, regions: Callable[[int], tuple[Any, str]]
) -> None:
    first = np.arange(16, dtype=np.int32).reshape(1, 16)
    second = np.full((1, 16), 2, dtype=np.int32)
    handle, key = regions(INT32_BYTES)
    client.register_system_shared_memory("out0", key, INT32_BYTES)
    outputs = [tritongrpc.InferRequestedOutput(f"OUTPUT{i}") for i in range(2)]
    outputs[0].set_shared_memory("out0", INT32_BYTES)
    result = client.infer(
        "simple", _simple_inputs(first, second), outputs=outputs, client_timeout=TIMEOUT_S
    )
    # The inline output is found by position, after the shared memory one's empty buffer.
    assert result.as_numpy("OUTPUT1").tolist() == (first - second).tolist()
    written = shm.get_contents_as_numpy(handle, np.int32, [1, 16])
    assert written.tolist() == (first + second).tolist()


def test_bytes_input_and_output_in_shared_memory(
    client: tritongrpc.InferenceServerClient, regions: Callable[[int], tuple[Any, str]]
) -> None:
    values = np.array([[b"", b"\x00", b"caf\xc3\xa9", b"x" * 300]], dtype=np.object_)
    serialized = serialize_byte_tensor(values)
    size = len(serialized.item())
    in_handle, in_key = regions(size)
    shm.set_shared_memory_region(in_handle, [serialized])
    client.register_system_shared_memory("bytes_in", in_key, size)
    out_handle, out_key = regions(size + 100)  # outputs may get a larger region than they fill
    client.register_system_shared_memory("bytes_out", out_key, size + 100)

    text = tritongrpc.InferInput("INPUT0", [1, 4], "BYTES")
    text.set_shared_memory("bytes_in", size)
    output = tritongrpc.InferRequestedOutput("OUTPUT0")
    output.set_shared_memory("bytes_out", size + 100)
    result = client.infer("simple_identity", [text], outputs=[output], client_timeout=TIMEOUT_S)
    assert list(result.get_output("OUTPUT0").shape) == [1, 4]
    echoed = shm.get_contents_as_numpy(out_handle, np.object_, [1, 4])
    assert echoed.tolist() == values.tolist()


@pytest.mark.parametrize("datatype", sorted(DATATYPES))
def test_every_datatype_through_shared_memory(
    shm_test_server: ServerProcess, regions: Callable[[int], tuple[Any, str]], datatype: str
) -> None:
    if datatype == "BYTES":
        values = np.array([[b"a", b"", b"\xff\x00"]], dtype=np.object_)
        payload = serialize_byte_tensor(values)
        size = len(payload.item())
        dtype: Any = np.object_
    else:
        dtype = (
            np.bool_ if datatype == "BOOL" else np.dtype(datatype.lower().replace("fp", "float"))
        )
        values = (np.arange(3) % 2 == 1) if datatype == "BOOL" else np.arange(3).astype(dtype)
        values = values.reshape(1, 3)
        payload = values
        size = values.nbytes
    in_handle, in_key = regions(size)
    shm.set_shared_memory_region(in_handle, [payload])
    out_handle, out_key = regions(size)
    client = tritongrpc.InferenceServerClient(shm_test_server.address)
    try:
        client.register_system_shared_memory("in", in_key, size)
        client.register_system_shared_memory("out", out_key, size)
        tensor = tritongrpc.InferInput("INPUT0", [1, 3], datatype)
        tensor.set_shared_memory("in", size)
        output = tritongrpc.InferRequestedOutput("OUTPUT0")
        output.set_shared_memory("out", size)
        model = f"identity_{datatype.lower()}"
        client.infer(model, [tensor], outputs=[output], client_timeout=TIMEOUT_S)
    finally:
        client.unregister_system_shared_memory()
        client.close()
    echoed = shm.get_contents_as_numpy(out_handle, dtype, [1, 3])
    assert echoed.tolist() == values.tolist()


def test_stream_infer_reads_and_writes_shared_memory(
    client: tritongrpc.InferenceServerClient, regions: Callable[[int], tuple[Any, str]]
) -> None:
    first = np.arange(16, dtype=np.int32).reshape(1, 16)
    second = np.full((1, 16), 5, dtype=np.int32)
    in_handle, in_key = regions(2 * INT32_BYTES)
    shm.set_shared_memory_region(in_handle, [first, second])
    client.register_system_shared_memory("stream_in", in_key, 2 * INT32_BYTES)
    out_handle, out_key = regions(INT32_BYTES)
    client.register_system_shared_memory("stream_out", out_key, INT32_BYTES)
    inputs = [tritongrpc.InferInput(f"INPUT{i}", [1, 16], "INT32") for i in range(2)]
    for i, tensor in enumerate(inputs):
        tensor.set_shared_memory("stream_in", INT32_BYTES, offset=i * INT32_BYTES)
    output = tritongrpc.InferRequestedOutput("OUTPUT0")
    output.set_shared_memory("stream_out", INT32_BYTES)
    answers: list[Any] = []
    client.start_stream(callback=lambda result, error: answers.append((result, error)))
    try:
        client.async_stream_infer("simple", inputs, outputs=[output], request_id="s")
    finally:
        client.stop_stream()  # waits for the responses
    ((result, error),) = answers
    assert error is None
    assert list(result.get_response().raw_output_contents) == [b""]
    written = shm.get_contents_as_numpy(out_handle, np.int32, [1, 16])
    assert written.tolist() == (first + second).tolist()


# --- the registry's RPCs -------------------------------------------------------------------


def test_status_and_unregister_all(
    client: tritongrpc.InferenceServerClient, regions: Callable[[int], tuple[Any, str]]
) -> None:
    _, key_a = regions(128)
    _, key_b = regions(64)
    client.register_system_shared_memory("a", key_a, 64, offset=64)
    client.register_system_shared_memory("b", key_b, 64)
    status = client.get_system_shared_memory_status()
    assert {name: (s.key, s.offset, s.byte_size) for name, s in status.regions.items()} == {
        "a": (key_a, 64, 64),
        "b": (key_b, 0, 64),
    }
    assert list(client.get_system_shared_memory_status("b").regions) == ["b"]
    missing = _error(lambda: client.get_system_shared_memory_status("nope"))
    assert missing.status() == "StatusCode.NOT_FOUND"
    assert "Unable to find system shared memory region: 'nope'" in missing.message()

    client.unregister_system_shared_memory("a")
    assert list(client.get_system_shared_memory_status().regions) == ["b"]
    client.unregister_system_shared_memory("a")  # unknown names are not an error (Triton)
    client.unregister_system_shared_memory()
    assert not client.get_system_shared_memory_status().regions
    client.unregister_system_shared_memory()  # none left: still fine


def test_register_twice_is_already_exists(
    client: tritongrpc.InferenceServerClient, regions: Callable[[int], tuple[Any, str]]
) -> None:
    _, key = regions(64)
    client.register_system_shared_memory("twice", key, 64)
    error = _error(lambda: client.register_system_shared_memory("twice", key, 64))
    assert error.status() == "StatusCode.ALREADY_EXISTS"
    assert "shared memory region 'twice' already in manager" in error.message()


def test_metadata_lists_the_extension(client: tritongrpc.InferenceServerClient) -> None:
    assert "system_shared_memory" in client.get_server_metadata().extensions


def test_off_by_default(
    demo_server: ServerProcess, regions: Callable[[int], tuple[Any, str]]
) -> None:
    _, key = regions(INT32_BYTES)
    client = tritongrpc.InferenceServerClient(demo_server.address)
    try:
        refused = _error(lambda: client.register_system_shared_memory("r", key, INT32_BYTES))
        assert refused.status() == "StatusCode.UNAVAILABLE"
        assert "--allow-client-shm" in refused.message()
        assert not client.get_system_shared_memory_status().regions
        client.unregister_system_shared_memory()
        assert "system_shared_memory" not in client.get_server_metadata().extensions

        inputs = _simple_inputs(np.zeros((1, 16), np.int32), np.zeros((1, 16), np.int32))
        inputs[0].set_shared_memory("r", INT32_BYTES)
        request = _error(lambda: client.infer("simple", inputs, client_timeout=TIMEOUT_S))
        assert request.status() == "StatusCode.INVALID_ARGUMENT"
        assert "names shared memory region 'r', but start inferd with --allow-client-shm" in (
            request.message()
        )
        _assert_still_serves(client)
    finally:
        client.close()


# --- hostile registrations -----------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "no_slash",
        "/",
        "/a/b",
        "/../../etc/passwd",
        "/..",
        "/" + "x" * 256,
        "/inferd_private",
    ],
)
def test_register_refuses_keys_that_are_not_shm_names(
    client: tritongrpc.InferenceServerClient, key: str
) -> None:
    error = _error(lambda: client.register_system_shared_memory("bad_key", key, 8))
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "failed to register shared memory region 'bad_key'" in error.message()
    assert not client.get_system_shared_memory_status().regions
    _assert_still_serves(client)


def test_register_refuses_a_symlink_and_a_missing_object(
    client: tritongrpc.InferenceServerClient, tmp_path: Path
) -> None:
    target = tmp_path / "secret"
    target.write_bytes(b"s" * 64)
    link_key = f"/shmtest_link_{uuid.uuid4().hex}"
    link = Path("/dev/shm") / link_key[1:]
    link.symlink_to(target)
    try:
        error = _error(lambda: client.register_system_shared_memory("link", link_key, 64))
    finally:
        link.unlink()
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert f"Unable to open shared memory region: '{link_key}' (it is a symbolic link)" in (
        error.message()
    )
    missing_key = f"/shmtest_missing_{uuid.uuid4().hex}"
    error = _error(lambda: client.register_system_shared_memory("gone", missing_key, 64))
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert f"Unable to open shared memory region: '{missing_key}'" in error.message()
    _assert_still_serves(client)


def test_register_refuses_the_reserved_name_prefix(
    client: tritongrpc.InferenceServerClient, regions: Callable[[int], tuple[Any, str]]
) -> None:
    _, key = regions(64)
    error = _error(lambda: client.register_system_shared_memory("inferd_x", key, 64))
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "names starting with 'inferd_' are reserved" in error.message()


@pytest.mark.parametrize(
    ("offset", "byte_size"),
    [(0, 65), (64, 1), (1, 64), (0, 0), (2**63, 1), (0, 2**64 - 1), (2**64 - 1, 2**64 - 1)],
)
def test_register_refuses_bounds_outside_the_object(
    client: tritongrpc.InferenceServerClient,
    regions: Callable[[int], tuple[Any, str]],
    offset: int,
    byte_size: int,
) -> None:
    _, key = regions(64)
    error = _error(
        lambda: client.register_system_shared_memory("bounds", key, byte_size, offset=offset)
    )
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "failed to register shared memory region 'bounds': invalid args" in error.message()
    _assert_still_serves(client)


# --- hostile requests ----------------------------------------------------------------------


@pytest.fixture
def registered(
    client: tritongrpc.InferenceServerClient, regions: Callable[[int], tuple[Any, str]]
) -> tuple[Any, str]:
    """Region 'r': 2 * 64 bytes holding two INT32 [1, 16] tensors."""
    handle, key = regions(2 * INT32_BYTES)
    shm.set_shared_memory_region(
        handle, [np.arange(16, dtype=np.int32), np.ones(16, dtype=np.int32)]
    )
    client.register_system_shared_memory("r", key, 2 * INT32_BYTES)
    return handle, key


def _raw_request(**input0_parameters: Any) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="simple")
    first = request.inputs.add(name="INPUT0", datatype="INT32", shape=[1, 16])
    for name, value in input0_parameters.items():
        parameter = first.parameters[name]
        if isinstance(value, str):
            parameter.string_param = value
        elif isinstance(value, bool):
            parameter.bool_param = value
        else:
            parameter.int64_param = value
    request.inputs.add(name="INPUT1", datatype="INT32", shape=[1, 16])
    request.raw_input_contents.append(bytes(INT32_BYTES))
    return request


def _send(address: str, request: service_pb2.ModelInferRequest) -> grpc.RpcError:
    with grpc.insecure_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.ModelInfer(request, timeout=TIMEOUT_S)
    return raised.value


R = "shared_memory_region"
B = "shared_memory_byte_size"
O = "shared_memory_offset"  # noqa: E741


@pytest.mark.parametrize(
    ("parameters", "code", "message"),
    [
        (
            {R: "r", B: INT32_BYTES, O: -1},
            grpc.StatusCode.INVALID_ARGUMENT,
            "Invalid offset for shared memory region: 'r'",
        ),
        (
            {R: "r", B: INT32_BYTES, O: 2**63 - 1},
            grpc.StatusCode.INVALID_ARGUMENT,
            "Invalid offset for shared memory region: 'r'",
        ),
        (
            {R: "r", B: -INT32_BYTES},
            grpc.StatusCode.INVALID_ARGUMENT,
            "Invalid byte size for shared memory region: 'r'",
        ),
        (
            {R: "r", B: 2**63 - 1, O: 64},
            grpc.StatusCode.INVALID_ARGUMENT,
            "Invalid offset + byte size for shared memory region: 'r'",
        ),
        (
            {R: "r", B: INT32_BYTES, O: INT32_BYTES + 1},
            grpc.StatusCode.INVALID_ARGUMENT,
            "Invalid offset + byte size for shared memory region: 'r'",
        ),
        (
            {R: "r", B: INT32_BYTES - 4},
            grpc.StatusCode.INVALID_ARGUMENT,
            "input byte size mismatch for input 'INPUT0' for model 'simple'. Expected 64, got 60",
        ),
        (
            {R: "nope", B: INT32_BYTES},
            grpc.StatusCode.NOT_FOUND,
            "Unable to find shared memory region: 'nope'",
        ),
        (
            {R: 7, B: INT32_BYTES},
            grpc.StatusCode.INVALID_ARGUMENT,
            "invalid value type for 'shared_memory_region' parameter for tensor 'INPUT0', "
            "expected string_param.",
        ),
        (
            {R: "r"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "'shared_memory_byte_size' must be specified along with 'shared_memory_region' "
            "parameter for tensor 'INPUT0'",
        ),
        (
            {B: INT32_BYTES},
            grpc.StatusCode.INVALID_ARGUMENT,
            "'shared_memory_byte_size' can not be specified without 'shared_memory_region' "
            "parameter for tensor 'INPUT0'",
        ),
        (
            {R: "r", B: True},
            grpc.StatusCode.INVALID_ARGUMENT,
            "invalid value type for 'shared_memory_byte_size' parameter for tensor 'INPUT0', "
            "expected int64_param.",
        ),
    ],
)
def test_hostile_input_parameters(
    shm_server: ServerProcess,
    client: tritongrpc.InferenceServerClient,
    registered: tuple[Any, str],
    parameters: dict[str, Any],
    code: grpc.StatusCode,
    message: str,
) -> None:
    error = _send(shm_server.address, _raw_request(**parameters))
    assert error.code() == code
    assert message in (error.details() or "")
    _assert_still_serves(client)


def test_input_with_contents_and_shared_memory_is_refused(
    shm_server: ServerProcess, client: tritongrpc.InferenceServerClient, registered: Any
) -> None:
    request = _raw_request(**{R: "r", B: INT32_BYTES})
    request.inputs[0].contents.int_contents.extend(range(16))
    error = _send(shm_server.address, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unexpected 'content' provided when using shared memory for input tensor 'INPUT0'" in (
        error.details() or ""
    )


def test_output_region_too_small(
    client: tritongrpc.InferenceServerClient, registered: tuple[Any, str]
) -> None:
    inputs = [tritongrpc.InferInput(f"INPUT{i}", [1, 16], "INT32") for i in range(2)]
    for i, tensor in enumerate(inputs):
        tensor.set_shared_memory("r", INT32_BYTES, offset=i * INT32_BYTES)
    output = tritongrpc.InferRequestedOutput("OUTPUT0")
    output.set_shared_memory("r", INT32_BYTES - 1, offset=INT32_BYTES)
    error = _error(lambda: client.infer("simple", inputs, outputs=[output]))
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert (
        "shared memory size specified with the request for output 'OUTPUT0' (63 bytes) should "
        "be at least 64 bytes to hold the results"
    ) in error.message()
    classified = tritongrpc.InferRequestedOutput("OUTPUT0", class_count=2)
    classified._output.parameters[R].string_param = "r"
    classified._output.parameters[B].int64_param = INT32_BYTES
    error = _error(lambda: client.infer("simple", inputs, outputs=[classified]))
    assert "output can't set both 'shared_memory_region' and 'classification'" in error.message()
    _assert_still_serves(client)


def test_truncated_object_is_a_clear_error_not_a_crash(
    client: tritongrpc.InferenceServerClient, registered: tuple[Any, str]
) -> None:
    _, key = registered
    inputs = [tritongrpc.InferInput(f"INPUT{i}", [1, 16], "INT32") for i in range(2)]
    for i, tensor in enumerate(inputs):
        tensor.set_shared_memory("r", INT32_BYTES, offset=i * INT32_BYTES)
    client.infer("simple", inputs, client_timeout=TIMEOUT_S)  # fine while whole

    fd = os.open("/dev/shm/" + key[1:], os.O_RDWR)
    try:
        os.ftruncate(fd, INT32_BYTES // 2)
    finally:
        os.close(fd)
    error = _error(lambda: client.infer("simple", inputs, client_timeout=TIMEOUT_S))
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert (
        "shared memory region 'r' was truncated by its owner: it was registered as 128 bytes at "
        "offset 0, but the object now holds 32 bytes"
    ) in error.message()
    assert key not in error.message()  # errors name the region, never its key
    _assert_still_serves(client)


def test_a_removed_object_keeps_working_until_unregistered(
    client: tritongrpc.InferenceServerClient, registered: tuple[Any, str]
) -> None:
    _, key = registered
    os.unlink("/dev/shm/" + key[1:])  # the server holds its own descriptor
    inputs = [tritongrpc.InferInput(f"INPUT{i}", [1, 16], "INT32") for i in range(2)]
    for i, tensor in enumerate(inputs):
        tensor.set_shared_memory("r", INT32_BYTES, offset=i * INT32_BYTES)
    result = client.infer("simple", inputs, client_timeout=TIMEOUT_S)
    assert result.as_numpy("OUTPUT0").tolist() == [list(range(1, 17))]
    # Recreate the name so the fixture's destroy (unlink) finds it.
    os.close(os.open("/dev/shm/" + key[1:], os.O_CREAT | os.O_RDWR, 0o600))


def test_unregister_closes_the_servers_descriptor(
    shm_server: ServerProcess,
    client: tritongrpc.InferenceServerClient,
    registered: tuple[Any, str],
) -> None:
    _, key = registered
    # One process holds it, or the engine process and each front's mirror (the front that
    # did not answer the RPC mirrors the change a moment later).
    command = cast(list[str], shm_server.process.args)
    holders = 3 if "--frontends 2" in " ".join(command) else 1
    wait_until(
        lambda: _descriptors_on(shm_server, key) == holders,
        f"{holders} descriptors of the region open",
        server=shm_server,
    )
    client.unregister_system_shared_memory("r")
    wait_until(
        lambda: _descriptors_on(shm_server, key) == 0,
        "every descriptor of the region closed",
        server=shm_server,
    )


def _readlink(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def test_unregistering_a_region_in_use_waits_for_its_request(
    shm_server: ServerProcess,
    client: tritongrpc.InferenceServerClient,
    regions: Callable[[int], tuple[Any, str]],
) -> None:
    """A decoupled request keeps writing its region after it is unregistered; the server's
    descriptor closes when that request is done."""
    handle, key = regions(4)
    client.register_system_shared_memory("dec_out", key, 4)
    arrays = {
        "IN": np.array([7, 8], dtype=np.int32),
        "DELAY": np.array([0, 2000], dtype=np.uint32),  # holds the request past unregister
        "WAIT": np.array([0], dtype=np.uint32),
    }
    inputs = []
    for name, array in arrays.items():
        tensor = tritongrpc.InferInput(
            name, list(array.shape), "INT32" if name == "IN" else "UINT32"
        )
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    output = tritongrpc.InferRequestedOutput("OUT")
    output.set_shared_memory("dec_out", 4)
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        outputs = [output, tritongrpc.InferRequestedOutput("IDX")]
        client.async_stream_infer("repeat_int32", inputs, outputs=outputs, request_id="d")
        result, error = answers.get(timeout=TIMEOUT_S)
        assert error is None
        assert result.as_numpy("IDX").tolist() == [0]  # inline, beside OUT's empty buffer
        assert shm.get_contents_as_numpy(handle, np.int32, [1]).tolist() == [7]

        client.unregister_system_shared_memory("dec_out")
        assert not client.get_system_shared_memory_status().regions
        assert _descriptors_on(shm_server, key) == 1  # still in use

        result, error = answers.get(timeout=TIMEOUT_S)
        assert error is None
        assert result.as_numpy("IDX").tolist() == [1]
        assert shm.get_contents_as_numpy(handle, np.int32, [1]).tolist() == [8]
    finally:
        client.stop_stream()  # returns once the server has ended the call
    assert _descriptors_on(shm_server, key) == 0


def _descriptors_on(server: ServerProcess, key: str) -> int:
    """Descriptors of the object open in the server and its child processes."""
    target = "/dev/shm/" + key[1:]
    count = 0
    for pid in (server.process.pid, *_children(server.process.pid)):
        with contextlib.suppress(OSError):
            count += sum(1 for fd in Path(f"/proc/{pid}/fd").iterdir() if _readlink(fd) == target)
    return count


def _children(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                status = (entry / "status").read_text()
                if f"\nPPid:\t{pid}\n" in status:
                    children.append(int(entry.name))
    return children


# --- the registry directly -----------------------------------------------------------------


@pytest.fixture
def shm_dir(tmp_path: Path) -> Path:
    (tmp_path / "obj").write_bytes(bytes(range(64)))
    return tmp_path


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_a_region_in_use_closes_after_its_last_request(shm_dir: Path) -> None:
    registry = SystemSharedMemoryRegistry(enabled=True, directory=str(shm_dir))
    registry.register("r", "/obj", 0, 64)
    with registry.request() as regions:
        regions.bind_output("OUT", "r", 0, 8, what="output 'OUT'")
        fd = regions.outputs["OUT"].region.fd
        registry.unregister("")
        assert _is_open(fd)  # still written to by this request
        assert regions.write_output("OUT", b"12345678", "m")
        with pytest.raises(EngineError) as raised:
            registry.status("r")
        assert raised.value.code is ErrorCode.NOT_FOUND
    assert not _is_open(fd)
    assert (shm_dir / "obj").read_bytes()[:8] == b"12345678"


def test_the_number_of_regions_is_bounded(shm_dir: Path) -> None:
    registry = SystemSharedMemoryRegistry(enabled=True, max_regions=2, directory=str(shm_dir))
    registry.register("a", "/obj", 0, 8)
    registry.register("b", "/obj", 8, 8)
    with pytest.raises(EngineError) as raised:
        registry.register("c", "/obj", 16, 8)
    assert raised.value.code is ErrorCode.UNAVAILABLE
    assert "holds 2 regions already, its limit" in raised.value.message
    registry.unregister("a")
    registry.register("c", "/obj", 16, 8)
    registry.close()


def test_close_at_shutdown_closes_every_descriptor(shm_dir: Path) -> None:
    registry = SystemSharedMemoryRegistry(enabled=True, directory=str(shm_dir))
    registry.register("a", "/obj", 0, 8)
    registry.register("b", "/obj", 0, 64)
    fds = [registry.table.regions(name)[0].fd for name in ("a", "b")]
    registry.close()
    assert not any(_is_open(fd) for fd in fds)
    with pytest.raises(EngineError) as raised:
        registry.register("c", "/obj", 0, 8)
    assert raised.value.code is ErrorCode.UNAVAILABLE


def test_refuses_what_is_not_a_regular_file(shm_dir: Path) -> None:
    os.mkfifo(shm_dir / "fifo")
    (shm_dir / "dir").mkdir()
    registry = SystemSharedMemoryRegistry(enabled=True, directory=str(shm_dir))
    for key in ("/fifo", "/dir"):
        with pytest.raises(EngineError) as raised:
            registry.register("x", key, 0, 1)
        assert raised.value.code is ErrorCode.INVALID_ARGUMENT
        assert f"Unable to open shared memory region: '{key}'" in raised.value.message
    assert registry.status("") == []


def test_one_request_reads_at_most_max_request_bytes(shm_dir: Path) -> None:
    registry = SystemSharedMemoryRegistry(
        enabled=True, directory=str(shm_dir), max_request_bytes=100
    )
    registry.register("r", "/obj", 0, 64)
    with registry.request() as regions:
        assert regions.read_input("r", 0, 64, what="input 'A'") == bytes(range(64))
        with pytest.raises(EngineError) as raised:
            regions.read_input("r", 0, 64, what="input 'B'")
    assert raised.value.code is ErrorCode.INVALID_ARGUMENT
    assert "add up to 128 bytes, more than the 100 bytes" in raised.value.message
    registry.unregister("r")
    assert registry.status("") == []
