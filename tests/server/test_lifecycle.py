"""The server as a process: signals and draining, listeners, health, reflection, broken
models, keepalive and the RPCs inferd does not implement yet.

Each test that signals a server or needs its own flags starts one (``launch``); the
read-only ones share the session's ``demo_server`` / ``test_server``.

No verdict here depends on timing. Where a test needs requests to be in flight when it
signals the server, it waits until the server says so instead of sleeping: such servers
load a probe (``PROBE``) that logs each ModelInfer as its handler starts. Nothing else
would do: gRPC keeps no order between calls, not even on one connection, so an answer
to a later "marker" RPC does not mean earlier requests have arrived; and a request that
arrives after the drain begins is refused (UNAVAILABLE). ``test_drain_under_load.py``
drains a server with a closed loop of requests in flight. Waits (for log lines, exits,
answers) are bounded so that a broken server fails the test, not hangs it.
"""

from __future__ import annotations

import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from inferd.clients import Client
from inferd.protos import grpc_service_pb2 as pb
from inferd.protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.server_process import ServerProcess, probe_env
from tests.support.waiting import wait_for_log

INFERENCE_SERVICE = "inference.GRPCInferenceService"
HEALTH_SERVICE = "grpc.health.v1.Health"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

# Bounds on waits; a healthy server needs a small fraction of each.
RPC_TIMEOUT_S = 60.0
EXIT_TIMEOUT_S = 60.0
# The `slow` model runs at roughly 80 us per iteration (slower on a loaded machine).
SHORT_ITERATIONS = 8_000  # ~0.6 s
ENDLESS_ITERATIONS = 10_000_000  # ~15 min: never finishes within a test

Launch = Callable[..., ServerProcess]


@pytest.fixture
def launch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launch]:
    """Like conftest's ``start_server``, plus ``probe=True`` (load ``PROBE``)."""
    launched: list[ServerProcess] = []

    def start(
        repository: Path | None, *args: str, wait: bool = True, probe: bool = False
    ) -> ServerProcess:
        env = probe_env(tmp_path_factory.mktemp("probe")) if probe else None
        server = ServerProcess(repository, *args, env=env)
        launched.append(server)
        return server.wait_ready() if wait else server

    yield start
    for server in launched:
        server.kill()


def _slow_request(request_id: str, value: float, iterations: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="slow", id=request_id)
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1])
    request.inputs.add(name="ITERATIONS", datatype="INT64", shape=[1])
    request.raw_input_contents.extend(
        [
            np.array([value], "<f4").tobytes(),
            np.array([iterations], "<i8").tobytes(),
        ]
    )
    return request


def _output0(response: pb.ModelInferResponse) -> list[float]:
    assert [output.name for output in response.outputs] == ["OUTPUT0"]
    assert response.outputs[0].datatype == "FP32"
    return np.frombuffer(response.raw_output_contents[0], "<f4").tolist()


def _open(address: str) -> tuple[grpc.Channel, pb_grpc.GRPCInferenceServiceStub]:
    channel = grpc.insecure_channel(address)
    return channel, pb_grpc.GRPCInferenceServiceStub(channel)


def _wait_until_started(server: ServerProcess, *request_ids: str) -> None:
    """Returns once the (probed) server runs a handler for each of these requests."""
    for request_id in request_ids:
        wait_for_log(server, f"probe: ModelInfer {request_id} started", EXIT_TIMEOUT_S)


def _exit_code(server: ServerProcess, timeout: float = EXIT_TIMEOUT_S) -> int:
    try:
        return server.wait(timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"inferd did not exit within {timeout}s:\n{server.log_text()}")


def _port(address: str) -> str:
    return address.rsplit(":", 1)[1]


# --- SIGTERM: drain ---------------------------------------------------------------------


