"""``inferd serve --frontends N``: real servers over loopback, several gRPC front
processes sharing the port in front of one engine process.

Answers are compared with single-process mode (the session's ``test_server`` and
``demo_server``, which serve the same models by the same names). Each test opens several
client connections (``grpc.use_local_subchannel_pool``: grpc would otherwise share one
TCP connection between channels to the same target), so SO_REUSEPORT spreads them over
the front processes; a probe (as in test_server_lifecycle.py) logs each ModelInfer in the
process that handles it, which shows which fronts served and when a request is in flight.

No verdict depends on timing: the model ``sleepy`` sleeps at least DELAY_MS, so requests
are in flight for at least that long; every wait is bounded.
"""

from __future__ import annotations

import functools
import os
import queue
import re
import signal
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from inferd.protos import grpc_service_pb2 as pb
from inferd.protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.model_builders import build_test_repository
from tests.support.server_process import ServerProcess, probe_env, serve
from tests.support.waiting import wait_for_log, wait_until

RPC_TIMEOUT_S = 60.0
WAIT_S = 60.0
CONNECTIONS = 8
INLINE_LIMIT = 64 * 1024  # tensors above it go through the shared-memory rings
RING_BYTES = 2**20  # --frontend-ring-mib 1
SHM = Path("/dev/shm")

ELEMENT_BYTES = {
    "BOOL": 1,
    "UINT8": 1,
    "UINT16": 2,
    "UINT32": 4,
    "UINT64": 8,
    "INT8": 1,
    "INT16": 2,
    "INT32": 4,
    "INT64": 8,
    "FP16": 2,
    "FP32": 4,
    "FP64": 8,
}
NUMPY_TYPES = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
# The typed-contents field of each datatype (FP16 has none).
CONTENTS_FIELDS = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


# OUTPUT0 = INPUT0 after sleeping DELAY_MS: holds its input (and the ring space under
# it) for as long as the test asks.
SLEEPY_CONFIG = """
name: "sleepy"
backend: "python"
max_batch_size: 0
instance_group [ { kind: KIND_CPU count: 8 } ]
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] },
        { name: "DELAY_MS" data_type: TYPE_UINT32 dims: [ 1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
"""
SLEEPY_MODEL = """
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            delay = pb_utils.get_input_tensor_by_name(request, "DELAY_MS").as_numpy()
            time.sleep(int(delay[0]) / 1000)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", data)]))
        return responses
"""

_PID = re.compile(r"(front-\d+|engine)\[(\d+)\]")

