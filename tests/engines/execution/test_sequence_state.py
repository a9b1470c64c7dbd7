"""Implicit sequence state (``sequence_batching { state [...] }``): the pure parts
(config checks, initial states, the per-sequence store), the sequence executor feeding
and splitting state in batches, and accumulator models served to tritonclient."""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

from inferd.engines.backends import BackendInstance
from inferd.engines.errors import EngineError, ErrorCode
from inferd.engines.execution.packing import signature
from inferd.engines.execution.sequence_executor import SequenceBatchingExecutor
from inferd.engines.execution.sequence_state import SequenceStates, StateSpec, load_states
from inferd.engines.options import RequestOptions, SequenceParameters
from inferd.engines.scheduling.dynamic import PendingRequest
from inferd.engines.scheduling.sequence import (
    SequencePolicy,
    SequenceRequest,
    SequenceScheduler,
    Strategy,
)
from inferd.engines.statistics import ModelStatistics
from inferd.protos import model_config_pb2
from tests.support.server_process import ServerProcess

WAIT_S = 30.0


def _config(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def _state_config(state: str, extra: str = "") -> model_config_pb2.ModelConfig:
    return _config(
        f"""
        name: "m"
        max_batch_size: 4
        input [ {{ name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] }} ]
        {extra}
        sequence_batching {{ state [ {{ {state} }} ] }}
        """
    )


_ACCUMULATOR_STATE = 'input_name: "IN_S" output_name: "OUT_S" data_type: TYPE_INT32'


# load_states: Triton's checks and initial states


def test_no_initial_state_starts_at_zeros_with_variable_dims_at_one(tmp_path: Path) -> None:
    (spec,) = load_states(_state_config(f"{_ACCUMULATOR_STATE} dims: [ -1, 3 ]"), tmp_path)
    assert (spec.input_name, spec.output_name, spec.datatype) == ("IN_S", "OUT_S", "INT32")
    assert spec.initial.shape == (1, 3) and spec.initial.dtype == np.int32
    assert not spec.initial.any()


def test_zero_data_initial_state_takes_its_own_dims(tmp_path: Path) -> None:
    state = (
        f"{_ACCUMULATOR_STATE} dims: [ -1 ] initial_state: "
        '{ data_type: TYPE_INT32 dims: [ 5 ] zero_data: true name: "zeros" }'
    )
    (spec,) = load_states(_state_config(state), tmp_path)
    assert spec.initial.shape == (5,) and not spec.initial.any()


def test_data_file_initial_state_is_read_from_initial_state_folder(tmp_path: Path) -> None:
    (tmp_path / "initial_state").mkdir()
    (tmp_path / "initial_state" / "start.bin").write_bytes(
        np.array([100, 7], dtype="<i4").tobytes()
    )
    state = (
        f"{_ACCUMULATOR_STATE} dims: [ 2 ] initial_state: "
        '{ data_type: TYPE_INT32 dims: [ 2 ] data_file: "start.bin" name: "from file" }'
    )
    (spec,) = load_states(_state_config(state), tmp_path)
    assert spec.initial.tolist() == [100, 7]


def test_string_state_starts_empty_or_from_length_prefixed_file(tmp_path: Path) -> None:
    state = 'input_name: "IN_S" output_name: "OUT_S" data_type: TYPE_STRING dims: [ 2 ]'
    (spec,) = load_states(_state_config(state), tmp_path)
    assert spec.datatype == "BYTES" and spec.initial.tolist() == [b"", b""]
    (tmp_path / "initial_state").mkdir()
    (tmp_path / "initial_state" / "s").write_bytes(b"\x02\x00\x00\x00hi\x00\x00\x00\x00")
    with_file = (
        f'{state} initial_state: {{ data_type: TYPE_STRING dims: [ 2 ] data_file: "s" name: "n" }}'
    )
    (spec,) = load_states(_state_config(with_file), tmp_path)
    assert spec.initial.tolist() == [b"hi", b""]


@pytest.mark.parametrize(
    ("state", "extra", "message"),
    [
        (
            f"{_ACCUMULATOR_STATE} dims: [ 1 ] initial_state: "
            '{ data_type: TYPE_FP32 dims: [ 1 ] zero_data: true name: "z" }',
            "",
            "does not match the state data type",
        ),
        (
            f"{_ACCUMULATOR_STATE} dims: [ 1 ] initial_state: "
            "{ data_type: TYPE_INT32 dims: [ 1 ] zero_data: true }",
            "",
            "Field 'name' must be set",
        ),
        (
            f"{_ACCUMULATOR_STATE} dims: [ -1 ] initial_state: "
            '{ data_type: TYPE_INT32 dims: [ -1 ] zero_data: true name: "z" }',
            "",
            "contains variable dimensions",
        ),
        (
            f"{_ACCUMULATOR_STATE} dims: [ 2 ] initial_state: "
            '{ data_type: TYPE_INT32 dims: [ 3 ] zero_data: true name: "z" }',
            "",
            "doesn't match 'state' dim description. 3 != 2",
        ),
        (
            f"{_ACCUMULATOR_STATE} dims: [ 1 ] initial_state: "
            '{ data_type: TYPE_INT32 dims: [ 1 ] data_file: "missing" name: "z" }',
            "",
            "cannot read initial_state data_file 'missing'",
        ),
        (
            'input_name: "INPUT" output_name: "OUT_S" data_type: TYPE_INT32 dims: [ 1 ]',
            "",
            "leave it out of 'input'",
        ),
        (
            'output_name: "OUT_S" data_type: TYPE_INT32 dims: [ 1 ]',
            "",
            "must set both input_name and output_name",
        ),
    ],
)
def test_bad_states_are_refused(tmp_path: Path, state: str, extra: str, message: str) -> None:
    with pytest.raises(EngineError) as caught:
        load_states(_state_config(state, extra), tmp_path)
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT
    assert message in caught.value.message


def test_a_short_data_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "initial_state").mkdir()
    (tmp_path / "initial_state" / "short").write_bytes(b"\x01\x00")
    state = (
        f"{_ACCUMULATOR_STATE} dims: [ 1 ] initial_state: "
        '{ data_type: TYPE_INT32 dims: [ 1 ] data_file: "short" name: "z" }'
    )
    with pytest.raises(EngineError, match="expects 4 bytes, but the data provided from short"):
        load_states(_state_config(state), tmp_path)