def test_sigterm_drains_in_flight_requests_and_exits_zero(
    launch: Launch, test_repository: Path
) -> None:
    server = launch(test_repository, "--grace-period", "60", probe=True)
    channel, stub = _open(server.address)
    with channel:
        health = health_pb2_grpc.HealthStub(channel)
        # A health watch shows the drain from outside: it is the one RPC that still
        # answers after the signal (new RPCs are refused while draining).
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=RPC_TIMEOUT_S)
        assert next(watch).status == SERVING

        # The model has one instance: the first request runs, the rest queue behind it.
        values = {"r0": 0.25, "r1": 1.5, "r2": -2.75, "r3": 1000.125}
        calls = {
            request_id: stub.ModelInfer.future(
                _slow_request(request_id, value, SHORT_ITERATIONS), timeout=RPC_TIMEOUT_S
            )
            for request_id, value in values.items()
        }
        _wait_until_started(server, *values)
        pending_at_signal = [request_id for request_id, call in calls.items() if not call.done()]
        server.signal(signal.SIGTERM)

        assert next(watch).status == NOT_SERVING
        # Drain waits for every RPC, a watch included; done with it, let it go.
        watch.cancel()

        if not pending_at_signal:
            pytest.skip("every request finished before SIGTERM: nothing was left to drain")
        for request_id, call in calls.items():
            response = call.result(timeout=RPC_TIMEOUT_S)
            assert response.id == request_id
            assert _output0(response) == [values[request_id]]

    assert _exit_code(server) == 0, server.log_text()
    log = server.log_text()
    assert "SIGTERM: draining" in log
    assert log.index("SIGTERM: draining") < log.index("stopped")


def test_while_draining_readiness_says_no_and_new_inferences_are_refused(
    launch: Launch, test_repository: Path
) -> None:
    server = launch(test_repository, "--grace-period", "60", probe=True)
    channel, stub = _open(server.address)
    with channel:
        running = stub.ModelInfer.future(
            _slow_request("endless", 3.5, ENDLESS_ITERATIONS), timeout=RPC_TIMEOUT_S
        )
        _wait_until_started(server, "endless")
        server.signal(signal.SIGTERM)
        wait_for_log(server, "SIGTERM: draining", EXIT_TIMEOUT_S)

        # The server still answers while its last request runs: not ready, health
        # NOT_SERVING, and an inference it will not run is refused with UNAVAILABLE
        # (retryable elsewhere), never CANCELLED.
        with Client(server.address, timeout=RPC_TIMEOUT_S) as late:
            assert not late.is_server_ready()
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(_slow_request("late", 1.0, 1), timeout=RPC_TIMEOUT_S)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in str(refused.value.details())
        health = health_pb2_grpc.HealthStub(channel)
        check = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=RPC_TIMEOUT_S)
        assert check.status == NOT_SERVING
        assert not running.done()

        server.signal(signal.SIGTERM)
        assert _exit_code(server) != 0
        with pytest.raises(grpc.RpcError):
            running.result(timeout=RPC_TIMEOUT_S)


def test_second_signal_exits_at_once(launch: Launch, test_repository: Path) -> None:
    server = launch(test_repository, "--grace-period", "60", probe=True)
    channel, stub = _open(server.address)
    with channel:
        endless = stub.ModelInfer.future(
            _slow_request("endless", 1.0, ENDLESS_ITERATIONS), timeout=RPC_TIMEOUT_S
        )
        _wait_until_started(server, "endless")
        server.signal(signal.SIGTERM)
        # Two identical pending signals may merge into one: send the second only after
        # the first has been handled.
        wait_for_log(server, "SIGTERM: draining", EXIT_TIMEOUT_S)
        assert server.process.poll() is None  # draining: waiting for the endless request

        server.signal(signal.SIGINT)
        # Far sooner than the 60 s grace period or the request's end.
        code = _exit_code(server, timeout=30)
        assert code != 0, server.log_text()
        assert "second SIGINT: exiting now" in server.log_text()

        # The client learns the server went away; it is not left waiting.
        with pytest.raises(grpc.RpcError) as failed:
            endless.result(timeout=30)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE


def test_grace_period_cuts_off_requests_that_run_too_long(
    launch: Launch, test_repository: Path
) -> None:
    server = launch(test_repository, "--grace-period", "1", probe=True)
    channel, stub = _open(server.address)
    with channel:
        endless = stub.ModelInfer.future(
            _slow_request("endless", 1.0, ENDLESS_ITERATIONS), timeout=RPC_TIMEOUT_S
        )
        _wait_until_started(server, "endless")
        server.signal(signal.SIGTERM)

        # An error once the grace period is over, not a wait for the model to finish.
        with pytest.raises(grpc.RpcError) as failed:
            endless.result(timeout=30)
        assert failed.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)