Launch = Callable[..., ServerProcess]


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test repository (identity models of every datatype) plus ``sleepy``."""
    root = build_test_repository(tmp_path_factory.mktemp("frontends") / "models")
    (root / "sleepy" / "1").mkdir(parents=True)
    (root / "sleepy" / "config.pbtxt").write_text(SLEEPY_CONFIG)
    (root / "sleepy" / "1" / "model.py").write_text(SLEEPY_MODEL)
    return root


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return probe_env(tmp_path_factory.mktemp("probe"))


@pytest.fixture(scope="module")
def fronts(repository: Path, probe: dict[str, str]) -> Iterator[ServerProcess]:
    """Two front processes with 1 MiB rings."""
    server = ServerProcess(
        repository, "--frontends", "2", "--frontend-ring-mib", "1", env=probe
    ).wait_ready()
    yield server
    code = server.stop()
    assert code == 0, f"inferd exited with {code}:\n{server.log_text()}"
    assert not _segments(server.process.pid)


@pytest.fixture(scope="module")
def demo_fronts(demo_repository: Path) -> Iterator[ServerProcess]:
    yield from serve(demo_repository, "--frontends", "2")


@pytest.fixture
def launch(probe: dict[str, str]) -> Iterator[Launch]:
    """Servers of one test (own flags, signals, kills); all are reaped afterwards."""
    launched: list[ServerProcess] = []

    def start(repository: Path | None, *args: str, wait: bool = True) -> ServerProcess:
        server = ServerProcess(repository, *args, env=probe)
        launched.append(server)
        return server.wait_ready() if wait else server

    yield start
    for server in launched:
        server.kill()


# --- helpers -----------------------------------------------------------------------------


class Connections:
    """Separate TCP connections to one server, used round robin."""

    def __init__(self, address: str, count: int = CONNECTIONS) -> None:
        options = [
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", -1),
        ]
        self.channels = [grpc.insecure_channel(address, options=options) for _ in range(count)]
        self.stubs = [pb_grpc.GRPCInferenceServiceStub(channel) for channel in self.channels]
        self._next = 0

    def next(self) -> pb_grpc.GRPCInferenceServiceStub:
        stub = self.stubs[self._next % len(self.stubs)]
        self._next += 1
        return stub

    def close(self) -> None:
        for channel in self.channels:
            channel.close()

    def __enter__(self) -> Connections:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _segments(owner_pid: int, label: str = "") -> list[str]:
    prefix = f"inferd-ipc-{owner_pid}-{label}"
    return sorted(name for name in os.listdir(SHM) if name.startswith(prefix))


def _pids(server: ServerProcess) -> dict[str, set[int]]:
    found: dict[str, set[int]] = {}
    for role, pid in _PID.findall(server.log_text()):
        found.setdefault(role, set()).add(int(pid))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_started(server: ServerProcess, *request_ids: str) -> None:
    for request_id in request_ids:
        wait_for_log(server, f"probe: ModelInfer {request_id} started", timeout_s=WAIT_S)


def _served_by(server: ServerProcess, prefix: str) -> set[str]:
    """The front processes whose handlers ran requests with ids starting with ``prefix``."""
    pattern = re.compile(rf"(front-\d+)\[\d+\].*probe: ModelInfer {re.escape(prefix)}\S* started")
    return {match.group(1) for match in pattern.finditer(server.log_text())}


def _serialize_bytes(elements: list[bytes]) -> bytes:
    return b"".join(len(element).to_bytes(4, "little") + element for element in elements)


def _raw_request(
    model: str, datatype: str, shape: list[int], data: bytes, request_id: str = ""
) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, id=request_id)
    request.inputs.add(name="INPUT0", datatype=datatype, shape=shape)
    request.raw_input_contents.append(data)
    return request


def _identity_payload(datatype: str, nbytes: int, rng: np.random.Generator) -> tuple[int, bytes]:
    """(elements, raw bytes) of an identity model's input of ``nbytes`` raw bytes."""
    if datatype == "BYTES":
        if nbytes == 0:
            return 0, b""
        if nbytes < 4:  # one element takes at least its 4-byte length
            return 1, _serialize_bytes([b""])
        return 1, _serialize_bytes([rng.bytes(nbytes - 4)])
    size = ELEMENT_BYTES[datatype]
    elements = nbytes // size
    if datatype == "BOOL":
        return elements, rng.integers(0, 2, elements, dtype=np.uint8).tobytes()
    return elements, rng.bytes(elements * size)


def _sleepy_request(request_id: str, elements: int, delay_ms: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="sleepy", id=request_id)
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[elements])
    request.inputs.add(name="DELAY_MS", datatype="UINT32", shape=[1])
    request.raw_input_contents.extend(
        [
            np.arange(elements, dtype="<f4").tobytes(),
            np.array([delay_ms], "<u4").tobytes(),
        ]
    )
    return request


def _sleepy_output(response: pb.ModelInferResponse, elements: int) -> None:
    assert list(response.outputs[0].shape) == [elements]
    assert response.raw_output_contents[0] == np.arange(elements, dtype="<f4").tobytes()


def _answer(call: Callable[[], object]) -> tuple[grpc.StatusCode, object]:
    """The RPC's one outcome: (OK, response) or (its code, its details)."""
    try:
        return grpc.StatusCode.OK, call()
    except grpc.RpcError as error:
        return error.code(), error.details()


def _outcome(stub: pb_grpc.GRPCInferenceServiceStub, request: object) -> tuple[object, object]:
    """(code, details) of an RPC that fails, (OK, response) of one that works."""
    return _answer(lambda: stub.ModelInfer(request, timeout=RPC_TIMEOUT_S))


