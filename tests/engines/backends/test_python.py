"""The Python backend (Triton's ``model.py`` + ``TritonPythonModel``), driven directly:
each test writes a model directory, completes its config, loads an instance and runs
``execute`` with senders that record what the backend answered."""

from __future__ import annotations

import json
import logging
import re
import sys
import textwrap
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from inferd.engines.backends import BackendRequest, InstanceSpec
from inferd.engines.backends import python_utils as pb_utils
from inferd.engines.backends.python import PythonBackend, PythonInstance
from inferd.engines.errors import EngineError, ErrorCode
from inferd.engines.options import ParameterValue, RequestOptions
from inferd.engines.repository.config import read_config
from inferd.engines.repository.loader import load_model
from inferd.engines.types import ModelState
from inferd.protos import model_config_pb2

WAIT_S = 30  # generous bound for background threads; never a timing assertion


@dataclass(frozen=True, slots=True)
class Sent:
    outputs: dict[str, np.ndarray] | None
    final: bool
    error: EngineError | None


@dataclass
class RecordingSender:
    """The engine's side of one request: records each send, thread-safe."""

    cancelled: bool = False
    sent: list[Sent] = field(default_factory=list)
    ended: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def send(
        self,
        outputs: Mapping[str, np.ndarray] | None = None,
        *,
        final: bool = False,
        error: EngineError | None = None,
    ) -> None:
        with self._lock:
            if self.ended.is_set():
                raise EngineError(ErrorCode.INTERNAL, "the request has already ended")
            self.sent.append(Sent(dict(outputs) if outputs is not None else None, final, error))
            if final:
                self.ended.set()

    def is_cancelled(self) -> bool:
        return self.cancelled

    def wait(self) -> list[Sent]:
        assert self.ended.wait(WAIT_S), f"the request never ended; sent so far: {self.sent}"
        return self.sent


def request(
    inputs: Mapping[str, np.ndarray],
    outputs: tuple[str, ...] = ("OUTPUT0", "OUTPUT1"),
    parameters: Mapping[str, ParameterValue] | None = None,
    request_id: str = "",
    sender: RecordingSender | None = None,
) -> BackendRequest:
    return BackendRequest(
        request_id=request_id,
        inputs=dict(inputs),
        output_names=outputs,
        options=RequestOptions.from_parameters(parameters or {}),
        sender=sender or RecordingSender(),
    )


def sender_of(backend_request: BackendRequest) -> RecordingSender:
    assert isinstance(backend_request.sender, RecordingSender)
    return backend_request.sender


def write_model(
    root: Path, name: str, config: str, source: str, files: Mapping[str, str] | None = None
) -> Path:
    model_dir = root / name
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(
        f'name: "{name}"\nbackend: "python"\n' + textwrap.dedent(config)
    )
    (model_dir / "1" / "model.py").write_text(textwrap.dedent(source))
    for filename, text in (files or {}).items():
        (model_dir / "1" / filename).write_text(textwrap.dedent(text))
    return model_dir


def complete(model_dir: Path) -> model_config_pb2.ModelConfig:
    config = read_config(model_dir)
    PythonBackend().complete_config(model_dir / "1" / "model.py", config)
    return config


def load(model_dir: Path, index: int = 0) -> PythonInstance:
    config = complete(model_dir)
    instance = PythonBackend().load(
        model_dir / "1" / "model.py", config, InstanceSpec(index, "CPU")
    )
    assert isinstance(instance, PythonInstance)
    return instance


@pytest.fixture
def loaded() -> Iterator[list[PythonInstance]]:
    """Instances a test loads; closed afterwards."""
    instances: list[PythonInstance] = []
    yield instances
    for instance in instances:
        instance.close()


ADD_SUB_CONFIG = """
max_batch_size: 8
dynamic_batching {}
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
]
instance_group { count: 2 kind: KIND_CPU }
"""