def test_gpu_buffer_options_are_accepted_and_ignored(tmp_path: Path) -> None:
    state = (
        f"{_ACCUMULATOR_STATE} dims: [ 1 ] use_same_buffer_for_input_output: true "
        "use_growable_memory: true"
    )
    (spec,) = load_states(_state_config(state), tmp_path)
    assert spec.initial.tolist() == [0]


# SequenceStates: one state per live sequence


def _spec(initial: Sequence[int] = (0,)) -> StateSpec:
    return StateSpec("IN_S", "OUT_S", "INT32", np.array(initial, dtype=np.int32))


def test_a_start_feeds_the_initial_state_and_outputs_become_the_next_input() -> None:
    states = SequenceStates([_spec((5,))], batched=True)
    lease = states.begin(1, start=True)
    assert lease.inputs["IN_S"].tolist() == [[5]]
    states.update(lease, {"OUT_S": np.array([[8]], dtype=np.int32), "OUTPUT": np.array([[0]])})
    assert states.begin(1, start=False).inputs["IN_S"].tolist() == [[8]]
    # A new START resets, and the initial state itself was never changed.
    assert states.begin(1, start=True).inputs["IN_S"].tolist() == [[5]]


def test_sequences_keep_separate_states_and_free_drops_one() -> None:
    states = SequenceStates([_spec()], batched=False)
    first, second = states.begin("a", start=True), states.begin("b", start=True)
    states.update(first, {"OUT_S": np.array([1], dtype=np.int32)})
    states.update(second, {"OUT_S": np.array([2], dtype=np.int32)})
    assert len(states) == 2
    states.free("a")
    assert len(states) == 1
    assert states.begin("b", start=False).inputs["IN_S"].tolist() == [2]