def _same_response(ours: pb.ModelInferResponse, theirs: pb.ModelInferResponse) -> None:
    assert ours.model_name == theirs.model_name
    assert [(o.name, o.datatype, list(o.shape)) for o in ours.outputs] == [
        (o.name, o.datatype, list(o.shape)) for o in theirs.outputs
    ]
    assert list(ours.raw_output_contents) == list(theirs.raw_output_contents)


# --- 1. round trips ----------------------------------------------------------------------


@pytest.mark.parametrize("datatype", [*ELEMENT_BYTES, "BYTES"])
def test_raw_round_trips_are_byte_exact_around_the_inline_limit(
    fronts: ServerProcess, test_server: ServerProcess, datatype: str
) -> None:
    rng = np.random.default_rng(len(datatype))
    step = ELEMENT_BYTES.get(datatype, 1)
    sizes = [0, step, INLINE_LIMIT - step, INLINE_LIMIT, INLINE_LIMIT + step]
    model = f"identity_{datatype.lower()}"
    with Connections(fronts.address) as ours, Connections(test_server.address, 1) as single:
        for nbytes in sizes:
            elements, data = _identity_payload(datatype, nbytes, rng)
            request = _raw_request(model, datatype, [1, elements], data, f"rt-{datatype}-{nbytes}")
            for _ in range(2):  # two connections each, so both fronts see each size
                code, response = _outcome(ours.next(), request)
                assert code == grpc.StatusCode.OK, (nbytes, response)
                assert isinstance(response, pb.ModelInferResponse)
                assert response.raw_output_contents[0] == data, nbytes
                assert list(response.outputs[0].shape) == [1, elements]
                reference = single.next().ModelInfer(request, timeout=RPC_TIMEOUT_S)
                _same_response(response, reference)


def test_every_front_process_serves(fronts: ServerProcess) -> None:
    with Connections(fronts.address, 16) as ours:
        for stub in ours.stubs:
            request = _raw_request("identity_int32", "INT32", [1, 1], b"\1\0\0\0", "spread")
            assert stub.ModelInfer(request, timeout=RPC_TIMEOUT_S).raw_output_contents[0] == (
                b"\1\0\0\0"
            )
    assert _served_by(fronts, "spread") == {"front-0", "front-1"}


@pytest.mark.parametrize(
    "nbytes",
    [RING_BYTES, RING_BYTES + 1, 3 * RING_BYTES],
    ids=["fills-the-ring", "one-over-the-ring", "three-rings"],
)
def test_ring_sized_and_oversize_tensors(
    fronts: ServerProcess, test_server: ServerProcess, nbytes: int
) -> None:
    data = np.random.default_rng(nbytes).bytes(nbytes)
    request = _raw_request("identity_uint8", "UINT8", [1, nbytes], data, f"ring-{nbytes}")
    with Connections(fronts.address, 4) as ours, Connections(test_server.address, 1) as single:
        reference = single.next().ModelInfer(request, timeout=RPC_TIMEOUT_S)
        for stub in ours.stubs:
            response = stub.ModelInfer(request, timeout=RPC_TIMEOUT_S)
            assert response.raw_output_contents[0] == data
            _same_response(response, reference)


# --- 2. typed contents -------------------------------------------------------------------


def _typed_request(datatype: str, elements: int, shape: list[int]) -> pb.ModelInferRequest:
    model = f"identity_{datatype.lower()}"
    request = pb.ModelInferRequest(model_name=model, id=f"typed-{datatype}")
    tensor = request.inputs.add(name="INPUT0", datatype=datatype, shape=shape)
    field = getattr(tensor.contents, CONTENTS_FIELDS[datatype])
    if datatype == "BYTES":
        field.extend([f"element {index}".encode() for index in range(elements)])
    elif datatype == "BOOL":
        field.extend([index % 3 == 0 for index in range(elements)])
    else:
        info = np.iinfo if datatype[0] in "IU" else np.finfo
        top = min(int(info(NUMPY_TYPES[datatype]).max), 2**40)
        field.extend(np.linspace(0, top, elements).astype(NUMPY_TYPES[datatype]).tolist())
    return request