# Triton's add_sub example, as users write it.
ADD_SUB = """
import json
import os

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        with open(os.path.join(args["model_repository"], "args.json"), "w") as file:
            json.dump(args, file)
        self.model_config = model_config = json.loads(args["model_config"])
        output0_config = pb_utils.get_output_config_by_name(model_config, "OUTPUT0")
        output1_config = pb_utils.get_output_config_by_name(model_config, "OUTPUT1")
        self.output0_dtype = pb_utils.triton_string_to_numpy(output0_config["data_type"])
        self.output1_dtype = pb_utils.triton_string_to_numpy(output1_config["data_type"])

    def execute(self, requests):
        responses = []
        for request in requests:
            in_0 = pb_utils.get_input_tensor_by_name(request, "INPUT0")
            in_1 = pb_utils.get_input_tensor_by_name(request, "INPUT1")
            out_0, out_1 = (
                in_0.as_numpy() + in_1.as_numpy(),
                in_0.as_numpy() - in_1.as_numpy(),
            )
            out_tensor_0 = pb_utils.Tensor("OUTPUT0", out_0.astype(self.output0_dtype))
            out_tensor_1 = pb_utils.Tensor("OUTPUT1", out_1.astype(self.output1_dtype))
            inference_response = pb_utils.InferenceResponse(
                output_tensors=[out_tensor_0, out_tensor_1]
            )
            responses.append(inference_response)
        return responses

    def finalize(self):
        pass
"""


def test_add_sub_answers_each_request_of_a_batch_with_its_own_rows(
    tmp_path: Path, loaded: list[PythonInstance]
) -> None:
    model_dir = write_model(tmp_path, "add_sub", ADD_SUB_CONFIG, ADD_SUB)
    loaded.append(instance := load(model_dir))
    a, b = np.arange(8, dtype=np.float32).reshape(2, 4), np.ones((2, 4), np.float32)
    c, d = np.full((1, 4), 10, np.float32), np.full((1, 4), 3, np.float32)
    first = request({"INPUT0": a, "INPUT1": b})
    second = request({"INPUT0": c, "INPUT1": d}, outputs=("OUTPUT1",))
    instance.execute([first, second])

    [answer] = sender_of(first).wait()
    assert answer.final and answer.error is None and answer.outputs is not None
    np.testing.assert_array_equal(answer.outputs["OUTPUT0"], a + b)
    np.testing.assert_array_equal(answer.outputs["OUTPUT1"], a - b)
    [answer] = sender_of(second).wait()
    assert answer.outputs is not None
    assert list(answer.outputs) == ["OUTPUT1"]  # outputs the client did not ask for are dropped
    np.testing.assert_array_equal(answer.outputs["OUTPUT1"], c - d)


def test_initialize_gets_tritons_args(tmp_path: Path, loaded: list[PythonInstance]) -> None:
    model_dir = write_model(tmp_path, "add_sub", ADD_SUB_CONFIG, ADD_SUB)
    loaded.append(load(model_dir, index=1))
    args = json.loads((model_dir / "args.json").read_text())
    assert all(isinstance(value, str) for value in args.values())
    assert args["model_name"] == "add_sub"
    assert args["model_version"] == "1"
    assert args["model_repository"] == str(model_dir)
    assert args["model_instance_kind"] == "CPU"
    assert args["model_instance_device_id"] == "0"
    assert args["model_instance_name"] == "add_sub_1"
    config = json.loads(args["model_config"])
    assert config["backend"] == "python"
    assert config["max_batch_size"] == 8
    assert config["input"][0]["dims"] == [4]  # numbers, not protobuf's int64 strings
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    # A message that is set appears with its defaults printed; one that is not, does not.
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 0
    assert "sequence_batching" not in config
    assert config["instance_group"][0]["count"] == 2
    assert not pb_utils.using_decoupled_model_transaction_policy(config)


ERRORS = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            value = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            if request.is_cancelled():
                error = pb_utils.TritonError("gave up", pb_utils.TritonError.CANCELLED)
                responses.append(pb_utils.InferenceResponse(error=error))
            elif value[0] < 0:
                error = pb_utils.TritonError("negative input", pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
            elif value[0] == 0:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("zero")))
            elif value[0] == 7:
                unknown = pb_utils.Tensor("SURPRISE", value)
                responses.append(pb_utils.InferenceResponse(output_tensors=[unknown]))
            else:
                responses.append(
                    pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", value * 2)])
                )
        return responses
