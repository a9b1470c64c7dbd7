"""Triton's ``model_warmup``: every sample runs ``count`` times on every instance before a
version is ready, and a sample that does not fit the config fails the version's load
with a reason naming the model, the sample and the tensor.

Models are real ONNX graphs loaded through ``load_model``; the tests that count runs
or look at the exact feed hand ``warm_up`` a recording instance instead.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tritongrpc
from google.protobuf import text_format
from onnx import TensorProto

from inferd.engines.backends import BackendInstance
from inferd.engines.errors import EngineError, ErrorCode
from inferd.engines.repository.loader import LoadedModel, load_model
from inferd.engines.repository.warmup import warm_up
from inferd.engines.types import InferRequest, InputTensor, ModelIndexEntry, ModelState
from inferd.protos import model_config_pb2
from inferd.protos.datatypes import encode_bytes_tensor
from tests.support.model_builders import _add_constant_graph, _identity_graph, _write
from tests.support.server_process import ServerProcess

ADDED = 5  # the add-constant model's K: OUTPUT0 = INPUT0 + 5
ZEROS = "data_type: TYPE_INT32 dims: [ 4 ] zero_data: true"


def _sample(name: str, batch_size: int = 1, count: int = 0, **inputs: str) -> str:
    """One model_warmup entry; each keyword is an input name and its Input fields."""
    fields = "".join(
        f'inputs {{ key: "{key}" value {{ {value} }} }} ' for key, value in inputs.items()
    )
    return f'{{ name: "{name}" batch_size: {batch_size} count: {count} {fields}}}'


def _add_model(
    root: Path,
    samples: Sequence[str],
    *,
    name: str = "m",
    max_batch_size: int = 4,
    dims: str = "[ 4 ]",
    output_dims: str = "[ 4 ]",
    reshape: str = "",
    instances: int = 1,
) -> Path:
    """The INT32 add-constant graph, [batch, 4] -> [batch, 4], under a config of our own."""
    config = f"""
name: "{name}"
max_batch_size: {max_batch_size}
instance_group [ {{ kind: KIND_CPU count: {instances} }} ]
input [ {{ name: "INPUT0" data_type: TYPE_INT32 dims: {dims} {reshape} }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_INT32 dims: {output_dims} }} ]
model_warmup [ {", ".join(samples)} ]
"""
    _write(root, name, config, {1: _add_constant_graph(ADDED)})
    return root / name


def _strings_model(root: Path, samples: Sequence[str], name: str = "s") -> Path:
    """An identity over strings without batching: TYPE_STRING [-1] -> TYPE_STRING [-1]."""
    config = f"""
name: "{name}"
max_batch_size: 0
instance_group [ {{ kind: KIND_CPU count: 2 }} ]
input [ {{ name: "INPUT0" data_type: TYPE_STRING dims: [ -1 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_STRING dims: [ -1 ] }} ]
model_warmup [ {", ".join(samples)} ]
"""
    _write(root, name, config, {1: _identity_graph(TensorProto.STRING, batch=False)})
    return root / name


def _write_warmup_file(model_dir: Path, name: str, data: bytes) -> None:
    (model_dir / "warmup").mkdir(exist_ok=True)
    (model_dir / "warmup" / name).write_bytes(data)


def _ready(loaded: LoadedModel) -> None:
    assert loaded.index_entries() == [ModelIndexEntry(loaded.name, "1", ModelState.READY)]


def _unavailable(loaded: LoadedModel) -> str:
    [entry] = loaded.index_entries()
    assert (entry.name, entry.version, entry.state) == (loaded.name, "1", ModelState.UNAVAILABLE)
    return entry.reason


def _infer(loaded: LoadedModel, datatype: str, array: np.ndarray) -> np.ndarray:
    request = InferRequest(
        loaded.name, 1, [InputTensor("INPUT0", datatype, array.shape, array.ravel())]
    )
    response = asyncio.run(loaded.versions[1].infer(request))
    [output] = response.outputs
    return output.data


def _close(loaded: LoadedModel) -> None:
    for version in loaded.versions.values():
        version.close()


class CountingInstance(BackendInstance):
    """Records each run's feed and requested outputs; answers zeros for every output."""

    def __init__(self) -> None:
        self.runs: list[tuple[dict[str, np.ndarray], tuple[str, ...]]] = []

    def infer(
        self,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str],
        device_outputs: frozenset[str] = frozenset(),
    ) -> dict[str, np.ndarray]:
        self.runs.append(
            ({name: np.array(a, copy=True) for name, a in inputs.items()}, tuple(output_names))
        )
        return {name: np.zeros(1) for name in output_names}