def test_an_update_for_a_freed_or_restarted_sequence_is_dropped() -> None:
    states = SequenceStates([_spec()], batched=False)
    old = states.begin(7, start=True)
    states.free(7)
    states.update(old, {"OUT_S": np.array([9], dtype=np.int32)})
    assert len(states) == 0  # an ended sequence is not brought back
    states.begin(7, start=True)
    states.update(old, {"OUT_S": np.array([9], dtype=np.int32)})
    assert states.begin(7, start=False).inputs["IN_S"].tolist() == [0]


def test_the_scheduler_reports_ended_and_idle_sequences() -> None:
    policy = SequencePolicy("m", max_batch_size=2, instances=1, strategy=Strategy.DIRECT)
    scheduler = SequenceScheduler(policy, queue_capacity=8)
    scheduler.add(SequenceRequest(1, "ends", True, True, 1, "s", 0.0))
    scheduler.add(SequenceRequest(2, "idles", True, False, 1, "s", 0.0))
    assert len(scheduler.schedule(0, 0.0).batch) == 2
    assert scheduler.take_released() == ("ends",)
    scheduler.finished(("ends", "idles"), 0.0)
    scheduler.expire(10.0)
    assert scheduler.take_released() == ("idles",)
    assert scheduler.take_released() == ()


# The executor: state fed per row, split per row, batches of equal state shapes


class AccumulatorInstance(BackendInstance):
    """OUTPUT = OUTPUT_STATE = INPUT + INPUT_STATE; records each run's INPUT rows."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def infer(
        self,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str],
        device_outputs: frozenset[str] = frozenset(),
    ) -> dict[str, np.ndarray]:
        self.batches.append(inputs["INPUT"][:, 0].tolist())
        total = inputs["INPUT"] + inputs["INPUT_STATE"]
        outputs = {"OUTPUT": total, "OUTPUT_STATE": total.copy()}
        return {name: outputs[name] for name in output_names}


class HistoryInstance(AccumulatorInstance):
    """OUTPUT_STATE = the state with INPUT appended (it grows by one per step); OUTPUT =
    its sum. Sequences at different steps hold states of different shapes."""

    def infer(
        self,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str],
        device_outputs: frozenset[str] = frozenset(),
    ) -> dict[str, np.ndarray]:
        self.batches.append(inputs["INPUT"][:, 0].tolist())
        history = np.concatenate([inputs["INPUT_STATE"], inputs["INPUT"]], axis=1)
        outputs = {"OUTPUT": history.sum(axis=1, keepdims=True), "OUTPUT_STATE": history}
        return {name: outputs[name] for name in output_names}


Step = tuple[int, int, bool, bool]  # sequence id, INPUT, START, END


def _run_waves(
    waves: list[tuple[Step, Step]], instance: AccumulatorInstance
) -> list[tuple[int, int]]:
    """Run waves of two steps of two sequences. The oldest strategy with a preferred
    batch of 2 and a long delay makes each wave one batch of two rows, whatever the
    timing. Returns each wave's OUTPUT values."""
    policy = SequencePolicy(
        "acc",
        max_batch_size=8,
        instances=1,
        strategy=Strategy.OLDEST,
        preferred_batch_sizes=(2,),
        max_queue_delay_s=WAIT_S,
    )
    spec = StateSpec("INPUT_STATE", "OUTPUT_STATE", "INT32", np.zeros(1, dtype=np.int32))
    statistics = ModelStatistics("acc", 1, 8)
    executor = SequenceBatchingExecutor("acc:1", [instance], policy, 64, statistics, states=[spec])

    async def step(sequence_id: int, value: int, start: bool, end: bool) -> int:
        inputs = {"INPUT": np.array([[value]], dtype=np.int32)}
        pending = PendingRequest(0, 1, signature(inputs, True), 0.0)
        options = RequestOptions(sequence=SequenceParameters(sequence_id, start, end))
        outputs = await executor.run(inputs, ("OUTPUT",), pending, options=options)
        assert outputs.keys() == {"OUTPUT"}  # the state output is not the client's
        return int(outputs["OUTPUT"][0, 0])

    async def main() -> list[tuple[int, int]]:
        results = []
        for first, second in waves:
            one, two = await asyncio.wait_for(asyncio.gather(step(*first), step(*second)), WAIT_S)
            results.append((one, two))
        return results

    try:
        return asyncio.run(main())
    finally:
        executor.close()


