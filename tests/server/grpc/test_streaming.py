"""ModelStreamInfer through tritonclient (its threaded ``start_stream`` and its aio
``stream_infer``) against a real server on the demo repository, including the decoupled
Python model ``repeat_int32``.

No verdict depends on timing: waits are bounded, and the one check on DELAY is a lower
bound (responses cannot arrive before the model has slept).
"""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from tests.support.server_process import ServerProcess

WAIT_S = 30.0


@dataclass
class Received:
    request_id: str
    outputs: dict[str, np.ndarray]
    final: bool
    error: str | None = None


class Collector:
    """tritonclient's stream callback, into a queue the test reads with a bound."""

    def __init__(self) -> None:
        self.responses: queue.Queue[Received] = queue.Queue()

    def __call__(self, result: grpcclient.InferResult | None, error: object | None) -> None:
        if error is not None:
            self.responses.put(Received("", {}, True, str(error)))
            return
        assert result is not None
        response = result.get_response()
        outputs = {output.name: result.as_numpy(output.name) for output in response.outputs}
        final = response.parameters["triton_final_response"].bool_param
        self.responses.put(Received(response.id, outputs, final))

    def take(self, count: int) -> list[Received]:
        return [self.responses.get(timeout=WAIT_S) for _ in range(count)]


@pytest.fixture
def client(demo_server: ServerProcess) -> Iterator[grpcclient.InferenceServerClient]:
    connected = grpcclient.InferenceServerClient(demo_server.address)
    yield connected
    connected.close()


def _simple_inputs(value: int) -> list[grpcclient.InferInput]:
    data = np.full((1, 16), value, dtype=np.int32)
    inputs = [
        grpcclient.InferInput("INPUT0", [1, 16], "INT32"),
        grpcclient.InferInput("INPUT1", [1, 16], "INT32"),
    ]
    inputs[0].set_data_from_numpy(data)
    inputs[1].set_data_from_numpy(np.ones_like(data))
    return inputs


def _repeat_inputs(values: list[int], delays_ms: list[int], wait_ms: int = 0):
    arrays = {
        "IN": np.array(values, dtype=np.int32),
        "DELAY": np.array(delays_ms, dtype=np.uint32),
        "WAIT": np.array([wait_ms], dtype=np.uint32),
    }
    inputs = []
    for name, array in arrays.items():
        tensor = grpcclient.InferInput(
            name, list(array.shape), "INT32" if name == "IN" else "UINT32"
        )
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def test_interleaved_requests_come_back_by_id(client: grpcclient.InferenceServerClient) -> None:
    collector = Collector()
    client.start_stream(callback=collector)
    try:
        client.async_stream_infer(
            "repeat_int32", _repeat_inputs([7, 8, 9], [20, 20, 20]), request_id="repeat"
        )
        for value in range(5):
            client.async_stream_infer("simple", _simple_inputs(value), request_id=f"simple-{value}")
        received = collector.take(5 + 3)
    finally:
        client.stop_stream()
    by_id: dict[str, list[Received]] = {}
    for response in received:
        by_id.setdefault(response.request_id, []).append(response)
    for value in range(5):
        (answer,) = by_id[f"simple-{value}"]
        assert answer.final
        np.testing.assert_array_equal(answer.outputs["OUTPUT0"], np.full((1, 16), value + 1))
    repeats = by_id["repeat"]
    assert [r.outputs["OUT"].tolist() for r in repeats] == [[7], [8], [9]]
    assert [r.outputs["IDX"].tolist() for r in repeats] == [[0], [1], [2]]


def test_repeat_int32_sends_one_response_per_element_then_the_final_flag(
    client: grpcclient.InferenceServerClient,
) -> None:
    collector = Collector()
    delays = [30, 30, 30, 30]
    client.start_stream(callback=collector)
    started = time.monotonic()
    try:
        client.async_stream_infer(
            "repeat_int32",
            _repeat_inputs([4, 3, 2, 1], delays),
            request_id="r",
            enable_empty_final_response=True,
        )
        received = collector.take(5)
    finally:
        client.stop_stream()
    elapsed = time.monotonic() - started
    assert [r.final for r in received] == [False, False, False, False, True]
    assert [r.outputs.get("OUT", np.array([])).tolist() for r in received] == [
        [4], [3], [2], [1], [],
    ]  # fmt: skip
    assert [r.outputs["IDX"].tolist() for r in received[:4]] == [[0], [1], [2], [3]]
    assert received[-1].outputs == {}  # the empty final response carries only the flag
    assert elapsed >= sum(delays) / 1000  # each response waited its DELAY


