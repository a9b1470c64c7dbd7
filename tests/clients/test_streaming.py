"""AsyncClient.stream_infer: the stream codec on its own, then ModelStreamInfer against a
real server (the ``demo_server`` fixture) serving the demo repository."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc
import numpy as np
import pytest

from inferd.clients import (
    AsyncClient,
    InvalidArgumentError,
    RequestCancelledError,
    StreamRequest,
    StreamResponse,
    UnexpectedStatusError,
)
from inferd.clients._codec import parse_stream_response, stream_request_message
from inferd.protos import grpc_service_pb2 as pb
from tests.support.server_process import ServerProcess

T = TypeVar("T")
WAIT_S = 30.0  # a bound on waits that would otherwise hang a broken test, not a timing check


def _run(scenario: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(scenario(), WAIT_S)

    return asyncio.run(bounded())


def _simple(request_id: str, offset: int = 0) -> StreamRequest:
    a = np.arange(16, dtype=np.int32).reshape(1, 16) + offset
    b = np.full((1, 16), offset, dtype=np.int32)
    return StreamRequest("simple", {"INPUT0": a, "INPUT1": b}, request_id=request_id)


def _wrong_shape(request_id: str) -> StreamRequest:
    bad = np.zeros((1, 15), dtype=np.int32)
    return StreamRequest("simple", {"INPUT0": bad, "INPUT1": bad}, request_id=request_id)


def _assert_simple_answer(response: StreamResponse, offset: int) -> None:
    a = np.arange(16, dtype=np.int32).reshape(1, 16) + offset
    assert response.error is None
    assert response.final is True
    assert response.model == "simple"
    np.testing.assert_array_equal(response.outputs["OUTPUT0"], a + offset)
    np.testing.assert_array_equal(response.outputs["OUTPUT1"], a - offset)


# --- the stream codec ------------------------------------------------------------------


def test_stream_request_reuses_the_infer_request_encoding() -> None:
    request = StreamRequest(
        "m",
        {"X": np.arange(3, dtype=np.int32)},
        outputs=["Y"],
        request_id="r1",
        version="2",
        parameters={"priority": 1},
        enable_empty_final_response=True,
    )
    message = stream_request_message(request)

    assert (message.model_name, message.model_version, message.id) == ("m", "2", "r1")
    assert [(t.name, t.datatype, list(t.shape)) for t in message.inputs] == [("X", "INT32", [3])]
    assert [output.name for output in message.outputs] == ["Y"]
    assert message.parameters["priority"].int64_param == 1
    assert message.parameters["triton_enable_empty_final_response"].bool_param is True
    plain = stream_request_message(StreamRequest("m", {}))
    assert "triton_enable_empty_final_response" not in plain.parameters


def test_stream_response_reads_outputs_flag_and_parameters() -> None:
    response = pb.ModelInferResponse(model_name="m", model_version="1", id="r1")
    response.outputs.add(name="Y", datatype="INT32", shape=[2])
    response.raw_output_contents.append(np.array([5, 6], dtype="<i4").tobytes())
    response.parameters["triton_final_response"].bool_param = False
    response.parameters["note"].string_param = "hi"

    parsed = parse_stream_response(pb.ModelStreamInferResponse(infer_response=response))

    assert (parsed.request_id, parsed.model, parsed.version) == ("r1", "m", "1")
    assert parsed.final is False and parsed.error is None
    np.testing.assert_array_equal(parsed.outputs["Y"], [5, 6])
    assert dict(parsed.parameters) == {"note": "hi"}  # the flag is ``final``, not a parameter


def test_stream_error_carries_message_and_request_id_and_ends_the_request() -> None:
    message = pb.ModelStreamInferResponse(
        error_message="expected shape [1,16]", infer_response=pb.ModelInferResponse(id="r9")
    )
    parsed = parse_stream_response(message)

    assert parsed.request_id == "r9"
    assert parsed.outputs == {}
    # No triton_final_response: a request that failed before it ran has nothing more.
    assert parsed.final is True
    assert isinstance(parsed.error, UnexpectedStatusError)
    assert parsed.error.code is grpc.StatusCode.UNKNOWN
    assert parsed.error.message == "expected shape [1,16]"


# --- against a real server --------------------------------------------------------------


def _address(server: ServerProcess) -> str:
    return server.address


def test_interleaved_requests_each_get_their_own_answer(demo_server: ServerProcess) -> None:
    offsets = {f"req-{index}": index for index in range(12)}

    async def scenario() -> list[StreamResponse]:
        async def requests() -> AsyncIterator[StreamRequest]:
            for request_id, offset in offsets.items():
                yield _simple(request_id, offset)
                await asyncio.sleep(0)  # let responses in between sends

        async with AsyncClient(_address(demo_server)) as client:
            return [response async for response in client.stream_infer(requests())]

    responses = _run(scenario)

    assert sorted(response.request_id for response in responses) == sorted(offsets)
    for response in responses:
        _assert_simple_answer(response, offsets[response.request_id])


def test_plain_iterable_of_requests(demo_server: ServerProcess) -> None:
    async def scenario() -> list[StreamResponse]:
        async with AsyncClient(_address(demo_server)) as client:
            stream = client.stream_infer([_simple("a", 1), _simple("b", 2)])
            return [response async for response in stream]

    responses = {response.request_id: response for response in _run(scenario)}
    _assert_simple_answer(responses["a"], 1)
    _assert_simple_answer(responses["b"], 2)


def test_requests_are_sent_as_they_come(demo_server: ServerProcess) -> None:
    # The second request is produced only after the first one's answer is read: a client
    # that waited for the whole iterable before sending would never get there.
    async def scenario() -> list[str]:
        answered = asyncio.Event()

        async def requests() -> AsyncIterator[StreamRequest]:
            yield _simple("first", 1)
            await answered.wait()
            yield _simple("second", 2)

        seen = []
        async with AsyncClient(_address(demo_server)) as client:
            async for response in client.stream_infer(requests()):
                seen.append(response.request_id)
                answered.set()
        return seen

    assert _run(scenario) == ["first", "second"]


def test_invalid_request_answers_with_an_error_and_the_stream_goes_on(
    demo_server: ServerProcess,
) -> None:
    async def scenario() -> list[StreamResponse]:
        queue: asyncio.Queue[StreamRequest | None] = asyncio.Queue()

        async def requests() -> AsyncIterator[StreamRequest]:
            while (request := await queue.get()) is not None:
                yield request

        responses = []
        await queue.put(_wrong_shape("bad"))
        async with AsyncClient(_address(demo_server)) as client:
            async for response in client.stream_infer(requests()):
                responses.append(response)
                # Only once the error has come back: the same stream answers the next.
                await queue.put(_simple("good", 3) if response.request_id == "bad" else None)
        return responses

    bad, good = _run(scenario)

    assert bad.request_id == "bad"
    assert bad.final is True and bad.outputs == {}
    assert bad.error is not None
    assert "INPUT0" in bad.error.message and "[1,15]" in bad.error.message.replace(" ", "")
    assert good.request_id == "good"
    _assert_simple_answer(good, 3)


def test_grpc_error_header_ends_the_call_with_the_mapped_error(
    demo_server: ServerProcess,
) -> None:
    async def scenario() -> None:
        async def requests() -> AsyncIterator[StreamRequest]:
            yield _wrong_shape("bad")
            await asyncio.Event().wait()  # keep the stream open: the server must end it

        async with AsyncClient(_address(demo_server)) as client:
            with pytest.raises(InvalidArgumentError, match="INPUT0"):
                async for _ in client.stream_infer(requests(), grpc_errors=True):
                    pass

    _run(scenario)


def test_unknown_model_without_the_header_is_an_error_response(
    demo_server: ServerProcess,
) -> None:
    async def scenario() -> list[StreamResponse]:
        async with AsyncClient(_address(demo_server)) as client:
            request = StreamRequest("nope", {"X": np.zeros(1, np.int32)}, request_id="n")
            return [response async for response in client.stream_infer([request])]

    (response,) = _run(scenario)
    assert response.request_id == "n"
    assert response.error is not None
    assert "Request for unknown model: 'nope' is not found" in response.error.message


def test_early_exit_cancels_the_call_and_the_server_keeps_serving(
    demo_server: ServerProcess,
) -> None:
    async def endless(stopped: asyncio.Event) -> AsyncIterator[StreamRequest]:
        try:
            index = 0
            while True:
                yield _simple(f"r{index}", index % 5)
                index += 1
                await asyncio.sleep(0)
        finally:
            stopped.set()

    async def scenario() -> None:
        async with AsyncClient(_address(demo_server)) as client:
            # Breaking out of the loop and dropping the iterator cancels the call...
            dropped = asyncio.Event()
            async for response in client.stream_infer(endless(dropped)):
                assert response.error is None
                break
            await dropped.wait()  # the requests stop being read: the call is over

            # ...and so does aclose(), at once.
            closed = asyncio.Event()
            responses = client.stream_infer(endless(closed))
            async with contextlib.aclosing(responses):
                async for response in responses:
                    assert response.error is None
                    break
            await closed.wait()

            # The server still serves, on the same channel, streams and unary calls.
            (answer,) = [response async for response in client.stream_infer([_simple("a", 4)])]
            _assert_simple_answer(answer, 4)
            outputs = await client.infer("simple", _simple("", 2).inputs)
            np.testing.assert_array_equal(outputs["OUTPUT1"], np.arange(16).reshape(1, 16))

    _run(scenario)


def test_cancelling_the_iterating_task_cancels_the_call(demo_server: ServerProcess) -> None:
    async def scenario() -> None:
        stopped = asyncio.Event()
        first = asyncio.Event()

        async def requests() -> AsyncIterator[StreamRequest]:
            try:
                yield _simple("only", 1)
                await asyncio.Event().wait()
            finally:
                stopped.set()

        async with AsyncClient(_address(demo_server)) as client:

            async def consume() -> None:
                async for _ in client.stream_infer(requests()):
                    first.set()

            task = asyncio.ensure_future(consume())
            await first.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await stopped.wait()
            assert await client.is_server_ready()

    _run(scenario)


def test_an_error_from_the_requests_is_raised_and_cancels_the_call(
    demo_server: ServerProcess,
) -> None:
    async def scenario() -> list[str]:
        async def requests() -> AsyncIterator[StreamRequest]:
            yield _simple("ok", 1)
            raise LookupError("no more data")

        seen = []
        async with AsyncClient(_address(demo_server)) as client:
            with pytest.raises(LookupError, match="no more data"):
                async for response in client.stream_infer(requests()):
                    seen.append(response.request_id)
        return seen

    assert _run(scenario) in ([], ["ok"])  # the answer may or may not beat the cancel


def test_a_request_that_cannot_be_encoded_is_raised(demo_server: ServerProcess) -> None:
    async def scenario() -> None:
        request = StreamRequest("simple", {"INPUT0": np.zeros(2, dtype=np.complex64)})
        async with AsyncClient(_address(demo_server)) as client:
            with pytest.raises(TypeError):
                async for _ in client.stream_infer([request]):
                    pass

    _run(scenario)


def test_stream_on_a_closed_client_is_refused() -> None:
    async def scenario() -> None:
        client = AsyncClient("127.0.0.1:1")
        await client.close()
        with pytest.raises(ValueError, match="closed"):
            client.stream_infer([])

    _run(scenario)


def test_decoupled_repeat_answers_each_element_then_the_final_flag(
    demo_server: ServerProcess,
) -> None:
    values = np.array([7, 8, 9, 10], dtype=np.int32)
    request = StreamRequest(
        "repeat_int32",
        {
            "IN": values,
            "DELAY": np.zeros(4, dtype=np.uint32),
            "WAIT": np.zeros(1, dtype=np.uint32),
        },
        request_id="rep",
        enable_empty_final_response=True,
    )

    async def scenario() -> list[StreamResponse]:
        async with AsyncClient(_address(demo_server)) as client:
            return [response async for response in client.stream_infer([request])]

    responses = _run(scenario)

    assert [response.request_id for response in responses] == ["rep"] * 5
    assert all(response.error is None for response in responses)
    *data, last = responses
    assert [response.final for response in data] == [False] * 4
    assert [int(response.outputs["IDX"][0]) for response in data] == [0, 1, 2, 3]
    assert [int(response.outputs["OUT"][0]) for response in data] == values.tolist()
    assert last.final is True and last.outputs == {}


def test_closing_the_client_ends_the_stream_with_cancelled(demo_server: ServerProcess) -> None:
    async def scenario() -> None:
        async def requests() -> AsyncIterator[StreamRequest]:
            yield _simple("x", 1)
            await asyncio.Event().wait()

        client = AsyncClient(_address(demo_server))
        responses = client.stream_infer(requests())
        _assert_simple_answer(await anext(responses), 1)
        closing = asyncio.ensure_future(client.close())
        with pytest.raises(RequestCancelledError, match="closed"):
            await anext(responses)
        await closing

    _run(scenario)