class FailingInstance(BackendInstance):
    def infer(
        self,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str],
        device_outputs: frozenset[str] = frozenset(),
    ) -> dict[str, np.ndarray]:
        raise RuntimeError("out of memory")


def _config(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


_TWO_OUTPUTS = """
name: "rec"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 4 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 4 ] },
         { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 1 ] } ]
"""


# --- warm_up itself ----------------------------------------------------------------------


def test_each_sample_runs_count_times_on_every_instance_asking_for_every_output(
    tmp_path: Path,
) -> None:
    config = _config(
        _TWO_OUTPUTS
        + f"model_warmup [ {_sample('once', 2, INPUT0=ZEROS)}, "
        + f"{_sample('thrice', 8, count=3, INPUT0=ZEROS)} ]"
    )
    instances = [CountingInstance() for _ in range(3)]

    warm_up(config, tmp_path, instances)

    for instance in instances:
        shapes = [feed["INPUT0"].shape for feed, _ in instance.runs]
        assert shapes == [(2, 4), (8, 4), (8, 4), (8, 4)]  # `count: 0` is once
        assert {names for _, names in instance.runs} == {("OUTPUT0", "OUTPUT1")}
        assert all(not feed["INPUT0"].any() for feed, _ in instance.runs)
        assert all(feed["INPUT0"].dtype == np.int32 for feed, _ in instance.runs)


def test_no_model_warmup_runs_nothing(tmp_path: Path) -> None:
    instance = CountingInstance()
    warm_up(_config(_TWO_OUTPUTS), tmp_path, [instance])
    assert instance.runs == []


def test_input_data_file_feeds_its_contents_to_every_batch_row(tmp_path: Path) -> None:
    _write_warmup_file(tmp_path, "row.bin", np.array([1, -2, 3, 400], np.int32).tobytes())
    config = _config(
        _TWO_OUTPUTS
        + "model_warmup [ "
        + _sample("file", 3, INPUT0='data_type: TYPE_INT32 dims: [ 4 ] input_data_file: "row.bin"')
        + " ]"
    )
    instance = CountingInstance()

    warm_up(config, tmp_path, [instance])

    [(feed, _)] = instance.runs
    np.testing.assert_array_equal(feed["INPUT0"], np.array([[1, -2, 3, 400]] * 3, np.int32))


def test_string_input_data_file_is_length_prefixed_bytes(tmp_path: Path) -> None:
    strings = np.array([b"warm", b"", b"\xff\x00up"], dtype=np.object_)
    _write_warmup_file(tmp_path, "strings.bin", encode_bytes_tensor(strings))
    config = _config(
        """
name: "text"
input [ { name: "TEXT" data_type: TYPE_STRING dims: [ -1 ] } ]
output [ { name: "OUT" data_type: TYPE_STRING dims: [ -1 ] } ]
model_warmup [ { name: "file" inputs { key: "TEXT" value {
  data_type: TYPE_STRING dims: [ 3 ] input_data_file: "strings.bin" } } } ]
"""
    )
    instance = CountingInstance()

    warm_up(config, tmp_path, [instance])

    [(feed, _)] = instance.runs
    assert feed["TEXT"].shape == (3,)  # max_batch_size 0: no batch dimension
    assert list(feed["TEXT"]) == list(strings)


def test_random_data_fills_every_datatype_with_its_own_type(tmp_path: Path) -> None:
    types = ["BOOL", "UINT8", "UINT64", "INT8", "INT64", "FP16", "FP32", "FP64", "STRING"]
    inputs = ", ".join(f'{{ name: "{t}" data_type: TYPE_{t} dims: [ 2, 3 ] }}' for t in types)
    samples = "".join(
        f'inputs {{ key: "{t}" value {{ data_type: TYPE_{t} dims: [ 2, 3 ] random_data: true }} }}'
        for t in types
    )
    config = _config(
        f"""
name: "all"
max_batch_size: 2
input [ {inputs} ]
output [ {{ name: "OUT" data_type: TYPE_FP32 dims: [ 1 ] }} ]
model_warmup [ {{ name: "random" batch_size: 2 {samples} }} ]
"""
    )
    instance = CountingInstance()

    warm_up(config, tmp_path, [instance])

    [(feed, _)] = instance.runs
    for t in types:
        array = feed[t]
        assert array.shape == (2, 2, 3), t
        if t == "STRING":
            assert array.dtype == np.object_
            assert all(isinstance(item, bytes) and item for item in array.ravel())
        else:
            assert array.dtype == np.dtype(t.lower().replace("fp", "float")), t
            if array.dtype.kind == "f":
                assert np.isfinite(array).all(), t


def test_a_failing_run_is_internal_and_names_model_sample_and_instance(tmp_path: Path) -> None:
    config = _config(_TWO_OUTPUTS + f"model_warmup [ {_sample('zeros', 1, INPUT0=ZEROS)} ]")

    with pytest.raises(EngineError) as failed:
        warm_up(config, tmp_path, [CountingInstance(), FailingInstance()])

    assert failed.value.code == ErrorCode.INTERNAL
    assert failed.value.message == (
        "model 'rec' warm-up sample 'zeros' failed on instance 1, iteration 1 of 1: "
        "RuntimeError: out of memory"
    )


def test_no_sample_runs_unless_every_sample_is_valid(tmp_path: Path) -> None:
    config = _config(
        _TWO_OUTPUTS
        + f"model_warmup [ {_sample('good', 1, INPUT0=ZEROS)}, {_sample('bad', 9, INPUT0=ZEROS)} ]"
    )
    instance = CountingInstance()

    with pytest.raises(EngineError, match="sample 'bad': batch_size is 9"):
        warm_up(config, tmp_path, [instance])
    assert instance.runs == []


# --- loading real models ----------------------------------------------------------------


def test_zero_and_random_warmup_leave_the_model_ready_and_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model_dir = _add_model(
        tmp_path,
        [
            _sample("zeros", 4, INPUT0=ZEROS),
            _sample("random", 2, count=2, INPUT0=ZEROS.replace("zero_data", "random_data")),
        ],
        instances=2,
    )
    with caplog.at_level(logging.INFO, logger="inferd.engines.repository.warmup"):
        loaded = load_model(model_dir)
    try:
        _ready(loaded)
        array = np.arange(8, dtype=np.int32).reshape(2, 4)
        np.testing.assert_array_equal(_infer(loaded, "INT32", array), array + ADDED)
    finally:
        _close(loaded)
    messages = [record.getMessage() for record in caplog.records]
    assert any("model 'm'" in m and "sample 'zeros'" in m for m in messages), messages
    assert any("sample 'random'" in m and "2 iteration(s) on each of 2" in m for m in messages)


def test_warmup_input_is_reshaped_as_requests_are(tmp_path: Path) -> None:
    # The config takes [2, 2]; the graph takes [batch, 4]: without the reshape the
    # warm-up run itself would fail in ONNX Runtime.
    model_dir = _add_model(
        tmp_path,
        [_sample("square", 3, INPUT0="data_type: TYPE_INT32 dims: [ 2, 2 ] zero_data: true")],
        dims="[ 2, 2 ]",
        reshape="reshape { shape: [ 4 ] }",
    )
    loaded = load_model(model_dir)
    try:
        _ready(loaded)
    finally:
        _close(loaded)


def test_unbatched_model_gets_no_batch_dimension(tmp_path: Path) -> None:
    model_dir = _add_model(
        tmp_path,
        [
            _sample("zero", 0, INPUT0="data_type: TYPE_INT32 dims: [ 2, 4 ] zero_data: true"),
            _sample("one", 1, INPUT0="data_type: TYPE_INT32 dims: [ 2, 4 ] zero_data: true"),
        ],
        max_batch_size=0,
        dims="[ 2, 4 ]",
        output_dims="[ 2, 4 ]",
    )
    loaded = load_model(model_dir)
    try:
        _ready(loaded)
    finally:
        _close(loaded)


def test_string_model_warms_up_from_file_zeros_and_random_and_serves(tmp_path: Path) -> None:
    model_dir = _strings_model(
        tmp_path,
        [
            _sample("file", INPUT0='data_type: TYPE_STRING dims: [ 2 ] input_data_file: "s.bin"'),
            _sample("empty", INPUT0="data_type: TYPE_STRING dims: [ 3 ] zero_data: true"),
            _sample("random", INPUT0="data_type: TYPE_STRING dims: [ 5 ] random_data: true"),
        ],
    )
    _write_warmup_file(model_dir, "s.bin", encode_bytes_tensor(np.array([b"a", b"bc"], object)))
    loaded = load_model(model_dir)
    try:
        _ready(loaded)
        strings = np.array([b"hello", b"world"], dtype=np.object_)
        assert list(_infer(loaded, "BYTES", strings)) == list(strings)
    finally:
        _close(loaded)


_INPUT = "data_type: TYPE_INT32 dims: [ 4 ]"

# case -> (sample, what the reason says after "model 'm' warm-up sample 's': ")
_BAD_SAMPLES = {
    "unknown input": (
        _sample("s", 1, INPUT0=ZEROS, INPUT9=ZEROS),
        "input 'INPUT9' is not an input of the model, expected one of ['INPUT0']",
    ),
    "missing input": (
        _sample("s", 1),
        "no data for required input(s) ['INPUT0'], expected every input of ['INPUT0'] that "
        "is not optional",
    ),
    "wrong dims": (
        _sample("s", 1, INPUT0="data_type: TYPE_INT32 dims: [ 3 ] zero_data: true"),
        "input 'INPUT0' has dims [3], expected [4] (without the batch dimension",
    ),
    "extra dim": (
        _sample("s", 1, INPUT0="data_type: TYPE_INT32 dims: [ 1, 4 ] zero_data: true"),
        "input 'INPUT0' has dims [1,4], expected [4]",
    ),
    "wrong type": (
        _sample("s", 1, INPUT0="data_type: TYPE_FP32 dims: [ 4 ] zero_data: true"),
        "input 'INPUT0' has data_type TYPE_FP32, expected TYPE_INT32",
    ),
    "batch size 0": (
        _sample("s", 0, INPUT0=ZEROS),
        "batch_size is 0, expected 1 to 4 (the model's max_batch_size)",
    ),
    "batch size over max": (
        _sample("s", 5, INPUT0=ZEROS),
        "batch_size is 5, expected 1 to 4 (the model's max_batch_size)",
    ),
    "no data source": (
        _sample("s", 1, INPUT0=_INPUT),
        "input 'INPUT0' has no data, expected one of zero_data, random_data or input_data_file",
    ),
    "short file": (
        _sample("s", 1, INPUT0=f'{_INPUT} input_data_file: "three.bin"'),
        "input 'INPUT0' has 3 elements of data in warmup/three.bin, expected 4 "
        "(16 bytes of int32 for dims [4])",
    ),
    "ragged file": (
        _sample("s", 1, INPUT0=f'{_INPUT} input_data_file: "ragged.bin"'),
        "input 'INPUT0' has 13 bytes (not a whole number of 4-byte elements) of data in "
        "warmup/ragged.bin, expected 4",
    ),
    "missing file": (
        _sample("s", 1, INPUT0=f'{_INPUT} input_data_file: "absent.bin"'),
        "input 'INPUT0' has input_data_file 'absent.bin', but warmup/absent.bin is not a file",
    ),
    "directory as file": (
        _sample("s", 1, INPUT0=f'{_INPUT} input_data_file: "sub"'),
        "input 'INPUT0' has input_data_file 'sub', but warmup/sub is not a file",
    ),
}


@pytest.mark.parametrize("case", list(_BAD_SAMPLES))
def test_bad_sample_makes_the_version_unavailable_with_a_reason(tmp_path: Path, case: str) -> None:
    sample, detail = _BAD_SAMPLES[case]
    model_dir = _add_model(tmp_path, [sample])
    _write_warmup_file(model_dir, "three.bin", np.zeros(3, np.int32).tobytes())
    _write_warmup_file(model_dir, "ragged.bin", bytes(13))
    (model_dir / "warmup" / "sub").mkdir()

    loaded = load_model(model_dir)

    assert loaded.versions == {}
    reason = _unavailable(loaded)
    assert reason.startswith(f"Invalid argument: model 'm' warm-up sample 's': {detail}"), reason


def test_unbatched_model_refuses_a_batch_size_over_one(tmp_path: Path) -> None:
    model_dir = _add_model(
        tmp_path,
        [_sample("s", 2, INPUT0="data_type: TYPE_INT32 dims: [ 2, 4 ] zero_data: true")],
        max_batch_size=0,
        dims="[ 2, 4 ]",
        output_dims="[ 2, 4 ]",
    )
    assert _unavailable(load_model(model_dir)) == (
        "Invalid argument: model 'm' warm-up sample 's': batch_size is 2, expected 0 or 1 "
        "because the model has max_batch_size 0 (no batching)"
    )


def test_malformed_string_file_is_refused(tmp_path: Path) -> None:
    model_dir = _strings_model(
        tmp_path,
        [_sample("s", INPUT0='data_type: TYPE_STRING dims: [ 2 ] input_data_file: "s.bin"')],
    )
    _write_warmup_file(model_dir, "s.bin", encode_bytes_tensor(np.array([b"only one"], object)))
    assert _unavailable(load_model(model_dir)) == (
        "Invalid argument: model 's' warm-up sample 's': expected 2 string elements for "
        "input 'INPUT0' in warmup/s.bin, got 1"
    )


def test_a_model_that_fails_on_the_sample_is_unavailable_as_internal(tmp_path: Path) -> None:
    # The config allows any width; the graph takes 4 wide, so ONNX Runtime refuses 3.
    model_dir = _add_model(
        tmp_path,
        [_sample("narrow", 2, INPUT0="data_type: TYPE_INT32 dims: [ 3 ] zero_data: true")],
        dims="[ -1 ]",
    )
    reason = _unavailable(load_model(model_dir))
    assert reason.startswith(
        "Internal: model 'm' warm-up sample 'narrow' failed on instance 0, iteration 1 of 1: "
    ), reason
    assert "INPUT0" in reason


@pytest.mark.parametrize(
    "file",
    ["../secret.bin", "../../m/secret.bin", "inner/../../secret.bin", "/etc/passwd", ""],
)
def test_input_data_file_outside_the_warmup_directory_is_refused(tmp_path: Path, file: str) -> None:
    model_dir = _add_model(
        tmp_path, [_sample("s", 1, INPUT0=f'{_INPUT} input_data_file: "{file}"')]
    )
    # The file fits the sample exactly: the refusal is about where it is, not what it holds.
    (model_dir / "secret.bin").write_bytes(np.zeros(4, np.int32).tobytes())
    (model_dir / "warmup" / "inner").mkdir(parents=True)

    reason = _unavailable(load_model(model_dir))

    assert reason == (
        f"Invalid argument: model 'm' warm-up sample 's': input 'INPUT0' has input_data_file "
        f"'{file}', expected a relative path inside the model's warmup/ directory (no absolute "
        "path, no '..')"
    )


def test_symbolic_link_out_of_the_warmup_directory_is_refused(tmp_path: Path) -> None:
    model_dir = _add_model(tmp_path, [_sample("s", 1, INPUT0=f'{_INPUT} input_data_file: "x"')])
    (model_dir / "secret.bin").write_bytes(np.zeros(4, np.int32).tobytes())
    (model_dir / "warmup").mkdir()
    os.symlink(model_dir / "secret.bin", model_dir / "warmup" / "x")

    assert _unavailable(load_model(model_dir)) == (
        "Invalid argument: model 'm' warm-up sample 's': input 'INPUT0' has input_data_file "
        "'x', which resolves outside the model's warmup/ directory"
    )


def test_unnamed_sample_is_named_by_position(tmp_path: Path) -> None:
    model_dir = _add_model(
        tmp_path, [_sample("fine", 1, INPUT0=ZEROS), _sample("", 0, INPUT0=ZEROS)]
    )
    assert _unavailable(load_model(model_dir)).startswith(
        "Invalid argument: model 'm' warm-up sample #1 (unnamed): batch_size is 0"
    )


# --- through a server ----------------------------------------------------------------------


def test_server_serves_the_warmed_model_and_reports_the_failed_one(
    tmp_path: Path, start_server: Callable[..., ServerProcess]
) -> None:
    _add_model(tmp_path, [_sample("zeros", 4, INPUT0=ZEROS)], name="warm")
    _add_model(tmp_path, [_sample("zeros", 9, INPUT0=ZEROS)], name="cold")
    server = start_server(tmp_path)
    client = tritongrpc.InferenceServerClient(server.address)
    try:
        index = {
            (model.name, model.version): (model.state, model.reason)
            for model in client.get_model_repository_index().models
        }
        assert index[("warm", "1")] == ("READY", "")
        assert index[("cold", "1")] == (
            "UNAVAILABLE",
            "Invalid argument: model 'cold' warm-up sample 'zeros': batch_size is 9, expected "
            "1 to 4 (the model's max_batch_size)",
        )
        assert client.is_model_ready("warm") and not client.is_model_ready("cold")
        data = np.arange(4, dtype=np.int32).reshape(1, 4)
        tensor = tritongrpc.InferInput("INPUT0", [1, 4], "INT32")
        tensor.set_data_from_numpy(data)
        result = client.infer("warm", [tensor])
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data + ADDED)
    finally:
        client.close()


