"""Python models (Triton's Python backend API) through a real server, driven with
tritonclient: batched execute under dynamic batching, one failing batch leaving the
model serving, error responses, auto-complete, statistics of a decoupled model, and
``finalize`` at shutdown."""

from __future__ import annotations

import asyncio
import queue
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.support.server_process import ServerProcess

# Triton's add_sub example, as its documentation writes it.
ADD_SUB = """
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.out_dtype = pb_utils.triton_string_to_numpy(
            pb_utils.get_output_config_by_name(config, "OUTPUT0")["data_type"]
        )

    def execute(self, requests):
        responses = []
        for request in requests:
            in_0 = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            in_1 = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            if (in_0 < 0).any():
                raise ValueError("negative input")  # fails this batch only
            if (in_1 < 0).any():
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError("INPUT1 must not be negative")))
                continue
            out_0 = pb_utils.Tensor("OUTPUT0", (in_0 + in_1).astype(self.out_dtype))
            out_1 = pb_utils.Tensor("OUTPUT1", (in_0 - in_1).astype(self.out_dtype))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out_0, out_1]))
        return responses

    def finalize(self):
        with open(FINALIZED, "a") as marker:
            marker.write("finalized\\n")
"""

# Declares its tensors itself, as Triton's auto_complete_config lets a model do.
AUTO_COMPLETE = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(config):
        config.add_input({"name": "IN", "data_type": "TYPE_FP32", "dims": [3]})
        config.add_output({"name": "OUT", "data_type": "TYPE_FP32", "dims": [3]})
        config.set_max_batch_size(8)
        return config

    def execute(self, requests):
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor(
                "OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy() * 2)])
            for r in requests
        ]