def test_each_row_of_a_batch_reads_and_writes_its_own_sequences_state() -> None:
    instance = AccumulatorInstance()
    results = _run_waves(
        [
            ((1, 1, True, False), (2, 10, True, False)),
            ((1, 2, False, False), (2, 20, False, True)),
            ((1, 3, False, True), (2, 5, True, False)),
        ],
        instance,
    )
    # Sequence 2 ended, then started over from zero.
    assert results == [(1, 10), (3, 30), (6, 5)]
    assert instance.batches == [[1, 10], [2, 20], [3, 5]]


def test_states_of_different_shapes_run_as_separate_executions() -> None:
    instance = HistoryInstance()
    results = _run_waves(
        [
            ((1, 1, True, False), (2, 10, True, False)),  # both states [1, 1]: one run
            ((1, 2, False, False), (3, 7, True, False)),  # [1, 2] and [1, 1]: two runs
            ((1, 3, False, True), (2, 20, False, True)),  # [1, 3] and [1, 2]: two runs
        ],
        instance,
    )
    assert results == [(1, 10), (3, 7), (6, 30)]
    assert instance.batches == [[1, 10], [2], [7], [3], [20]]


# Served through tritonclient


def _accumulator_graph(batched: bool) -> onnx.GraphProto:
    shape: list[int | str] = ["batch", 1] if batched else [1]
    return helper.make_graph(
        [
            helper.make_node("Add", ["INPUT", "INPUT_STATE"], ["OUTPUT"]),
            helper.make_node("Identity", ["OUTPUT"], ["OUTPUT_STATE"]),
        ],
        "accumulator",
        [
            helper.make_tensor_value_info("INPUT", TensorProto.INT32, shape),
            helper.make_tensor_value_info("INPUT_STATE", TensorProto.INT32, shape),
        ],
        [
            helper.make_tensor_value_info("OUTPUT", TensorProto.INT32, shape),
            helper.make_tensor_value_info("OUTPUT_STATE", TensorProto.INT32, shape),
        ],
    )


def _accumulator_config(name: str, max_batch_size: int, initial: str, io: bool) -> str:
    tensors = (
        'input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
        'output [ { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
        if io
        else ""
    )
    return f"""
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
{tensors}
sequence_batching {{
  max_sequence_idle_microseconds: 60000000
  state [
    {{
      input_name: "INPUT_STATE"
      output_name: "OUTPUT_STATE"
      data_type: TYPE_INT32
      dims: [ 1 ]
      initial_state: {{ data_type: TYPE_INT32 dims: [ 1 ] {initial} name: "initial" }}
    }}
  ]
}}
"""


_PYTHON_ACCUMULATOR = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            value = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            state = pb_utils.get_input_tensor_by_name(request, "INPUT_STATE").as_numpy()
            total = value + state
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("OUTPUT", total),
                        pb_utils.Tensor("OUTPUT_STATE", total),
                    ]
                )
            )
        return responses