def test_grace_period_bounds_the_exit(launch: Launch, test_repository: Path) -> None:
    server = launch(test_repository, "--grace-period", "1", probe=True)
    channel, stub = _open(server.address)
    with channel:
        endless = stub.ModelInfer.future(
            _slow_request("endless", 1.0, ENDLESS_ITERATIONS), timeout=RPC_TIMEOUT_S
        )
        _wait_until_started(server, "endless")
        server.signal(signal.SIGTERM)
        # 1 s of grace plus unloading: 10 s is generous, the request needs ~15 min.
        assert _exit_code(server, timeout=10) == 0, server.log_text()
        with pytest.raises(grpc.RpcError):
            endless.result(timeout=30)


def test_open_health_watch_does_not_hold_up_shutdown(launch: Launch, demo_repository: Path) -> None:
    server = launch(demo_repository, "--grace-period", "60")
    with grpc.insecure_channel(server.address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=INFERENCE_SERVICE), timeout=RPC_TIMEOUT_S
        )
        assert next(watch).status == SERVING
        server.signal(signal.SIGTERM)
        assert next(watch).status == NOT_SERVING
        # Nothing else is in flight: the server should be gone in well under a second.
        assert _exit_code(server, timeout=10) == 0


# --- listeners ------------------------------------------------------------------------


@pytest.fixture
def socket_path() -> Iterator[Path]:
    # Not tmp_path: a Unix socket's path must fit in ~107 bytes, pytest's may not.
    with tempfile.TemporaryDirectory(prefix="inferd-") as directory:
        yield Path(directory) / "inferd.sock"


def test_unix_domain_socket(launch: Launch, demo_repository: Path, socket_path: Path) -> None:
    path = socket_path
    # --grpc-port -1: no TCP listener at all, so every answer below came over the socket.
    server = launch(demo_repository, "--grpc-port", "-1", "--unix-socket", str(path))
    assert server.address == f"unix:{path}"
    assert path.is_socket()

    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 3, dtype=np.int32)
    with Client(f"unix:{path}", timeout=RPC_TIMEOUT_S) as client:
        assert client.is_server_ready()
        outputs = client.infer("simple", {"INPUT0": a, "INPUT1": b})
    np.testing.assert_array_equal(outputs["OUTPUT0"], a + b)
    np.testing.assert_array_equal(outputs["OUTPUT1"], a - b)

    with grpc.insecure_channel(f"unix:{path}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerReady(pb.ServerReadyRequest(), timeout=RPC_TIMEOUT_S).ready
        request = pb.ModelInferRequest(model_name="simple")
        for name, array in (("INPUT0", a), ("INPUT1", b)):
            request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
            request.raw_input_contents.append(array.astype("<i4").tobytes())
        response = stub.ModelInfer(request, timeout=RPC_TIMEOUT_S)
    assert [o.name for o in response.outputs] == ["OUTPUT0", "OUTPUT1"]
    np.testing.assert_array_equal(np.frombuffer(response.raw_output_contents[0], "<i4"), a[0] + 3)

    assert server.stop() == 0, server.log_text()


def test_busy_port_fails_loudly_and_the_first_server_keeps_serving(
    launch: Launch, demo_repository: Path
) -> None:
    first = launch(demo_repository)
    port = _port(first.address)

    second = launch(demo_repository, "--grpc-port", port, wait=False)
    code = _exit_code(second)
    assert code != 0
    log = second.log_text()
    assert f"cannot listen on 127.0.0.1:{port}" in log, log
    assert "ready:" not in log

    with Client(first.address, timeout=RPC_TIMEOUT_S) as client:
        assert client.is_server_ready()
        ones = np.ones((1, 16), np.int32)
        outputs = client.infer("simple", {"INPUT0": ones, "INPUT1": ones})
    np.testing.assert_array_equal(outputs["OUTPUT0"], 2 * ones)
    assert first.process.poll() is None


def test_reuse_port_lets_two_servers_share_a_port(launch: Launch, demo_repository: Path) -> None:
    first = launch(demo_repository, "--reuse-port")
    second = launch(demo_repository, "--grpc-port", _port(first.address), "--reuse-port")
    assert second.address == first.address

    with Client(first.address, timeout=RPC_TIMEOUT_S) as client:
        assert client.is_server_ready()
    assert first.process.poll() is None and second.process.poll() is None
    assert second.stop() == 0, second.log_text()
    assert first.stop() == 0, first.log_text()


# --- health and reflection ------------------------------------------------------------
# The clients here are gRPC's own (grpcio-health-checking's and grpcio-reflection's
# stubs, in protobuf's default pool), not inferd's: they prove inferd's stubs and
# servicers speak the same protocol.

REFLECTION_V1ALPHA_SERVICE = "grpc.reflection.v1alpha.ServerReflection"
REFLECTION_V1_SERVICE = "grpc.reflection.v1.ServerReflection"


@pytest.mark.parametrize("service", ["", INFERENCE_SERVICE])
def test_health_check_is_serving(demo_server: ServerProcess, service: str) -> None:
    with grpc.insecure_channel(demo_server.address) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT_S
        )
    assert response.status == SERVING