"""
ONE_IN_ONE_OUT = """
input { name: "INPUT0" data_type: TYPE_INT32 dims: [ 1 ] }
output { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 1 ] }
"""


def test_error_responses_fail_only_their_request(
    tmp_path: Path, loaded: list[PythonInstance]
) -> None:
    loaded.append(instance := load(write_model(tmp_path, "errors", ONE_IN_ONE_OUT, ERRORS)))
    values = [5, -1, 0, 7, 3]
    requests = [request({"INPUT0": np.array([v], np.int32)}, ("OUTPUT0",)) for v in values]
    requests.append(
        request({"INPUT0": np.array([1], np.int32)}, sender=RecordingSender(cancelled=True))
    )
    instance.execute(requests)

    answers = [sender_of(r).wait() for r in requests]
    assert all(len(sent) == 1 and sent[0].final for sent in answers)
    ok, negative, zero, unknown, also_ok, cancelled = (sent[0] for sent in answers)
    assert ok.outputs is not None and ok.outputs["OUTPUT0"].tolist() == [10]
    assert also_ok.outputs is not None and also_ok.outputs["OUTPUT0"].tolist() == [6]
    assert negative.error is not None
    assert (negative.error.code, negative.error.message) == (
        ErrorCode.INVALID_ARGUMENT,
        "negative input",
    )
    assert zero.error is not None and zero.error.code is ErrorCode.INTERNAL  # the default code
    assert unknown.error is not None
    assert "returned output 'SURPRISE', which its config does not declare" in (
        unknown.error.message
    )
    assert cancelled.error is not None and cancelled.error.code is ErrorCode.CANCELLED


BROKEN_RETURNS = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        kind = pb_utils.get_input_tensor_by_name(requests[0], "INPUT0").as_numpy()[0]
        if kind == 1:
            raise ValueError("cannot handle this")
        if kind == 2:
            raise pb_utils.TritonModelException("refused by the model")
        if kind == 3:
            return [pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", np.array([1]))])]
        if kind == 4:
            return {"OUTPUT0": 1}
        return ["not a response"] * len(requests)
"""


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        (1, "model 'broken': ValueError: cannot handle this"),
        (2, "model 'broken': refused by the model"),
        (3, "model 'broken': execute returned 1 responses for 2 requests; expected one"),
        (4, "model 'broken': execute must return a list of 2 pb_utils.InferenceResponse"),
        (5, "model 'broken': execute returned str at position 0 of its list; expected a"),
    ],
)
def test_a_failing_or_misbehaving_execute_fails_the_batch(
    tmp_path: Path, loaded: list[PythonInstance], kind: int, message: str
) -> None:
    loaded.append(instance := load(write_model(tmp_path, "broken", ONE_IN_ONE_OUT, BROKEN_RETURNS)))
    batch = [request({"INPUT0": np.array([kind], np.int32)}, ("OUTPUT0",)) for _ in range(2)]
    with pytest.raises(EngineError) as raised:
        instance.execute(batch)
    assert raised.value.code is ErrorCode.INTERNAL
    assert raised.value.message.startswith(message)
    assert all(not sender_of(r).sent for r in batch)  # the engine fails them, not the backend


DECOUPLED_CONFIG = """
model_transaction_policy { decoupled: true }
input { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] }
output { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] }
"""
# Sends IN responses; even IN from execute, odd IN from a thread that outlives execute,
# which then tries one send too many and reports what the sender said.
DECOUPLED = """
import json
import os
import threading

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.report = os.path.join(args["model_repository"], "late_send.txt")
        assert pb_utils.using_decoupled_model_transaction_policy(json.loads(args["model_config"]))

    def execute(self, requests):
        for request in requests:
            count = int(pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()[0])
            sender = request.get_response_sender()
            if count % 2 == 0:
                self.respond(sender, count)
            else:
                threading.Thread(
                    target=self.respond, args=(sender, count, True), name="late-sender"
                ).start()
        return None

    def respond(self, sender, count, late=False):
        for index in range(count):
            out = pb_utils.Tensor("OUT", np.array([index], np.int32))
            sender.send(pb_utils.InferenceResponse(output_tensors=[out]))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        if late:
            try:
                sender.send(pb_utils.InferenceResponse([]))
            except pb_utils.TritonModelException as exc:
                with open(self.report, "w") as file:
                    file.write(str(exc))
"""