"""


# A decoupled model that reports a problem and goes on: error, then data, then the end.
ERROR_THEN_DATA = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError("a warning")))
            data = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", data)]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("python-models")
    add_sub = root / "add_sub" / "1"
    add_sub.mkdir(parents=True)
    marker = root.parent / f"{root.name}-finalized.txt"
    (add_sub / "model.py").write_text(ADD_SUB.replace("FINALIZED", repr(str(marker))))
    (root / "add_sub" / "config.pbtxt").write_text(
        textwrap.dedent(
            """
            backend: "python"
            max_batch_size: 8
            dynamic_batching { max_queue_delay_microseconds: 200000 }
            input [
              { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
              { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
            ]
            output [
              { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
              { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
            ]
            instance_group [ { kind: KIND_CPU count: 1 } ]
            """
        )
    )
    decoupled = root / "error_then_data" / "1"
    decoupled.mkdir(parents=True)
    (decoupled / "model.py").write_text(ERROR_THEN_DATA)
    (root / "error_then_data" / "config.pbtxt").write_text(
        """
        backend: "python"
        max_batch_size: 0
        model_transaction_policy { decoupled: true }
        input [ { name: "IN" data_type: TYPE_INT32 dims: [ 2 ] } ]
        output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 2 ] } ]
        """
    )
    auto = root / "auto" / "1"
    auto.mkdir(parents=True)
    (auto / "model.py").write_text(AUTO_COMPLETE)  # no config.pbtxt at all
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[ServerProcess]:
    started = ServerProcess(repository).wait_ready()
    yield started
    started.kill()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[grpcclient.InferenceServerClient]:
    connected = grpcclient.InferenceServerClient(server.address)
    yield connected
    connected.close()


def _add_sub_inputs(a: np.ndarray, b: np.ndarray) -> list[grpcclient.InferInput]:
    inputs = [
        grpcclient.InferInput("INPUT0", list(a.shape), "FP32"),
        grpcclient.InferInput("INPUT1", list(b.shape), "FP32"),
    ]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    return inputs


def test_concurrent_requests_reach_execute_as_one_batch(
    client: grpcclient.InferenceServerClient,
) -> None:
    rows = [np.full((1, 4), value, dtype=np.float32) for value in range(8)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(
                lambda row: client.infer("add_sub", _add_sub_inputs(row, np.ones_like(row))),
                rows,
            )
        )
    for row, answer in zip(rows, answers, strict=True):
        np.testing.assert_array_equal(answer.as_numpy("OUTPUT0"), row + 1)
        np.testing.assert_array_equal(answer.as_numpy("OUTPUT1"), row - 1)
    stats = client.get_inference_statistics("add_sub").model_stats[0]
    assert stats.inference_count >= 8
    assert stats.execution_count < stats.inference_count  # requests shared executions


def test_an_exception_fails_that_batch_and_the_model_serves_on(
    client: grpcclient.InferenceServerClient,
) -> None:
    bad = -np.ones((1, 4), dtype=np.float32)
    with pytest.raises(InferenceServerException) as raised:
        client.infer("add_sub", _add_sub_inputs(bad, bad))
    assert raised.value.status() == "StatusCode.INTERNAL"
    assert "negative input" in raised.value.message()
    good = np.ones((1, 4), dtype=np.float32)
    answer = client.infer("add_sub", _add_sub_inputs(good, good))
    np.testing.assert_array_equal(answer.as_numpy("OUTPUT0"), good * 2)


def test_an_error_response_fails_one_request(client: grpcclient.InferenceServerClient) -> None:
    good = np.ones((1, 4), dtype=np.float32)
    with pytest.raises(InferenceServerException, match="INPUT1 must not be negative"):
        client.infer("add_sub", _add_sub_inputs(good, -good))


def test_auto_complete_config_declares_the_tensors(
    client: grpcclient.InferenceServerClient,
) -> None:
    config = client.get_model_config("auto").config
    assert config.backend == "python" and config.max_batch_size == 8
    assert [(t.name, list(t.dims)) for t in config.input] == [("IN", [3])]
    data = np.arange(3, dtype=np.float32).reshape(1, 3)
    tensor = grpcclient.InferInput("IN", [1, 3], "FP32")
    tensor.set_data_from_numpy(data)
    np.testing.assert_array_equal(client.infer("auto", [tensor]).as_numpy("OUT"), data * 2)


def test_decoupled_requests_count_in_the_statistics(demo_server: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(demo_server.address)
    responses: queue.Queue[object] = queue.Queue()
    before = client.get_inference_statistics("repeat_int32").model_stats[0]
    client.start_stream(callback=lambda result, error: responses.put(error or result))
    try:
        arrays = {
            "IN": np.array([1, 2], dtype=np.int32),
            "DELAY": np.array([0, 0], dtype=np.uint32),
            "WAIT": np.array([0], dtype=np.uint32),
        }
        inputs = []
        for name, array in arrays.items():
            datatype = "INT32" if name == "IN" else "UINT32"
            inputs.append(grpcclient.InferInput(name, list(array.shape), datatype))
            inputs[-1].set_data_from_numpy(array)
        client.async_stream_infer("repeat_int32", inputs, enable_empty_final_response=True)
        for _ in range(3):
            responses.get(timeout=30)
    finally:
        client.stop_stream()
    after = client.get_inference_statistics("repeat_int32").model_stats[0]
    client.close()
    assert after.inference_stats.success.count == before.inference_stats.success.count + 1

    def count(stats: Any, index: str, field: str) -> int:
        return (
            getattr(stats.response_stats[index], field).count
            if index in stats.response_stats
            else 0
        )

    # Two responses with data, then the empty final one, each at its index.
    for index, field in (("0", "success"), ("1", "success"), ("2", "empty_response")):
        assert count(after, index, field) == count(before, index, field) + 1, (index, field)
    assert count(after, "0", "compute_infer") == count(before, "0", "compute_infer") + 1


def test_a_decoupled_error_that_is_not_final_leaves_the_request_open(
    server: ServerProcess,
) -> None:
    from inferd.clients import AsyncClient, StreamRequest

    async def run() -> list[tuple[bool, bool, dict]]:
        async with AsyncClient(server.address) as client:
            request = StreamRequest(
                "error_then_data",
                {"IN": np.array([3, 4], dtype=np.int32)},
                request_id="r",
                enable_empty_final_response=True,
            )
            return [
                (response.error is not None, response.final, response.outputs)
                async for response in client.stream_infer([request])
            ]

    received = asyncio.run(run())
    assert [(error, final) for error, final, _ in received] == [
        (True, False), (False, False), (False, True),
    ]  # fmt: skip
    assert received[1][2]["OUT"].tolist() == [3, 4]


def test_finalize_runs_at_shutdown(repository: Path) -> None:
    marker = repository.parent / f"{repository.name}-finalized.txt"
    server = ServerProcess(repository).wait_ready()
    server.stop()
    assert marker.read_text().count("finalized") >= 1