@pytest.mark.parametrize("datatype", list(CONTENTS_FIELDS))
def test_typed_contents_answer_as_single_process(
    fronts: ServerProcess, test_server: ServerProcess, datatype: str
) -> None:
    large = INLINE_LIMIT // ELEMENT_BYTES.get(datatype, 8) + 7  # over the inline limit
    with Connections(fronts.address, 4) as ours, Connections(test_server.address, 1) as single:
        for elements in (0, 3, large):
            request = _typed_request(datatype, elements, [1, elements])
            reference = single.next().ModelInfer(request, timeout=RPC_TIMEOUT_S)
            for stub in ours.stubs:
                _same_response(stub.ModelInfer(request, timeout=RPC_TIMEOUT_S), reference)
        for elements, shape in ((3, [1, 5]), (large, [1, large + 1]), (5, [1, 3])):
            request = _typed_request(datatype, elements, shape)
            expected = _outcome(single.next(), request)
            assert expected[0] == grpc.StatusCode.INVALID_ARGUMENT
            for stub in ours.stubs:
                assert _outcome(stub, request) == expected


# --- 3. errors ---------------------------------------------------------------------------


def test_errors_read_as_in_single_process(
    fronts: ServerProcess, test_server: ServerProcess
) -> None:
    four = np.arange(4, dtype="<f4").tobytes()
    cases = [
        (_raw_request("no_such_model", "FP32", [1, 4], four), grpc.StatusCode.NOT_FOUND),
        (_raw_request("identity_fp32", "FP32", [1, 2, 2], four), grpc.StatusCode.INVALID_ARGUMENT),
        (_raw_request("identity_fp32", "FP32", [1, 5], four), grpc.StatusCode.INVALID_ARGUMENT),
        (_raw_request("identity_fp32", "INT32", [1, 4], four), grpc.StatusCode.INVALID_ARGUMENT),
        (
            _raw_request("identity_fp32", "FP32", [1, 20000], bytes(80_004)),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ]
    with Connections(fronts.address, 4) as ours, Connections(test_server.address, 1) as single:
        for request, code in cases:
            expected = _outcome(single.next(), request)
            assert expected[0] == code, expected
            for stub in ours.stubs:
                assert _outcome(stub, request) == expected


# --- 4. streaming ------------------------------------------------------------------------


def _repeat_request(request_id: str, values: list[int], delay_ms: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="repeat_int32", id=request_id)
    arrays = [
        ("IN", "INT32", np.array(values, "<i4")),
        ("DELAY", "UINT32", np.full(len(values), delay_ms, "<u4")),
        ("WAIT", "UINT32", np.array([0], "<u4")),
    ]
    for name, datatype, array in arrays:
        request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        request.raw_input_contents.append(array.tobytes())
    return request


def _sequence_request(
    request_id: str, sequence_id: int, value: int, start: bool, end: bool
) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="simple_sequence", id=request_id)
    request.inputs.add(name="INPUT", datatype="INT32", shape=[1, 1])
    request.raw_input_contents.append(np.array([[value]], "<i4").tobytes())
    request.parameters["sequence_id"].int64_param = sequence_id
    request.parameters["sequence_start"].bool_param = start
    request.parameters["sequence_end"].bool_param = end
    return request


def _stream(address: str, requests: list[pb.ModelInferRequest]) -> list[tuple]:
    """Each response as (id, error, outputs, raw contents, final), per request id in order."""
    with Connections(address, 1) as connection:
        responses = connection.next().ModelStreamInfer(iter(requests), timeout=RPC_TIMEOUT_S)
        received = []
        for message in responses:
            response = message.infer_response
            received.append(
                (
                    response.id,
                    message.error_message,
                    [(o.name, o.datatype, list(o.shape)) for o in response.outputs],
                    list(response.raw_output_contents),
                    response.parameters["triton_final_response"].bool_param,
                )
            )
    # Requests interleave; each request's own responses keep their order.
    return sorted(received, key=lambda item: item[0])