def test_health_check_of_unknown_service_is_not_found(demo_server: ServerProcess) -> None:
    with (
        grpc.insecure_channel(demo_server.address) as channel,
        pytest.raises(grpc.RpcError) as failed,
    ):
        health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=RPC_TIMEOUT_S
        )
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_watch_of_unknown_service_says_service_unknown(
    demo_server: ServerProcess,
) -> None:
    with grpc.insecure_channel(demo_server.address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=RPC_TIMEOUT_S
        )
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        watch.cancel()


def _reflect(
    address: str, *requests: reflection_pb2.ServerReflectionRequest
) -> list[reflection_pb2.ServerReflectionResponse]:
    with grpc.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        return list(stub.ServerReflectionInfo(iter(requests), timeout=RPC_TIMEOUT_S))


def test_reflection_lists_the_services(demo_server: ServerProcess) -> None:
    (response,) = _reflect(
        demo_server.address, reflection_pb2.ServerReflectionRequest(list_services="")
    )
    services = {service.name for service in response.list_services_response.service}
    assert services == {
        INFERENCE_SERVICE,
        HEALTH_SERVICE,
        REFLECTION_V1ALPHA_SERVICE,
        REFLECTION_V1_SERVICE,
    }


def test_reflection_describes_the_inference_service(demo_server: ServerProcess) -> None:
    """What grpcurl does: fetch the service's file and its imports, then build a pool."""
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    wanted = [reflection_pb2.ServerReflectionRequest(file_containing_symbol=INFERENCE_SERVICE)]
    while wanted:
        for response in _reflect(demo_server.address, *wanted):
            assert response.HasField("file_descriptor_response"), response
            for serialized in response.file_descriptor_response.file_descriptor_proto:
                file = descriptor_pb2.FileDescriptorProto.FromString(serialized)
                files.setdefault(file.name, file)
        missing = {d for file in files.values() for d in file.dependency if d not in files}
        wanted = [reflection_pb2.ServerReflectionRequest(file_by_filename=d) for d in missing]
    assert {"grpc_service.proto", "model_config.proto"} <= set(files)

    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(name: str) -> None:
        if name not in added:
            for dependency in files[name].dependency:
                add(dependency)
            pool.Add(files[name])
            added.add(name)

    for name in files:
        add(name)

    service = pool.FindServiceByName(INFERENCE_SERVICE)
    methods = {method.name: method for method in service.methods}
    assert {"ServerLive", "ServerReady", "ModelMetadata", "ModelInfer"} <= set(methods)
    assert methods["ModelInfer"].input_type.full_name == "inference.ModelInferRequest"
    assert methods["ModelStreamInfer"].client_streaming
    assert pool.FindMessageTypeByName("inference.ModelConfig") is not None


def test_reflection_sends_a_file_with_its_imports(demo_server: ServerProcess) -> None:
    # One answer carries everything needed to build the file: itself first, then imports.
    (response,) = _reflect(
        demo_server.address,
        reflection_pb2.ServerReflectionRequest(file_by_filename="grpc_service.proto"),
    )
    names = [
        descriptor_pb2.FileDescriptorProto.FromString(serialized).name
        for serialized in response.file_descriptor_response.file_descriptor_proto
    ]
    assert names == ["grpc_service.proto", "model_config.proto"]


