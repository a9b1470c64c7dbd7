"""Sequence batching through a real server, driven with tritonclient: sequences over
unary calls and over streams (integer and string ids, interleaved), the three demo
sequence models, Triton's errors, and idle sequences freed."""

from __future__ import annotations

import queue
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.support.server_process import ServerProcess


@pytest.fixture(scope="module")
def client(demo_server: ServerProcess) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(demo_server.address) as connected:
        yield connected


def _inputs(value: int) -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput("INPUT", [1, 1], "INT32")
    tensor.set_data_from_numpy(np.array([[value]], dtype=np.int32))
    return [tensor]


def _step(
    client: grpcclient.InferenceServerClient,
    model: str,
    value: int,
    sequence_id: int | str,
    *,
    start: bool = False,
    end: bool = False,
) -> int:
    result = client.infer(
        model,
        _inputs(value),
        sequence_id=sequence_id,
        sequence_start=start,
        sequence_end=end,
    )
    output = result.as_numpy("OUTPUT")
    assert output is not None and output.shape == (1, 1)
    return int(output[0, 0])


def _run_sequence(
    client: grpcclient.InferenceServerClient,
    model: str,
    sequence_id: int | str,
    values: list[int],
) -> list[int]:
    last = len(values) - 1
    return [
        _step(client, model, value, sequence_id, start=index == 0, end=index == last)
        for index, value in enumerate(values)
    ]


# simple_sequence: OUTPUT = (INPUT + START) * READY


@pytest.mark.parametrize("sequence_id", [1001, "session-a"])
def test_simple_sequence_over_unary_calls(
    client: grpcclient.InferenceServerClient, sequence_id: int | str
) -> None:
    assert _run_sequence(client, "simple_sequence", sequence_id, [5, 6, 7]) == [6, 6, 7]


# simple_dyna_sequence: OUTPUT = (INPUT + START + END * CORRID) * READY


def test_simple_dyna_sequence_adds_the_id_at_the_end(
    client: grpcclient.InferenceServerClient,
) -> None:
    assert _run_sequence(client, "simple_dyna_sequence", 1002, [5, 6, 7]) == [6, 6, 1009]
    assert _run_sequence(client, "simple_dyna_sequence", 1003, [4]) == [1008]


# simple_string_dyna_sequence: an accumulator that adds the id's value at the end


@pytest.mark.parametrize("sequence_id", [77, "88"])
def test_simple_string_dyna_sequence_accumulates(
    client: grpcclient.InferenceServerClient, sequence_id: int | str
) -> None:
    expected_end = 1 + 2 + 3 + int(sequence_id)
    outputs = _run_sequence(client, "simple_string_dyna_sequence", sequence_id, [1, 2, 3])
    assert outputs == [1, 3, expected_end]


def test_a_string_id_that_is_not_an_integer_fails_that_request(
    client: grpcclient.InferenceServerClient,
) -> None:
    with pytest.raises(InferenceServerException) as caught:
        _step(client, "simple_string_dyna_sequence", 1, "not-a-number", start=True)
    assert "StatusCode.INVALID_ARGUMENT" in str(caught.value.status())
    assert "is not an integer" in caught.value.message()
    # The model goes on serving other sequences.
    assert _run_sequence(client, "simple_string_dyna_sequence", "5", [2, 2]) == [2, 9]


# Over streams


class _Stream:
    def __init__(self, client: grpcclient.InferenceServerClient) -> None:
        self.client = client
        self.results: queue.Queue[tuple[Any, Any]] = queue.Queue()
        client.start_stream(callback=lambda result, error: self.results.put((result, error)))

    def send(self, model: str, value: int, sequence_id: int | str, **flags: bool) -> None:
        self.client.async_stream_infer(
            model,
            _inputs(value),
            request_id=f"{sequence_id}:{value}",
            sequence_id=sequence_id,
            sequence_start=flags.get("start", False),
            sequence_end=flags.get("end", False),
        )

    def receive(self, count: int) -> dict[str, int | str]:
        """request id -> output value, or the error message."""
        answers: dict[str, int | str] = {}
        for _ in range(count):
            result, error = self.results.get(timeout=30)
            if error is not None:
                answers[f"error{len(answers)}"] = error.message()
            else:
                response = result.get_response()
                answers[response.id] = int(result.as_numpy("OUTPUT")[0, 0])
        return answers

    def close(self) -> None:
        self.client.stop_stream()


@pytest.fixture
def stream(demo_server: ServerProcess) -> Iterator[_Stream]:
    with grpcclient.InferenceServerClient(demo_server.address) as connected:
        opened = _Stream(connected)
        yield opened
        opened.close()