def test_streaming_answers_as_single_process(
    demo_fronts: ServerProcess, demo_server: ServerProcess
) -> None:
    requests = [
        _repeat_request("repeat-a", [4, 5, 6], 5),
        _sequence_request("seq-1", 1001, 3, start=True, end=False),
        _repeat_request("repeat-b", list(range(16_400)), 0),  # over the inline limit
        _sequence_request("seq-2", 1001, 4, start=False, end=False),
        _sequence_request("seq-3", 1001, 5, start=False, end=True),
        _sequence_request("seq-bad", 1002, 1, start=False, end=False),  # no start: an error
    ]
    for _ in range(2):  # new connections, so both fronts take a stream
        ours = _stream(demo_fronts.address, requests)
        assert ours == _stream(demo_server.address, requests)
        assert sum(1 for item in ours if item[0] == "repeat-b" and not item[1]) == 16_400
        assert any(item[0] == "seq-bad" and item[1] for item in ours)


# --- 5. statistics and metrics -----------------------------------------------------------


def test_statistics_and_metrics_count_requests_from_every_front(fronts: ServerProcess) -> None:
    count = 32
    with Connections(fronts.address, 16) as ours:  # all on one front: odds 2**-15
        for index in range(count):
            request = _raw_request("unbatched", "FP32", [3], bytes(12), f"stats-{index}")
            ours.next().ModelInfer(request, timeout=RPC_TIMEOUT_S)
        for stub in ours.stubs:
            statistics = stub.ModelStatistics(
                pb.ModelStatisticsRequest(name="unbatched"), timeout=RPC_TIMEOUT_S
            )
            (model,) = statistics.model_stats
            assert model.inference_stats.success.count == count
            assert model.inference_count == count
    assert _served_by(fronts, "stats-") == {"front-0", "front-1"}
    assert fronts.metrics_url is not None
    with urllib.request.urlopen(fronts.metrics_url, timeout=RPC_TIMEOUT_S) as response:
        metrics = response.read().decode()
    pattern = r'inferd_inference_request_success_total\{[^}]*model="unbatched"[^}]*\} (\S+)'
    assert [float(value) for value in re.findall(pattern, metrics)] == [count]


# --- 9. a full ring ----------------------------------------------------------------------


def test_a_full_ring_rejects_instead_of_hanging(fronts: ServerProcess) -> None:
    elements = 150_000  # 600 KB: one fits in a 1 MiB ring, two do not
    timeout_s = 2.5
    requests = 12
    with Connections(fronts.address, requests) as ours:

        def send(index: int) -> tuple[grpc.StatusCode, object]:
            request = _sleepy_request(f"full-{index}", elements, 1000)
            return _answer(lambda: ours.stubs[index].ModelInfer(request, timeout=timeout_s))

        with ThreadPoolExecutor(requests) as pool:
            outcomes = list(pool.map(send, range(requests)))
        failures = [outcome for outcome in outcomes if outcome[0] != grpc.StatusCode.OK]
        for code, details in outcomes:
            if code == grpc.StatusCode.OK:
                assert isinstance(details, pb.ModelInferResponse)
                _sleepy_output(details, elements)
            elif code == grpc.StatusCode.UNAVAILABLE:
                assert "shared-memory ring" in str(details)
            else:
                assert code == grpc.StatusCode.DEADLINE_EXCEEDED, (code, details)
        # Each front runs one such request at a time, each at least 1 s: not all 12 in 2.5 s.
        # Those still waiting for ring space hear why, just before their deadline.
        assert any(code == grpc.StatusCode.UNAVAILABLE for code, _ in failures), outcomes
        # The space comes back: a tensor of the whole ring goes through every connection.
        whole = RING_BYTES // 4
        for stub in ours.stubs:
            response = stub.ModelInfer(_sleepy_request("after", whole, 0), timeout=RPC_TIMEOUT_S)
            _sleepy_output(response, whole)
        # Requests that gave up waiting for ring space never reached the engine: it saw
        # fewer than all (each front's ring holds one at a time, each runs >= 1 s).
        statistics = ours.stubs[0].ModelStatistics(
            pb.ModelStatisticsRequest(name="sleepy"), timeout=RPC_TIMEOUT_S
        )
        (model,) = statistics.model_stats
        reached = model.inference_stats.success.count + model.inference_stats.fail.count
        assert reached - len(ours.stubs) < requests, outcomes


# --- 6. a front process killed -----------------------------------------------------------