"""


def _model(root: Path, name: str, config: str, graph: onnx.GraphProto | None = None) -> Path:
    model_dir = root / name
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(config, encoding="utf-8")
    if graph is None:
        (model_dir / "1" / "model.py").write_text(_PYTHON_ACCUMULATOR, encoding="utf-8")
    else:
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        onnx.save(model, model_dir / "1" / "model.onnx")
    return model_dir


@pytest.fixture(scope="module")
def state_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("state-repo") / "models"
    zeros = "zero_data: true"
    batched, unbatched = _accumulator_graph(True), _accumulator_graph(False)
    _model(root, "accumulator", _accumulator_config("accumulator", 8, zeros, True), batched)
    # Auto-complete reads the graph and must leave the state tensors out.
    autocomplete = _accumulator_config("accumulator_autocomplete", 8, zeros, False)
    _model(root, "accumulator_autocomplete", autocomplete, batched)
    unbatched_config = _accumulator_config("accumulator_unbatched", 0, zeros, True)
    _model(root, "accumulator_unbatched", unbatched_config, unbatched)
    from_100 = _accumulator_config("accumulator_from_100", 8, 'data_file: "start"', True)
    from_file = _model(root, "accumulator_from_100", from_100, batched)
    (from_file / "initial_state").mkdir()
    (from_file / "initial_state" / "start").write_bytes(np.array([100], "<i4").tobytes())
    # Triton's debugging path: the state output declared under `output`.
    debug_config = _accumulator_config("accumulator_debug", 8, zeros, True).replace(
        'output [ { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]',
        'output [ { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] },\n'
        '  { name: "OUTPUT_STATE" data_type: TYPE_INT32 dims: [ 1 ] } ]',
    )
    _model(root, "accumulator_debug", debug_config, batched)
    python_config = _accumulator_config("python_accumulator", 8, zeros, True).replace(
        'platform: "onnxruntime_onnx"', 'backend: "python"'
    )
    _model(root, "python_accumulator", python_config)
    server = ServerProcess(root).wait_ready()
    yield server
    code = server.stop()
    assert code == 0, f"inferd exited with {code}:\n{server.log_text()}"


@pytest.fixture(scope="module")
def client(state_server: ServerProcess) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(state_server.address) as connected:
        yield connected


def _step(
    client: grpcclient.InferenceServerClient,
    model: str,
    value: int,
    sequence_id: int | str,
    *,
    start: bool = False,
    end: bool = False,
) -> int:
    batched = model != "accumulator_unbatched"
    tensor = grpcclient.InferInput("INPUT", [1, 1] if batched else [1], "INT32")
    data = np.array([[value]] if batched else [value], dtype=np.int32)
    tensor.set_data_from_numpy(data)
    result = client.infer(
        model, [tensor], sequence_id=sequence_id, sequence_start=start, sequence_end=end
    )
    response = result.get_response()
    assert [output.name for output in response.outputs] == ["OUTPUT"]
    output = result.as_numpy("OUTPUT")
    assert output is not None
    return int(output.ravel()[0])


MODELS = ["accumulator", "accumulator_autocomplete", "accumulator_unbatched", "python_accumulator"]


@pytest.mark.parametrize("model", MODELS)
def test_interleaved_sequences_accumulate_independently(
    client: grpcclient.InferenceServerClient, model: str
) -> None:
    assert _step(client, model, 1, 101, start=True) == 1
    assert _step(client, model, 10, "s-102", start=True) == 10
    assert _step(client, model, 2, 101) == 3
    assert _step(client, model, 20, "s-102", end=True) == 30
    assert _step(client, model, 3, 101, end=True) == 6


@pytest.mark.parametrize("model", MODELS)
def test_a_new_start_resets_and_an_ended_sequence_starts_over(
    client: grpcclient.InferenceServerClient, model: str
) -> None:
    assert _step(client, model, 4, 201, start=True) == 4
    assert _step(client, model, 4, 201) == 8
    assert _step(client, model, 1, 201, start=True) == 1  # START again: from zero
    assert _step(client, model, 1, 201, end=True) == 2
    with pytest.raises(InferenceServerException, match="must specify the START flag"):
        _step(client, model, 1, 201)
    assert _step(client, model, 7, 201, start=True, end=True) == 7


def test_a_data_file_initial_state(client: grpcclient.InferenceServerClient) -> None:
    assert _step(client, "accumulator_from_100", 1, 301, start=True) == 101
    assert _step(client, "accumulator_from_100", 2, 301, end=True) == 103
    assert _step(client, "accumulator_from_100", 5, 301, start=True, end=True) == 105


@pytest.mark.parametrize("model", MODELS)
def test_clients_never_see_or_send_the_state(
    client: grpcclient.InferenceServerClient, model: str
) -> None:
    metadata = client.get_model_metadata(model)
    assert [tensor.name for tensor in metadata.inputs] == ["INPUT"]
    assert [tensor.name for tensor in metadata.outputs] == ["OUTPUT"]
    config = client.get_model_config(model).config
    assert [tensor.name for tensor in config.input] == ["INPUT"]
    assert [tensor.name for tensor in config.output] == ["OUTPUT"]
    assert config.sequence_batching.state[0].input_name == "INPUT_STATE"
    batched = model != "accumulator_unbatched"
    inputs = []
    for name in ("INPUT", "INPUT_STATE"):
        tensor = grpcclient.InferInput(name, [1, 1] if batched else [1], "INT32")
        tensor.set_data_from_numpy(np.ones((1, 1) if batched else (1,), dtype=np.int32))
        inputs.append(tensor)
    with pytest.raises(InferenceServerException) as caught:
        client.infer(model, inputs, sequence_id=401, sequence_start=True)
    assert "StatusCode.INVALID_ARGUMENT" in str(caught.value.status())
    assert "INPUT_STATE" in caught.value.message()
    with pytest.raises(InferenceServerException) as asked:
        tensor = inputs[0]
        client.infer(
            model,
            [tensor],
            outputs=[grpcclient.InferRequestedOutput("OUTPUT_STATE")],
            sequence_id=402,
            sequence_start=True,
        )
    assert "OUTPUT_STATE" in asked.value.message()


def test_a_state_output_the_config_declares_is_returned_when_asked_for(
    client: grpcclient.InferenceServerClient,
) -> None:
    """Triton's debugging path: list the state output under ``output`` to see it."""

    def step(value: int, outputs: list[str], **flags: bool) -> dict[str, int]:
        tensor = grpcclient.InferInput("INPUT", [1, 1], "INT32")
        tensor.set_data_from_numpy(np.array([[value]], dtype=np.int32))
        result = client.infer(
            "accumulator_debug",
            [tensor],
            outputs=[grpcclient.InferRequestedOutput(name) for name in outputs],
            sequence_id=701,
            sequence_start=flags.get("start", False),
            sequence_end=flags.get("end", False),
        )
        names = [output.name for output in result.get_response().outputs]
        return {name: int(result.as_numpy(name)[0, 0]) for name in names}

    assert step(5, ["OUTPUT"], start=True) == {"OUTPUT": 5}
    assert step(6, ["OUTPUT", "OUTPUT_STATE"]) == {"OUTPUT": 11, "OUTPUT_STATE": 11}
    assert step(1, ["OUTPUT_STATE"], end=True) == {"OUTPUT_STATE": 12}