def test_reflection_descriptor_database_finds_a_method_input(demo_server: ServerProcess) -> None:
    """grpcio-reflection's own client: a descriptor pool that asks the server (v1alpha)."""
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    with grpc.insecure_channel(demo_server.address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        assert INFERENCE_SERVICE in set(database.get_services())
        pool = descriptor_pool.DescriptorPool(database)
        method = pool.FindMethodByName(f"{INFERENCE_SERVICE}.ModelInfer")
        input_type = method.input_type
        assert input_type.full_name == "inference.ModelInferRequest"
        assert input_type.fields_by_name["raw_input_contents"].number == 7
        health = pool.FindServiceByName(HEALTH_SERVICE)
        assert health.methods_by_name["Watch"].output_type.name == "HealthCheckResponse"


def test_reflection_answers_what_it_cannot_with_errors_and_goes_on(
    demo_server: ServerProcess,
) -> None:
    request = reflection_pb2.ServerReflectionRequest
    requests = [
        request(file_by_filename="no_such.proto"),
        request(file_containing_symbol="no.such.Symbol"),
        request(file_containing_symbol=f"{INFERENCE_SERVICE}.NoSuchMethod"),
        request(
            file_containing_extension=reflection_pb2.ExtensionRequest(
                containing_type="inference.ModelInferRequest", extension_number=100
            )
        ),
        request(all_extension_numbers_of_type="no.such.Message"),
        request(),
        # After the errors, answers again: a method's file, and a type without extensions.
        request(file_containing_symbol=f"{INFERENCE_SERVICE}.ModelInfer"),
        request(all_extension_numbers_of_type="inference.ModelInferRequest"),
    ]
    responses = _reflect(demo_server.address, *requests)
    assert [response.original_request for response in responses] == requests
    codes = [response.error_response.error_code for response in responses[:6]]
    not_found, invalid = (
        grpc.StatusCode.NOT_FOUND.value[0],
        grpc.StatusCode.INVALID_ARGUMENT.value[0],
    )
    assert codes == [not_found] * 5 + [invalid]
    assert all(response.HasField("error_response") for response in responses[:6])
    assert "no_such.proto" in responses[0].error_response.error_message

    method_file = responses[6].file_descriptor_response.file_descriptor_proto[0]
    assert descriptor_pb2.FileDescriptorProto.FromString(method_file).name == "grpc_service.proto"
    numbers = responses[7].all_extension_numbers_response
    assert numbers.base_type_name == "inference.ModelInferRequest"
    assert list(numbers.extension_number) == []


def _v1_reflection_messages() -> tuple[Any, Any]:
    """``grpc.reflection.v1``'s request and response types, built without inferd's stubs.

    grpcio-reflection ships only v1alpha's stubs, and v1 is the same protocol in another
    package: renaming grpc_reflection's v1alpha file gives v1's messages.
    """
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    old, new = ".grpc.reflection.v1alpha.", ".grpc.reflection.v1."
    proto.name = "test_grpc_reflection_v1.proto"
    proto.package = "grpc.reflection.v1"
    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):
                field.type_name = field.type_name.replace(old, new)
    del proto.service[:]  # called by its path below
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    request, response = (
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"grpc.reflection.v1.{name}"))
        for name in ("ServerReflectionRequest", "ServerReflectionResponse")
    )
    return request, response


def test_reflection_v1_answers_plain_stubs(demo_server: ServerProcess) -> None:
    request_type, response_type = _v1_reflection_messages()
    requests = [
        request_type(list_services=""),
        request_type(file_containing_symbol=f"{INFERENCE_SERVICE}.ModelInfer"),
        request_type(file_by_filename="no_such.proto"),
    ]
    with grpc.insecure_channel(demo_server.address) as channel:
        call = channel.stream_stream(
            f"/{REFLECTION_V1_SERVICE}/ServerReflectionInfo",
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )
        listed, described, missing = call(iter(requests), timeout=RPC_TIMEOUT_S)

    assert {service.name for service in listed.list_services_response.service} >= {
        INFERENCE_SERVICE,
        REFLECTION_V1_SERVICE,
    }
    files = described.file_descriptor_response.file_descriptor_proto
    names = [descriptor_pb2.FileDescriptorProto.FromString(file).name for file in files]
    assert names == ["grpc_service.proto", "model_config.proto"]
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    assert missing.original_request == requests[2]


# --- models that fail to load ----------------------------------------------------------


BROKEN_MODELS = {
    # model -> words its reason must contain
    "broken_config": "config.pbtxt",
    "broken_onnx": "model.onnx",
    "broken_mismatch": "INPUT0",
}