def _in_flight(
    server: ServerProcess, prefix: str, count: int, delay_ms: int, elements: int = 20_000
) -> tuple[ThreadPoolExecutor, list, Connections]:
    """``count`` sleepy requests, one per connection, each handled by a front once this
    returns."""
    connections = Connections(server.address, count)
    pool = ThreadPoolExecutor(count)
    futures = []
    for index, stub in enumerate(connections.stubs):
        request = _sleepy_request(f"{prefix}-{index}", elements, delay_ms)
        futures.append(
            pool.submit(_answer, functools.partial(stub.ModelInfer, request, timeout=RPC_TIMEOUT_S))
        )
    _wait_started(server, *(f"{prefix}-{index}" for index in range(count)))
    return pool, futures, connections


def _works(server: ServerProcess, prefix: str, count: int = CONNECTIONS) -> None:
    with Connections(server.address, count) as fresh:
        for index, stub in enumerate(fresh.stubs):
            response = stub.ModelInfer(
                _sleepy_request(f"{prefix}-{index}", 20_000, 0), timeout=RPC_TIMEOUT_S
            )
            _sleepy_output(response, 20_000)


def test_a_killed_front_process_is_restarted(launch: Launch, repository: Path) -> None:
    server = launch(repository, "--frontends", "2", "--frontend-ring-mib", "1")
    # Long enough that the victim's requests are still running when it dies.
    pool, futures, connections = _in_flight(server, "doomed", CONNECTIONS, 5000)
    with pool, connections:
        served = _served_by(server, "doomed")
        victim = "front-0" if "front-0" in served else "front-1"
        (pid,) = _pids(server)[victim]
        os.kill(pid, signal.SIGKILL)
        outcomes = [future.result(timeout=WAIT_S) for future in futures]
    for code, details in outcomes:
        if code == grpc.StatusCode.OK:
            _sleepy_output(details, 20_000)  # type: ignore[arg-type]
        else:
            assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), details
    assert any(code != grpc.StatusCode.OK for code, _ in outcomes)  # its requests died with it
    index = victim.split("-")[1]
    wait_for_log(server, f"front {index} exited", timeout_s=WAIT_S)
    wait_for_log(server, f"front {index} serving again (epoch 2)", timeout_s=WAIT_S)
    _works(server, "after-front-kill", 16)
    assert len(_pids(server)[victim]) == 2  # a new process took its place
    owner = server.process.pid
    wait_until(
        lambda: not _segments(owner, f"e1-f{index}-1-"), "old epoch's segments gone", server=server
    )
    assert _segments(owner, f"e1-f{index}-2-"), _segments(owner)
    assert server.stop() == 0, server.log_text()
    assert not _segments(owner)


# --- 7. the engine process killed --------------------------------------------------------


def _server_ready(stub: pb_grpc.GRPCInferenceServiceStub) -> bool:
    try:
        return stub.ServerReady(pb.ServerReadyRequest(), timeout=RPC_TIMEOUT_S).ready
    except grpc.RpcError:
        return False


def test_a_killed_engine_is_restarted(launch: Launch, repository: Path) -> None:
    server = launch(repository, "--frontends", "2", "--frontend-ring-mib", "1")
    owner = server.process.pid
    assert _segments(owner, "e1-")
    pool, futures, connections = _in_flight(server, "engine-doomed", CONNECTIONS, 20_000)
    with pool, connections:
        (engine_pid,) = _pids(server)["engine"]
        os.kill(engine_pid, signal.SIGKILL)
        outcomes = [future.result(timeout=WAIT_S) for future in futures]
        assert [code for code, _ in outcomes] == [grpc.StatusCode.UNAVAILABLE] * CONNECTIONS
        wait_until(
            lambda: not _server_ready(connections.stubs[0]),
            "not ready",
            server=server,
            timeout_s=WAIT_S,
        )
        wait_until(
            lambda: all(_server_ready(s) for s in connections.stubs),
            "ready",
            server=server,
            timeout_s=WAIT_S,
        )
    wait_for_log(server, "engine process serving again (generation 2)", timeout_s=WAIT_S)
    _works(server, "after-engine-kill", 16)
    assert not _segments(owner, "e1-")
    assert _segments(owner, "e2-")
    assert server.stop() == 0, server.log_text()
    assert not _segments(owner)