def test_a_request_of_several_rows_is_refused(client: grpcclient.InferenceServerClient) -> None:
    tensor = grpcclient.InferInput("INPUT", [2, 1], "INT32")
    tensor.set_data_from_numpy(np.ones((2, 1), dtype=np.int32))
    with pytest.raises(InferenceServerException) as caught:
        client.infer("accumulator", [tensor], sequence_id=501, sequence_start=True)
    assert "must have batch size 1, got 2" in caught.value.message()


def test_many_interleaved_sequences_over_a_stream(state_server: ServerProcess) -> None:
    results: queue.Queue = queue.Queue()
    ids = range(601, 611)
    with grpcclient.InferenceServerClient(state_server.address) as connected:
        connected.start_stream(callback=lambda result, error: results.put((result, error)))
        for step in range(3):
            for sequence_id in ids:
                tensor = grpcclient.InferInput("INPUT", [1, 1], "INT32")
                tensor.set_data_from_numpy(np.array([[sequence_id]], dtype=np.int32))
                connected.async_stream_infer(
                    "accumulator",
                    [tensor],
                    request_id=f"{sequence_id}:{step}",
                    sequence_id=sequence_id,
                    sequence_start=step == 0,
                    sequence_end=step == 2,
                )
        answers = {}
        for _ in range(30):
            result, error = results.get(timeout=WAIT_S)
            assert error is None, error
            answers[result.get_response().id] = int(result.as_numpy("OUTPUT")[0, 0])
        connected.stop_stream()
    assert answers == {
        f"{sequence_id}:{step}": sequence_id * (step + 1)
        for sequence_id in ids
        for step in range(3)
    }