def test_decoupled_model_sends_many_responses_from_execute_and_from_its_threads(
    tmp_path: Path, loaded: list[PythonInstance]
) -> None:
    model_dir = write_model(tmp_path, "repeat", DECOUPLED_CONFIG, DECOUPLED)
    loaded.append(instance := load(model_dir))
    from_execute = request({"IN": np.array([2], np.int32)}, ("OUT",))
    from_thread = request({"IN": np.array([3], np.int32)}, ("OUT",))
    instance.execute([from_execute, from_thread])

    for backend_request, count in ((from_execute, 2), (from_thread, 3)):
        sent = sender_of(backend_request).wait()
        assert [s.outputs["OUT"].tolist() for s in sent[:-1] if s.outputs] == [
            [i] for i in range(count)
        ]
        assert [s.final for s in sent] == [False] * count + [True]
        assert sent[-1].outputs is None and sent[-1].error is None

    for thread in threading.enumerate():  # it sends once more after FINAL, then reports
        if thread.name == "late-sender":
            thread.join(WAIT_S)
    report = (model_dir / "late_send.txt").read_text()
    assert report == "Unable to send response. Response sender has been closed."


def test_decoupled_execute_must_return_none(tmp_path: Path, loaded: list[PythonInstance]) -> None:
    source = DECOUPLED.replace("        return None\n", "        return []\n")
    loaded.append(instance := load(write_model(tmp_path, "repeat", DECOUPLED_CONFIG, source)))
    with pytest.raises(
        EngineError, match=r"decoupled, so execute must return None \(.*\), got list"
    ):
        instance.execute([request({"IN": np.array([0], np.int32)}, ("OUT",))])


def test_a_model_that_is_not_decoupled_may_answer_through_the_sender(
    tmp_path: Path, loaded: list[PythonInstance]
) -> None:
    source = """
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def execute(self, requests):
            first, second = requests
            value = pb_utils.get_input_tensor_by_name(first, "INPUT0").as_numpy()
            out = pb_utils.Tensor("OUTPUT0", value)
            first.get_response_sender().send(
                pb_utils.InferenceResponse([out]),
                flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
            )
            try:
                first.get_response_sender().send(pb_utils.InferenceResponse([out]))
            except pb_utils.TritonModelException as exc:
                error = pb_utils.TritonError(str(exc))
            return [None, pb_utils.InferenceResponse(error=error)]
    """
    loaded.append(instance := load(write_model(tmp_path, "sender", ONE_IN_ONE_OUT, source)))
    first, second = (request({"INPUT0": np.array([v], np.int32)}, ("OUTPUT0",)) for v in (4, 5))
    instance.execute([first, second])
    [answer] = sender_of(first).wait()
    assert answer.final and answer.outputs is not None and answer.outputs["OUTPUT0"].tolist() == [4]
    [answer] = sender_of(second).wait()
    assert answer.error is not None
    assert answer.error.message == (
        "Unable to send response. Non-decoupled model cannot send more than one response."
    )


ASYNC = """
import asyncio

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.release = asyncio.Event()

    async def execute(self, requests):
        responses = []
        for request in requests:
            value = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            await asyncio.sleep(0)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", value + 1)]))
        return responses
"""
# A decoupled async model: IN 0 waits until a later batch (IN 1) releases it, which only
# happens if execute returned while the first coroutine was still waiting. IN 2 raises.
ASYNC_DECOUPLED = """
import asyncio

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.release = asyncio.Event()

    async def execute(self, requests):
        for request in requests:
            value = int(pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()[0])
            if value == 0:
                await self.release.wait()
            elif value == 1:
                self.release.set()
            else:
                raise RuntimeError("the coroutine failed")
            out = pb_utils.Tensor("OUT", np.array([value], np.int32))
            request.get_response_sender().send(
                pb_utils.InferenceResponse([out]),
                flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
            )
"""