# Counts its runs in a file, so the test can see what warm-up ran; decoupled, it ends
# each request from another thread after execute returned.
_COUNTING_PYTHON_MODEL = """
import threading
from pathlib import Path

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.runs = Path(args["model_repository"]) / "runs.txt"

    def execute(self, requests):
        with self.runs.open("a") as runs:
            runs.write("run\\n")
        for request in requests:
            sender = request.get_response_sender()
            data = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            response = pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", data)])

            def answer(sender=sender, response=response):
                sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

            threading.Thread(target=answer).start()
        return None
"""


def test_python_decoupled_model_warms_up_on_each_instance(tmp_path: Path) -> None:
    model_dir = tmp_path / "counting"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "1" / "model.py").write_text(_COUNTING_PYTHON_MODEL)
    (model_dir / "config.pbtxt").write_text(
        """
        backend: "python"
        max_batch_size: 4
        model_transaction_policy { decoupled: true }
        input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 2 ] } ]
        output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 2 ] } ]
        instance_group [ { kind: KIND_CPU count: 2 } ]
        model_warmup [ {
          name: "zeros" batch_size: 1 count: 3
          inputs { key: "INPUT0" value: { data_type: TYPE_FP32 dims: [ 2 ] zero_data: true } }
        } ]
        """
    )
    loaded = load_model(model_dir)
    try:
        assert loaded.failures == {}
        assert (model_dir / "runs.txt").read_text().count("run") == 2 * 3
    finally:
        for version in loaded.versions.values():
            version.close()