def test_broken_models_are_listed_unavailable_and_the_rest_serve(
    test_server: ServerProcess,
) -> None:
    with Client(test_server.address, timeout=RPC_TIMEOUT_S) as client:
        index = client.repository_index()
        entries = {entry.name: entry for entry in index}
        for model, words in BROKEN_MODELS.items():
            entry = entries[model]
            assert entry.state == "UNAVAILABLE", entry
            assert words in entry.reason, entry
            assert not client.is_model_ready(model)
        assert not {e.name for e in client.repository_index(ready=True)} & set(BROKEN_MODELS)

        assert entries["identity_fp32"].state == "READY"
        assert client.is_model_ready("identity_fp32")
        data = np.array([[1.5, -2.0, 3.25]], np.float32)
        np.testing.assert_array_equal(
            client.infer("identity_fp32", {"INPUT0": data})["OUTPUT0"], data
        )
        assert client.is_server_ready()

    log = test_server.log_text()
    for model in BROKEN_MODELS:
        assert f"failed to load model '{model}'" in log
    assert "3 failed to load" in log


# --- keepalive ----------------------------------------------------------------------------


def test_keepalive_pings_without_calls_are_not_punished(demo_server: ServerProcess) -> None:
    """tritonclient's KeepAliveOptions set these; a server that counts the pings as abuse
    answers GOAWAY(ENHANCE_YOUR_CALM, "too_many_pings") after a few, and the channel drops
    its connection (READY -> IDLE) without any call failing."""
    options = [
        ("grpc.keepalive_time_ms", 1000),
        ("grpc.keepalive_timeout_ms", 20000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    states: list[grpc.ChannelConnectivity] = []
    record = states.append
    with grpc.insecure_channel(demo_server.address, options=options) as channel:
        channel.subscribe(record, try_to_connect=True)
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=RPC_TIMEOUT_S).live
        # Idle, pinged every second: a default gRPC server strikes out in about 3 s.
        time.sleep(4)
        connected_after_idle = list(states)
        assert stub.ServerReady(pb.ServerReadyRequest(), timeout=RPC_TIMEOUT_S).ready
        channel.unsubscribe(record)

    ready = connected_after_idle.index(grpc.ChannelConnectivity.READY)
    assert connected_after_idle[ready:] == [grpc.ChannelConnectivity.READY], (
        f"the connection was dropped while idle: {connected_after_idle}"
    )


# --- RPCs inferd does not implement yet ---------------------------------------------------


UNARY_UNIMPLEMENTED = {
    "LogSettings": pb.LogSettingsRequest(),
}


@pytest.mark.parametrize("rpc", sorted(UNARY_UNIMPLEMENTED))
def test_unimplemented_rpc_says_so(demo_server: ServerProcess, rpc: str) -> None:
    with grpc.insecure_channel(demo_server.address) as channel:
        method = getattr(pb_grpc.GRPCInferenceServiceStub(channel), rpc)
        with pytest.raises(grpc.RpcError) as failed:
            method(UNARY_UNIMPLEMENTED[rpc], timeout=RPC_TIMEOUT_S)
    assert failed.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert f"inferd does not implement {rpc} yet" in (failed.value.details() or "")


def test_model_stream_infer_with_generated_stubs(demo_server: ServerProcess) -> None:
    """Plain generated stubs: an error rides in error_message with the request's id, the
    next request is answered, and the call ends OK after the client half-closes."""
    bad = pb.ModelInferRequest(model_name="simple", id="bad")
    good = pb.ModelInferRequest(model_name="simple", id="good")
    for name in ("INPUT0", "INPUT1"):
        good.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        good.raw_input_contents.append(bytes(64))
    with grpc.insecure_channel(demo_server.address) as channel:
        stream = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(
            iter([bad, good]), timeout=RPC_TIMEOUT_S
        )
        responses = list(stream)
        assert stream.code() == grpc.StatusCode.OK
    assert len(responses) == 2
    by_id = {response.infer_response.id: response for response in responses}
    assert "expected 2 inputs but got 0 inputs" in by_id["bad"].error_message
    answer = by_id["good"]
    assert answer.error_message == ""
    assert answer.infer_response.parameters["triton_final_response"].bool_param
    assert [output.name for output in answer.infer_response.outputs] == ["OUTPUT0", "OUTPUT1"]


def test_unimplemented_rpc_reaches_tritonclient_as_an_error(demo_server: ServerProcess) -> None:
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(demo_server.address)
    try:
        with pytest.raises(InferenceServerException) as failed:
            client.get_log_settings()
    finally:
        client.close()
    assert "UNIMPLEMENTED" in str(failed.value.status())
    assert "inferd does not implement LogSettings yet" in failed.value.message()