def test_async_execute_returns_its_responses(tmp_path: Path, loaded: list[PythonInstance]) -> None:
    config = DECOUPLED_CONFIG.replace("model_transaction_policy { decoupled: true }\n", "")
    loaded.append(instance := load(write_model(tmp_path, "async", config, ASYNC)))
    batch = [request({"IN": np.array([v], np.int32)}, ("OUT",)) for v in (1, 2)]
    instance.execute(batch)
    assert [sender_of(r).wait()[0].outputs["OUT"].tolist() for r in batch] == [[2], [3]]  # type: ignore[index]


def test_async_decoupled_execute_lets_the_instance_take_the_next_batch(
    tmp_path: Path, loaded: list[PythonInstance]
) -> None:
    loaded.append(
        instance := load(write_model(tmp_path, "async", DECOUPLED_CONFIG, ASYNC_DECOUPLED))
    )
    waiting = request({"IN": np.array([0], np.int32)}, ("OUT",))
    releasing = request({"IN": np.array([1], np.int32)}, ("OUT",))
    failing = request({"IN": np.array([2], np.int32)}, ("OUT",))

    first = threading.Thread(target=instance.execute, args=([waiting],))
    first.start()
    first.join(WAIT_S)
    assert not first.is_alive(), "execute waited for a decoupled coroutine"
    instance.execute([releasing])
    for backend_request, value in ((waiting, 0), (releasing, 1)):
        [sent] = sender_of(backend_request).wait()
        assert sent.final and sent.outputs is not None and sent.outputs["OUT"].tolist() == [value]

    instance.execute([failing])
    [sent] = sender_of(failing).wait()  # the failed coroutine ends what it left open
    assert sent.final and sent.error is not None and sent.error.code is ErrorCode.INTERNAL
    assert sent.error.message == "model 'async': RuntimeError: the coroutine failed"