def test_a_stream_outlives_an_engine_restart(launch: Launch, demo_repository: Path) -> None:
    """The request running in the dead engine ends with an error on its stream; the
    stream itself stays open and serves the next request once the engine is back."""
    server = launch(demo_repository, "--frontends", "2")
    outgoing: queue.Queue[pb.ModelInferRequest | None] = queue.Queue()
    with Connections(server.address, 1) as connection, Connections(server.address) as others:
        stream = connection.next().ModelStreamInfer(iter(outgoing.get, None), timeout=RPC_TIMEOUT_S)
        outgoing.put(_repeat_request("long", list(range(100)), 100))  # 10 s of responses
        first = next(stream)
        assert (first.infer_response.id, first.error_message) == ("long", "")
        (engine_pid,) = _pids(server)["engine"]
        os.kill(engine_pid, signal.SIGKILL)
        error = next(message for message in stream if message.error_message)
        assert error.infer_response.id == "long"
        assert "engine process exited" in error.error_message
        wait_until(
            lambda: all(_server_ready(s) for s in others.stubs),
            "ready",
            server=server,
            timeout_s=WAIT_S,
        )
        outgoing.put(_repeat_request("after", [7, 8, 9], 0))
        answers = []
        for message in stream:
            assert message.error_message == "", message.error_message
            response = message.infer_response
            if response.id == "after":
                answers.append(np.frombuffer(response.raw_output_contents[0], "<i4").tolist())
            if len(answers) == 3:
                break
        assert answers == [[7], [8], [9]]
        outgoing.put(None)
    assert server.stop() == 0, server.log_text()


# --- 8. SIGTERM drains -------------------------------------------------------------------


def test_sigterm_drains_every_request_in_flight(launch: Launch, repository: Path) -> None:
    server = launch(repository, "--frontends", "2", "--frontend-ring-mib", "1")
    owner = server.process.pid
    pool, futures, connections = _in_flight(server, "drained", CONNECTIONS, 1500)
    with pool, connections:
        server.signal(signal.SIGTERM)
        outcomes = [future.result(timeout=WAIT_S) for future in futures]
    for code, details in outcomes:
        assert code == grpc.StatusCode.OK, details
        _sleepy_output(details, 20_000)  # type: ignore[arg-type]
    assert server.wait(WAIT_S) == 0, server.log_text()
    assert not _segments(owner)
    children = _pids(server)
    assert set(children) == {"front-0", "front-1", "engine"}
    for pids in children.values():
        for pid in pids:
            assert not _alive(pid), (pid, server.log_text())


# --- 10. model control across fronts -----------------------------------------------------


def test_model_control_is_seen_by_every_front(launch: Launch, demo_repository: Path) -> None:
    server = launch(demo_repository, "--frontends", "2", "--model-control-mode", "explicit")
    ready = pb.ModelReadyRequest(name="simple")
    with Connections(server.address, 12) as connections:
        first, *others = connections.stubs
        assert not any(stub.ModelReady(ready, timeout=RPC_TIMEOUT_S).ready for stub in others)
        first.RepositoryModelLoad(
            pb.RepositoryModelLoadRequest(model_name="simple"), timeout=RPC_TIMEOUT_S
        )
        assert all(stub.ModelReady(ready, timeout=RPC_TIMEOUT_S).ready for stub in others)
        first.RepositoryModelUnload(
            pb.RepositoryModelUnloadRequest(model_name="simple"), timeout=RPC_TIMEOUT_S
        )
        assert not any(stub.ModelReady(ready, timeout=RPC_TIMEOUT_S).ready for stub in others)
    assert server.stop() == 0, server.log_text()


# --- 11. refused flags -------------------------------------------------------------------


def test_a_unix_socket_is_refused_with_several_fronts(
    launch: Launch, demo_repository: Path
) -> None:
    socket = "/tmp/inferd-test-frontends.sock"
    server = launch(demo_repository, "--frontends", "2", "--unix-socket", socket, wait=False)
    assert server.wait(WAIT_S) != 0
    assert "--unix-socket serves from one" in server.log_text()