def test_only_the_requested_outputs_are_returned(client: grpcclient.InferenceServerClient) -> None:
    collector = Collector()
    client.start_stream(callback=collector)
    try:
        client.async_stream_infer(
            "repeat_int32",
            _repeat_inputs([5, 6], [0, 0]),
            outputs=[grpcclient.InferRequestedOutput("IDX")],
        )
        received = collector.take(2)
    finally:
        client.stop_stream()
    assert [sorted(r.outputs) for r in received] == [["IDX"], ["IDX"]]


def test_an_error_goes_in_the_stream_and_the_stream_goes_on(
    client: grpcclient.InferenceServerClient,
) -> None:
    collector = Collector()
    client.start_stream(callback=collector)
    try:
        bad = [grpcclient.InferInput("INPUT0", [1, 3], "INT32")]
        bad[0].set_data_from_numpy(np.zeros((1, 3), dtype=np.int32))
        client.async_stream_infer("simple", bad, request_id="bad")
        (error,) = collector.take(1)
        client.async_stream_infer("repeat_int32", _repeat_inputs([1, 2], [0]), request_id="short")
        (model_error,) = collector.take(1)
        client.async_stream_infer("simple", _simple_inputs(1), request_id="good")
        (good,) = collector.take(1)
    finally:
        client.stop_stream()
    assert error.error is not None and "expected 2 inputs but got 1 inputs" in error.error
    assert (
        model_error.error is not None and "DELAY has 1 elements but IN has 2" in model_error.error
    )
    assert good.request_id == "good" and good.error is None


def test_triton_grpc_error_header_ends_the_stream_with_the_status(
    client: grpcclient.InferenceServerClient,
) -> None:
    collector = Collector()
    client.start_stream(callback=collector, headers={"triton_grpc_error": "true"})
    try:
        client.async_stream_infer("no_such_model", _simple_inputs(0), request_id="lost")
        (ended,) = collector.take(1)
    finally:
        client.stop_stream()
    assert ended.error is not None
    assert "StatusCode.NOT_FOUND" in ended.error and "no_such_model" in ended.error


def test_half_close_waits_for_every_response(client: grpcclient.InferenceServerClient) -> None:
    collector = Collector()
    client.start_stream(callback=collector)
    client.async_stream_infer(
        "repeat_int32", _repeat_inputs([1, 2, 3], [50, 50, 50]), request_id="slow"
    )
    client.stop_stream()  # half-closes, then returns once the server has ended the call
    assert collector.responses.qsize() == 3


def test_cancelling_the_stream_stops_further_responses(
    client: grpcclient.InferenceServerClient,
) -> None:
    collector = Collector()
    client.start_stream(callback=collector)
    client.async_stream_infer(
        "repeat_int32", _repeat_inputs(list(range(50)), [100] * 50), request_id="long"
    )
    (first,) = collector.take(1)
    client.stop_stream(cancel_requests=True)
    assert first.outputs["IDX"].tolist() == [0]
    assert collector.responses.qsize() < 49  # the rest were never sent
    # The server serves on, and the model's worker is free again.
    collector = Collector()
    client.start_stream(callback=collector)
    try:
        client.async_stream_infer("repeat_int32", _repeat_inputs([9], [0]), request_id="after")
        (after,) = collector.take(1)
    finally:
        client.stop_stream()
    assert after.outputs["OUT"].tolist() == [9]


def test_model_infer_refuses_a_decoupled_model(client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as raised:
        client.infer("repeat_int32", _repeat_inputs([1], [0]))
    assert raised.value.status() == "StatusCode.UNIMPLEMENTED"
    assert "ModelInfer RPC doesn't support models with decoupled transaction policy" in str(
        raised.value
    )


def test_aio_stream_infer(demo_server: ServerProcess) -> None:
    async def run() -> list[tuple[str, list[int]]]:
        async with aioclient.InferenceServerClient(demo_server.address) as aio:

            async def requests():
                for value in range(3):
                    inputs = []
                    for tensor in _simple_inputs(value):
                        aio_tensor = aioclient.InferInput(tensor.name(), tensor.shape(), "INT32")
                        aio_tensor.set_data_from_numpy(np.full((1, 16), value, dtype=np.int32))
                        inputs.append(aio_tensor)
                    yield {"model_name": "simple", "inputs": inputs, "request_id": str(value)}

            answers = []
            async for result, error in aio.stream_infer(requests()):
                assert error is None
                answers.append(
                    (result.get_response().id, result.as_numpy("OUTPUT0")[0][:2].tolist())
                )
            return answers

    answers = asyncio.run(run())
    assert sorted(answers) == [("0", [0, 0]), ("1", [2, 2]), ("2", [4, 4])]