_SEQUENCE_WARMUP = """
model_warmup [ {
  name: "ones" batch_size: 2
  inputs { key: "INPUT" value: { data_type: TYPE_INT32 dims: [ 1 ] zero_data: true } }
} ]
"""


@pytest.mark.parametrize(
    "model", ["simple_sequence", "simple_dyna_sequence", "simple_string_dyna_sequence"]
)
def test_sequence_models_warm_up_with_their_control_inputs(
    demo_repository: Path, tmp_path: Path, model: str
) -> None:
    model_dir = Path(shutil.copytree(demo_repository / model, tmp_path / model))
    config = model_dir / "config.pbtxt"
    config.write_text(config.read_text() + _SEQUENCE_WARMUP)
    loaded = load_model(model_dir)
    try:
        assert loaded.failures == {}
        assert list(loaded.versions) == [1]
    finally:
        for version in loaded.versions.values():
            version.close()


def test_a_model_with_implicit_state_warms_up_from_its_initial_state(tmp_path: Path) -> None:
    from tests.engines.execution.test_sequence_state import (
        _accumulator_config,
        _accumulator_graph,
        _model,
    )

    config = _accumulator_config("acc", 4, "zero_data: true", io=True) + _SEQUENCE_WARMUP
    loaded = load_model(_model(tmp_path, "acc", config, _accumulator_graph(batched=True)))
    try:
        assert loaded.failures == {}
    finally:
        for version in loaded.versions.values():
            version.close()