def test_a_port_another_server_serves_is_refused(launch: Launch, demo_repository: Path) -> None:
    """SO_REUSEPORT would let a second server share the port silently; it must fail."""
    first = launch(demo_repository, "--frontends", "2")
    port = first.address.rsplit(":", 1)[1]
    second = launch(demo_repository, "--frontends", "2", "--grpc-port", port, wait=False)
    assert second.wait(WAIT_S) != 0
    assert f"cannot listen on 127.0.0.1:{port}" in second.log_text()
    assert first.stop() == 0, first.log_text()


def test_rings_that_do_not_fit_in_dev_shm_are_refused_at_start(
    launch: Launch, demo_repository: Path
) -> None:
    too_big = str(2**30)  # MiB per ring: a petabyte in all
    server = launch(demo_repository, "--frontends", "2", "--frontend-ring-mib", too_big, wait=False)
    assert server.wait(WAIT_S) != 0
    assert "lower --frontend-ring-mib" in server.log_text()


# --- 12. client system shared memory across fronts ---------------------------------------


def _shm_request(request_id: str, region: str) -> pb.ModelInferRequest:
    """``simple``: both inputs and both outputs in one region (4 x 64 bytes)."""
    request = pb.ModelInferRequest(model_name="simple", id=request_id)
    for index, name in enumerate(("INPUT0", "INPUT1")):
        tensor = request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        tensor.parameters["shared_memory_region"].string_param = region
        tensor.parameters["shared_memory_offset"].int64_param = 64 * index
        tensor.parameters["shared_memory_byte_size"].int64_param = 64
    for index, name in enumerate(("OUTPUT0", "OUTPUT1")):
        output = request.outputs.add(name=name)
        output.parameters["shared_memory_region"].string_param = region
        output.parameters["shared_memory_offset"].int64_param = 128 + 64 * index
        output.parameters["shared_memory_byte_size"].int64_param = 64
    return request


def test_shared_memory_registered_through_one_front_serves_every_front(
    launch: Launch, demo_repository: Path
) -> None:
    server = launch(demo_repository, "--frontends", "2", "--allow-client-shm")
    key = f"/inferd-test-{uuid.uuid4().hex}"
    path = Path("/dev/shm") / key[1:]
    values = np.arange(16, dtype=np.int32)
    path.write_bytes(values.tobytes() + np.ones(16, np.int32).tobytes() + bytes(128))
    try:
        with Connections(server.address) as ours:
            register = pb.SystemSharedMemoryRegisterRequest(
                name="both", key=key, offset=0, byte_size=256
            )
            ours.stubs[0].SystemSharedMemoryRegister(register, timeout=RPC_TIMEOUT_S)
            for index, stub in enumerate(ours.stubs):  # both fronts, right after
                status = stub.SystemSharedMemoryStatus(
                    pb.SystemSharedMemoryStatusRequest(), timeout=RPC_TIMEOUT_S
                )
                assert set(status.regions) == {"both"}
                response = stub.ModelInfer(
                    _shm_request(f"shm-{index}", "both"), timeout=RPC_TIMEOUT_S
                )
                assert [bytes(raw) for raw in response.raw_output_contents] == [b"", b""]
                written = np.frombuffer(path.read_bytes()[128:], np.int32)
                assert written[:16].tolist() == (values + 1).tolist()
                assert written[16:].tolist() == (values - 1).tolist()
            assert _served_by(server, "shm-") == {"front-0", "front-1"}
            ours.stubs[1].SystemSharedMemoryUnregister(
                pb.SystemSharedMemoryUnregisterRequest(name="both"), timeout=RPC_TIMEOUT_S
            )
            for stub in ours.stubs:  # gone from every front once unregister returned
                code, details = _answer(
                    functools.partial(
                        stub.ModelInfer, _shm_request("gone", "both"), timeout=RPC_TIMEOUT_S
                    )
                )
                assert code == grpc.StatusCode.NOT_FOUND, (code, details)
    finally:
        path.unlink()
    assert server.stop() == 0, server.log_text()