AUTO_COMPLETE = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(auto_complete_model_config):
        config = auto_complete_model_config.as_dict()
        names = [tensor["name"] for tensor in config["input"]]
        for spec in (
            {"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]},
            {"name": "INPUT1", "data_type": "TYPE_FP32", "dims": [4], "optional": True},
        ):
            if spec["name"] not in names:
                auto_complete_model_config.add_input(spec)
        output = {"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]}
        auto_complete_model_config.add_output(output)
        auto_complete_model_config.set_max_batch_size(4)
        auto_complete_model_config.set_dynamic_batching()
        auto_complete_model_config.set_model_transaction_policy(dict(decoupled=True))
        return auto_complete_model_config

    def execute(self, requests):
        return None
"""


def test_auto_complete_config_fills_the_config(tmp_path: Path) -> None:
    config = complete(write_model(tmp_path, "auto", "", AUTO_COMPLETE))
    assert config.backend == "python"
    assert [(i.name, i.data_type, list(i.dims), i.optional) for i in config.input] == [
        ("INPUT0", model_config_pb2.TYPE_FP32, [4], False),
        ("INPUT1", model_config_pb2.TYPE_FP32, [4], True),
    ]
    assert [o.name for o in config.output] == ["OUTPUT0"]
    assert config.max_batch_size == 4
    assert config.HasField("dynamic_batching")
    assert config.model_transaction_policy.decoupled


def test_auto_complete_refuses_to_change_what_the_config_declares(tmp_path: Path) -> None:
    declared = 'output { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 4 ] }\n'
    model_dir = write_model(tmp_path, "auto", declared, AUTO_COMPLETE)
    with pytest.raises(EngineError) as raised:
        complete(model_dir)
    assert raised.value.code is ErrorCode.INVALID_ARGUMENT
    assert raised.value.message == (
        "model 'auto': auto_complete_config failed: ValueError: unable to load model 'auto', "
        "configuration expects datatype TYPE_INT32 for output 'OUTPUT0', model provides TYPE_FP32"
    )


def test_a_config_without_tensors_says_how_to_declare_them(tmp_path: Path) -> None:
    model_dir = write_model(
        tmp_path,
        "bare",
        "",
        "class TritonPythonModel:\n    def execute(self, requests):\n        return []\n",
    )
    with pytest.raises(EngineError, match="declares no inputs and no outputs: list them in"):
        complete(model_dir)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("class Model:\n    pass\n", "model.py defines no class TritonPythonModel"),
        ("class TritonPythonModel:\n    pass\n", "TritonPythonModel in model.py has no execute"),
        ("import no_such_module_here\n", "importing model.py failed: ModuleNotFoundError"),
    ],
)
def test_a_broken_model_file_fails_its_load_with_a_reason(
    tmp_path: Path, source: str, message: str
) -> None:
    with pytest.raises(EngineError, match=message):
        complete(write_model(tmp_path, "bad", ONE_IN_ONE_OUT, source))


FINALIZE = """
import os

import numpy as np
import triton_python_backend_utils as pb_utils

calls = 0  # module state: Triton gives every instance a process, inferd a module copy


class TritonPythonModel:
    def initialize(self, args):
        if args["model_instance_name"].endswith("_1"):
            raise pb_utils.TritonModelException("instance 1 refuses to start")
        self.marker = os.path.join(args["model_repository"], "finalized.txt")

    def execute(self, requests):
        global calls
        calls += 1
        out = pb_utils.Tensor("OUTPUT0", np.array([calls], np.int32))
        return [pb_utils.InferenceResponse([out]) for _ in requests]

    def finalize(self):
        with open(self.marker, "a") as file:
            file.write("finalized\\n")
"""


def test_close_calls_finalize_once_and_instances_keep_their_own_module(tmp_path: Path) -> None:
    model_dir = write_model(tmp_path, "final", ONE_IN_ONE_OUT, FINALIZE)
    first, second = load(model_dir), load(model_dir)
    for instance, expected in ((first, [1]), (first, [2]), (second, [1])):
        backend_request = request({"INPUT0": np.array([0], np.int32)}, ("OUTPUT0",))
        instance.execute([backend_request])
        [sent] = sender_of(backend_request).wait()
        assert sent.outputs is not None and sent.outputs["OUTPUT0"].tolist() == expected
    first.close()
    first.close()
    assert (model_dir / "finalized.txt").read_text() == "finalized\n"
    second.close()
    assert (model_dir / "finalized.txt").read_text() == "finalized\n" * 2
    assert not [name for name in sys.modules if re.match(r"_inferd_python_model_\d+_final\b", name)]
    with pytest.raises(EngineError) as raised:
        load(model_dir, index=1)
    assert raised.value.message == "model 'final': initialize failed: instance 1 refuses to start"


BYTES_CONFIG = """
input { name: "TEXT" data_type: TYPE_STRING dims: [ -1 ] }
output [
  { name: "UPPER" data_type: TYPE_STRING dims: [ -1 ] },
  { name: "META" data_type: TYPE_STRING dims: [ 1 ] }
]
"""
BYTES_MODEL = """
import json

import numpy as np
import triton_python_backend_utils as pb_utils

from .text import upper


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            text = pb_utils.get_input_tensor_by_name(request, "TEXT")
            assert pb_utils.get_input_tensor_by_name(request, "MISSING") is None
            assert text.is_cpu() and text.triton_dtype() == 13
            meta = {
                "request_id": request.request_id(),
                "parameters": json.loads(request.parameters()),
                "timeout": request.timeout(),
                "correlation_id": request.correlation_id(),
                "flags": request.flags(),
                "requested": request.requested_output_names(),
                "shape": text.shape(),
                "types": sorted({type(item).__name__ for item in text.as_numpy()}),
            }
            uppered = np.array([upper(item) for item in text.as_numpy()], dtype=object)
            outputs = [
                pb_utils.Tensor("UPPER", uppered),
                pb_utils.Tensor("META", np.array([json.dumps(meta)], dtype=object)),
            ]
            responses.append(pb_utils.InferenceResponse(outputs))
        return responses
"""
HELPER = """
def upper(item):
    return item.decode("utf-8").upper()  # str out: sent as UTF-8 bytes, as Triton does
"""


def test_bytes_tensors_request_metadata_and_sibling_imports(
    tmp_path: Path, loaded: list[PythonInstance]
) -> None:
    model_dir = write_model(tmp_path, "text", BYTES_CONFIG, BYTES_MODEL, {"text.py": HELPER})
    loaded.append(instance := load(model_dir))
    text = np.array([b"caf\xc3\xa9", b"ok"], dtype=object)
    backend_request = request(
        {"TEXT": text},
        ("UPPER", "META"),
        parameters={"priority": 1, "timeout": 5000, "flavour": "plain", "strict": True},
        request_id="req-7",
    )
    instance.execute([backend_request])
    [sent] = sender_of(backend_request).wait()
    assert sent.outputs is not None
    upper = sent.outputs["UPPER"]
    assert upper.dtype == object and upper.tolist() == ["CAFÉ".encode(), b"OK"]
    assert json.loads(sent.outputs["META"][0]) == {
        "request_id": "req-7",
        "parameters": {"flavour": "plain", "strict": True},  # priority/timeout are Triton's own
        "timeout": 5000,
        "correlation_id": 0,
        "flags": 0,
        "requested": ["UPPER", "META"],
        "shape": [2],
        "types": ["bytes"],
    }


@pytest.mark.parametrize(
    ("parameters", "correlation_id", "flags"),
    [
        ({"sequence_id": 42, "sequence_start": True}, 42, 1),
        ({"sequence_id": "s-1", "sequence_end": True}, "s-1", 2),
        ({"sequence_id": -1, "sequence_start": True, "sequence_end": True}, 2**64 - 1, 3),
    ],
)
def test_sequence_requests_carry_their_correlation_id_and_flags(
    tmp_path: Path,
    loaded: list[PythonInstance],
    parameters: dict[str, int | str | bool],
    correlation_id: int | str,
    flags: int,
) -> None:
    model_dir = write_model(tmp_path, "text", BYTES_CONFIG, BYTES_MODEL, {"text.py": HELPER})
    loaded.append(instance := load(model_dir))
    backend_request = request(
        {"TEXT": np.array([b"a"], dtype=object)}, ("META",), parameters=parameters
    )
    instance.execute([backend_request])
    [sent] = sender_of(backend_request).wait()
    assert sent.outputs is not None
    meta = json.loads(sent.outputs["META"][0])
    assert meta["correlation_id"] == correlation_id and meta["flags"] == flags
    assert meta["parameters"] == {}  # the sequence parameters are Triton's own


def test_the_backend_registers_pb_utils_under_tritons_name(tmp_path: Path) -> None:
    complete(write_model(tmp_path, "add_sub", ADD_SUB_CONFIG, ADD_SUB))
    assert sys.modules["triton_python_backend_utils"] is pb_utils


def test_tensor_api_and_dlpack() -> None:
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    tensor = pb_utils.Tensor("X", array[:, ::2])  # made contiguous, as Triton does
    assert tensor.name() == "X" and tensor.shape() == [2, 2] and tensor.is_cpu()
    assert tensor.as_numpy().flags.c_contiguous
    assert tensor.triton_dtype() == pb_utils.numpy_to_triton_type(np.float32) == 11

    shared = pb_utils.Tensor.from_dlpack("Y", tensor.to_dlpack())
    np.testing.assert_array_equal(shared.as_numpy(), array[:, ::2])
    assert np.shares_memory(shared.as_numpy(), tensor.as_numpy())
    np.testing.assert_array_equal(np.from_dlpack(tensor), tensor.as_numpy())

    read_only = np.frombuffer(np.arange(3, dtype=np.int64).tobytes(), dtype=np.int64)
    wrapped = pb_utils.Tensor._wrap("R", read_only)  # inputs arrive read-only from the wire
    wrapped.as_numpy()[0] = 5  # writable, as Triton's shared-memory inputs are
    assert pb_utils.Tensor.from_dlpack("Z", wrapped.to_dlpack()).as_numpy().tolist() == [5, 1, 2]

    with pytest.raises(pb_utils.TritonModelException, match="does not have support for string"):
        pb_utils.Tensor("S", np.array([b"a"], dtype=object)).to_dlpack()
    with pytest.raises(pb_utils.TritonModelException, match=r"Please use np\.object_"):
        pb_utils.Tensor("U", np.array(["text"]))
    with pytest.raises(pb_utils.TritonModelException, match="name cannot be an empty string"):
        pb_utils.Tensor("", array)


def test_type_helpers_and_constants() -> None:
    assert pb_utils.triton_string_to_numpy("TYPE_INT64") is np.int64
    assert pb_utils.triton_to_numpy_type(13) is np.object_
    assert pb_utils.numpy_to_triton_type(np.bytes_) == 13
    assert pb_utils.numpy_to_triton_type(np.complex64) is None
    assert pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL == 1
    tensor = np.array([b"ab", "c\u00e9"], dtype=object)
    serialized = pb_utils.serialize_byte_tensor(tensor)
    assert serialized is not None
    assert pb_utils.deserialize_bytes_tensor(serialized).tolist() == [b"ab", "cé".encode()]


def test_errors_requests_and_unsupported_features_say_what_they_are() -> None:
    error = pb_utils.TritonError("missing", pb_utils.TritonError.NOT_FOUND)
    assert (error.message(), error.code()) == ("missing", pb_utils.TritonError.NOT_FOUND)
    assert pb_utils.TritonError("x").code() == pb_utils.TritonError.INTERNAL
    response = pb_utils.InferenceResponse(error=error)
    assert response.has_error() and response.output_tensors() == []
    out = pb_utils.Tensor("OUT", np.zeros(1))
    assert pb_utils.get_output_tensor_by_name(pb_utils.InferenceResponse([out]), "OUT") is out
    with pytest.raises(pb_utils.TritonModelException, match="does not support BLS yet"):
        pb_utils.InferenceRequest(model_name="other", requested_output_names=[], inputs=[])
    with pytest.raises(pb_utils.TritonModelException, match="custom metrics"):
        pb_utils.MetricFamily("m", "d", pb_utils.MetricFamily.COUNTER)
    sender = pb_utils.InferenceResponseSender(lambda response, final: None, lambda: False, True)
    pb_request = pb_utils.InferenceRequest._create([], "", [], "{}", 0, sender)
    with pytest.raises(pb_utils.TritonModelException, match="request rescheduling"):
        pb_request.set_release_flags(pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)
    with pytest.raises(pb_utils.TritonModelException, match="Unsupported flag"):
        sender.send(response, flags=4)
    with pytest.raises(pb_utils.TritonModelException, match="must be provided"):
        sender.send()


def test_logger_writes_to_python_logging(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="inferd.python_model"):
        pb_utils.Logger.log_info("hello")
        pb_utils.Logger.log_warn("careful")
        pb_utils.Logger.log_verbose("details")
        pb_utils.Logger.log("bad", pb_utils.Logger.ERROR)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, "hello"),
        (logging.WARNING, "careful"),
        (logging.DEBUG, "details"),
        (logging.ERROR, "bad"),
    ]
    assert {r.filename for r in caplog.records} == {Path(__file__).name}


def test_the_repository_loads_a_python_model(tmp_path: Path) -> None:
    model_dir = write_model(tmp_path, "add_sub", ADD_SUB_CONFIG, ADD_SUB)
    loaded = load_model(model_dir)
    try:
        assert loaded.failures == {}
        assert [(e.version, e.state) for e in loaded.index_entries()] == [("1", ModelState.READY)]
    finally:
        for version in loaded.versions.values():
            version.close()