@pytest.mark.parametrize("sequence_id", [2001, "2002"])
def test_a_sequence_over_a_stream(stream: _Stream, sequence_id: int | str) -> None:
    stream.send("simple_string_dyna_sequence", 10, sequence_id, start=True)
    stream.send("simple_string_dyna_sequence", 20, sequence_id)
    stream.send("simple_string_dyna_sequence", 30, sequence_id, end=True)
    answers = stream.receive(3)
    base = int(sequence_id)
    assert answers == {
        f"{sequence_id}:10": 10,
        f"{sequence_id}:20": 30,
        f"{sequence_id}:30": 60 + base,
    }


def test_interleaved_sequences_on_one_stream(stream: _Stream) -> None:
    model = "simple_string_dyna_sequence"
    for value, flags in ((1, {"start": True}), (2, {}), (3, {"end": True})):
        stream.send(model, value, 3001, **flags)
        stream.send(model, value * 100, "3002", **flags)
    answers = stream.receive(6)
    assert answers == {
        "3001:1": 1,
        "3001:2": 3,
        "3001:3": 6 + 3001,
        "3002:100": 100,
        "3002:200": 300,
        "3002:300": 600 + 3002,
    }


def test_dyna_sequence_over_a_stream_batches_many_sequences(stream: _Stream) -> None:
    ids = range(4001, 4011)
    for sequence_id in ids:
        stream.send("simple_dyna_sequence", 1, sequence_id, start=True)
    for sequence_id in ids:
        stream.send("simple_dyna_sequence", 2, sequence_id, end=True)
    answers = stream.receive(20)
    assert answers == {
        **{f"{sequence_id}:1": 2 for sequence_id in ids},
        **{f"{sequence_id}:2": 2 + sequence_id for sequence_id in ids},
    }


# Errors


def test_a_request_without_a_sequence_id_is_refused(
    client: grpcclient.InferenceServerClient,
) -> None:
    with pytest.raises(InferenceServerException) as caught:
        client.infer("simple_sequence", _inputs(1))
    assert caught.value.message() == (
        "inference request to model 'simple_sequence' must specify a non-zero or non-empty "
        "correlation ID"
    )
    assert "StatusCode.INVALID_ARGUMENT" in str(caught.value.status())


@pytest.mark.parametrize("sequence_id", [5001, "unknown"])
def test_an_unknown_sequence_must_start(
    client: grpcclient.InferenceServerClient, sequence_id: int | str
) -> None:
    with pytest.raises(InferenceServerException) as caught:
        _step(client, "simple_sequence", 1, sequence_id)
    assert caught.value.message() == (
        f"inference request for sequence {sequence_id} to model 'simple_sequence' must "
        "specify the START flag on the first request of the sequence"
    )
    assert "StatusCode.INVALID_ARGUMENT" in str(caught.value.status())


def test_an_ended_sequence_must_start_again(client: grpcclient.InferenceServerClient) -> None:
    _run_sequence(client, "simple_sequence", 5002, [1, 2])
    with pytest.raises(InferenceServerException, match="must specify the START flag"):
        _step(client, "simple_sequence", 1, 5002)


def test_the_model_config_keeps_the_control_inputs_out_of_the_inputs(
    client: grpcclient.InferenceServerClient,
) -> None:
    config = client.get_model_config("simple_dyna_sequence").config
    assert [tensor.name for tensor in config.input] == ["INPUT"]
    assert config.sequence_batching.oldest.max_candidate_sequences == 1024
    metadata = client.get_model_metadata("simple_dyna_sequence")
    assert [tensor.name for tensor in metadata.inputs] == ["INPUT"]


# Idle sequences


@pytest.fixture
def idle_repository(demo_repository: Path, tmp_path: Path) -> Path:
    """simple_sequence, with sequences freed after 50 ms idle."""
    repository = tmp_path / "models"
    shutil.copytree(demo_repository / "simple_sequence", repository / "simple_sequence")
    config = repository / "simple_sequence" / "config.pbtxt"
    text = config.read_text(encoding="utf-8")
    text = text.replace(
        "sequence_batching {\n", "sequence_batching {\n  max_sequence_idle_microseconds: 50000\n"
    )
    config.write_text(text, encoding="utf-8")
    return repository


def test_an_idle_sequence_is_freed(
    idle_repository: Path, start_server: Callable[..., ServerProcess]
) -> None:
    server = start_server(idle_repository)
    with grpcclient.InferenceServerClient(server.address) as connected:
        assert _step(connected, "simple_sequence", 1, 6001, start=True) == 2
        # Each successful step keeps the sequence alive, so wait longer each time (a
        # bounded wait: 0.1 s, 0.2 s, ... about 12 s in all) until it has been freed.
        pause, message = 0.1, ""
        while pause < 10 and not message:
            time.sleep(pause)
            pause *= 2
            try:
                _step(connected, "simple_sequence", 1, 6001)
            except InferenceServerException as error:
                message = error.message()
        assert message == (
            "inference request for sequence 6001 to model 'simple_sequence' must specify the "
            "START flag on the first request of the sequence"
        )
