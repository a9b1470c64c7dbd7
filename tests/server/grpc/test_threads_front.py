"""The threads front (``--grpc-front threads``, the one-process default) over real
loopback, with Triton's client: what is particular to it.

ModelInfer runs on grpc's handler threads; every other RPC goes through the bridge to
the asyncio servicers. The rest of the suite's server processes run this front too; the
shared-memory suite and the drain under load also run the asyncio front.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tritongrpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.utils import InferenceServerException

from inferd.protos import grpc_service_pb2 as pb
from inferd.protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.server_process import ServerProcess, probe_env, serve
from tests.support.waiting import wait_for_log

TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def server(test_repository: Path) -> Iterator[ServerProcess]:
    yield from serve(test_repository, "--grpc-front", "threads", "--grpc-threads", "4")


@pytest.fixture(scope="module")
def demo(demo_repository: Path) -> Iterator[ServerProcess]:
    yield from serve(demo_repository, "--grpc-front", "threads")


@pytest.fixture
def client(server: ServerProcess) -> Iterator[tritongrpc.InferenceServerClient]:
    with tritongrpc.InferenceServerClient(server.address) as client:
        yield client


def _identity_input(values: np.ndarray, datatype: str) -> tritongrpc.InferInput:
    tensor = tritongrpc.InferInput("INPUT0", list(values.shape), datatype)
    tensor.set_data_from_numpy(values)
    return tensor


@pytest.mark.parametrize(
    ("model", "dtype", "datatype"),
    [
        ("identity_fp32", np.float32, "FP32"),
        ("identity_int64", np.int64, "INT64"),
        ("identity_uint16", np.uint16, "UINT16"),
    ],
)
def test_infer_round_trips_and_is_counted(
    client: tritongrpc.InferenceServerClient, model: str, dtype: type, datatype: str
) -> None:
    before = client.get_inference_statistics(model).model_stats[0].inference_stats.success.count
    values: np.ndarray = np.arange(12, dtype=dtype).reshape(3, 4)
    result = client.infer(model, [_identity_input(values, datatype)], request_id="r1")
    assert result.get_response().id == "r1"
    assert result.as_numpy("OUTPUT0").tolist() == values.tolist()
    after = client.get_inference_statistics(model).model_stats[0].inference_stats.success.count
    assert after == before + 1


def test_errors_carry_triton_status_and_words_and_harm_nothing(
    client: tritongrpc.InferenceServerClient,
) -> None:
    values = np.zeros((1, 4), dtype=np.int32)
    with pytest.raises(InferenceServerException) as unknown:
        client.infer("no_such_model", [_identity_input(values, "INT32")])
    assert unknown.value.status() == "StatusCode.NOT_FOUND"
    assert "Request for unknown model: 'no_such_model' is not found" in unknown.value.message()
    with pytest.raises(InferenceServerException) as wrong:
        client.infer("identity_fp32", [_identity_input(values, "INT32")])
    assert wrong.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "data-type is 'INT32', but model 'identity_fp32' expects 'FP32'" in (
        wrong.value.message()
    )
    good = np.ones((1, 4), dtype=np.float32)
    result = client.infer("identity_fp32", [_identity_input(good, "FP32")])
    assert result.as_numpy("OUTPUT0").tolist() == good.tolist()


def test_metadata_health_and_reflection_go_through_the_loop(server: ServerProcess) -> None:
    with tritongrpc.InferenceServerClient(server.address) as client:
        assert client.is_server_live() and client.is_server_ready()
        assert client.get_model_metadata("identity_fp32").name == "identity_fp32"
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        check = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT_S)
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=TIMEOUT_S
        )
        names = {service.name for service in next(answers).list_services_response.service}
        assert "inference.GRPCInferenceService" in names


def test_a_stream_of_a_decoupled_model_answers_every_response(demo: ServerProcess) -> None:
    responses: queue.Queue[tuple[object, object]] = queue.Queue()
    with tritongrpc.InferenceServerClient(demo.address) as client:
        client.start_stream(callback=lambda result, error: responses.put((result, error)))
        arrays = {
            "IN": np.array([4, 5, 6], dtype=np.int32),
            "DELAY": np.zeros(3, dtype=np.uint32),
            "WAIT": np.zeros(1, dtype=np.uint32),
        }
        inputs = []
        for name, array in arrays.items():
            tensor = tritongrpc.InferInput(
                name, list(array.shape), "INT32" if name == "IN" else "UINT32"
            )
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        client.async_stream_infer("repeat_int32", inputs, request_id="s1")
        seen = []
        for _ in range(3):
            result, error = responses.get(timeout=TIMEOUT_S)
            assert error is None, error
            seen.append(int(result.as_numpy("OUT")[0]))  # type: ignore[attr-defined]
        client.stop_stream()
    assert seen == [4, 5, 6]


def _slow(request_id: str, iterations: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="slow", id=request_id)
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1])
    request.inputs.add(name="ITERATIONS", datatype="INT64", shape=[1])
    request.raw_input_contents.append(np.array([1.5], dtype=np.float32).tobytes())
    request.raw_input_contents.append(np.array([iterations], dtype=np.int64).tobytes())
    return request


def test_a_deadline_is_kept_and_cancelled_calls_leave_the_server_serving(
    test_repository: Path, tmp_path: Path
) -> None:
    # The probe logs each ModelInfer as its handler starts: "long" then holds the model's
    # one instance (over a second: 20,000 iterations at ~80 us), so requests sent after
    # that wait in the queue, and one with a 0.2 s deadline expires there.
    server = ServerProcess(
        test_repository, "--grpc-front", "threads", env=probe_env(tmp_path)
    ).wait_ready()
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            running = stub.ModelInfer.future(_slow("long", 20_000), timeout=TIMEOUT_S)
            wait_for_log(server, "probe: ModelInfer long started", TIMEOUT_S)
            with pytest.raises(grpc.RpcError) as late:
                stub.ModelInfer(_slow("short", 1), timeout=0.2)
            assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            cancelled = stub.ModelInfer.future(_slow("dropped", 1), timeout=TIMEOUT_S)
            cancelled.cancel()
            assert running.result(timeout=TIMEOUT_S).id == "long"
            assert stub.ModelInfer(_slow("after", 1), timeout=TIMEOUT_S).id == "after"
    finally:
        server.kill()


def test_front_processes_take_the_asyncio_front(
    start_server: object, demo_repository: Path
) -> None:
    server = start_server(  # type: ignore[operator]
        demo_repository, "--frontends", "2", "--grpc-front", "threads", wait=False
    )
    assert server.wait(timeout=TIMEOUT_S) != 0
    assert "with --frontends N use --grpc-front asyncio" in server.log_text()
