"""Triton's model control through tritonclient: --model-control-mode none|explicit|poll,
RepositoryModelLoad (config override, uploaded files), RepositoryModelUnload and the
repository index, against real ``inferd serve`` processes."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as tritongrpc
from google.protobuf import json_format, text_format
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from inferd.engines import EngineError
from inferd.protos import grpc_service_pb2 as pb
from inferd.protos import model_config_pb2
from inferd.server import model_control
from inferd.server.grpc.repository import decode_load_request
from tests.support.model_builders import build_test_repository
from tests.support.server_process import ServerProcess
from tests.support.waiting import wait_until

WAIT_S = 30.0  # bound on every wait for the server to get somewhere
NOT_ALLOWED = "explicit model load / unload is not allowed if polling is enabled"

# A Python model that answers its config's `tag`; a request with INPUT0 > 0 first
# touches the `marker` file, then holds its instance INPUT0 seconds.
HOLDER_PY = """
import json
import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"])["parameters"]
        self.tag = int(parameters["tag"]["string_value"])
        self.marker = Path(parameters["marker"]["string_value"])

    def execute(self, requests):
        responses = []
        for request in requests:
            hold = float(pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()[0])
            if hold > 0:
                self.marker.touch()
                time.sleep(hold)
            tag = pb_utils.Tensor("OUTPUT0", np.array([self.tag], dtype=np.int32))
            responses.append(pb_utils.InferenceResponse([tag]))
        return responses
"""


def _holder_config(tag: int, marker: Path) -> dict[str, Any]:
    return {
        "name": "holder",
        "backend": "python",
        "max_batch_size": 0,
        "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": ["1"]}],
        "output": [{"name": "OUTPUT0", "data_type": "TYPE_INT32", "dims": [1]}],
        "instance_group": [{"kind": "KIND_CPU", "count": 1}],
        "parameters": {
            "tag": {"string_value": str(tag)},
            "marker": {"string_value": str(marker)},
        },
    }


def _client(server: ServerProcess) -> tritongrpc.InferenceServerClient:
    return tritongrpc.InferenceServerClient(server.address)


def _index(client: tritongrpc.InferenceServerClient) -> dict[tuple[str, str], tuple[str, str]]:
    models = client.get_model_repository_index().models
    return {(model.name, model.version): (model.state, model.reason) for model in models}


def _infer_simple(client: tritongrpc.InferenceServerClient, name: str = "simple") -> np.ndarray:
    data = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = []
    for input_name in ("INPUT0", "INPUT1"):
        tensor = tritongrpc.InferInput(input_name, [1, 16], "INT32")
        tensor.set_data_from_numpy(data)
        inputs.append(tensor)
    result = client.infer(name, inputs)
    output = result.as_numpy("OUTPUT0")
    assert output is not None
    return output


def _error(call: Callable[[], object]) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as raised:
        call()
    return raised.value


def _simple_config(repository: Path) -> model_config_pb2.ModelConfig:
    config = model_config_pb2.ModelConfig()
    text_format.Parse((repository / "simple" / "config.pbtxt").read_text(), config)
    return config


@pytest.fixture
def demo_copy(demo_repository: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(demo_repository, tmp_path / "models"))


def test_explicit_mode_loads_only_named_models(
    demo_copy: Path, start_server: Callable[..., ServerProcess]
) -> None:
    server = start_server(demo_copy, "--model-control-mode", "explicit", "--load-model", "simple")
    with _client(server) as client:
        index = _index(client)
        assert index[("simple", "1")] == ("READY", "")
        # Never loaded: listed by name only, as Triton does.
        assert index[("simple_int8", "")] == ("", "")
        assert client.is_model_ready("simple")
        assert not client.is_model_ready("simple_int8")
        assert {model.name for model in client.get_model_repository_index().models} == {
            path.name for path in demo_copy.iterdir()
        }
        listed = subprocess.run(
            [sys.executable, "-m", "inferd.server", "models", "--url", str(server.address)],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout.splitlines()  # fmt: skip
        assert "simple_int8\t-\tNOT LOADED" in listed and "simple\t1\tREADY" in listed

        client.load_model("simple_int8")
        assert client.is_model_ready("simple_int8")
        assert _index(client)[("simple_int8", "1")] == ("READY", "")

        client.unload_model("simple")  # synchronous: not ready once it returns
        assert not client.is_model_ready("simple")
        assert _index(client)[("simple", "1")] == ("UNAVAILABLE", "unloaded")
        error = _error(lambda: _infer_simple(client))
        assert "Request for unknown model: 'simple' is not found" in error.message()

        client.load_model("simple")
        assert _infer_simple(client).tolist() == [[2 * i for i in range(16)]]
        client.unload_model("not_there")  # Triton: nothing to unload is no error
        client.unload_model("simple", unload_dependents=True)
        assert not client.is_model_ready("simple")


def test_load_of_unknown_model_is_refused(
    demo_copy: Path, start_server: Callable[..., ServerProcess]
) -> None:
    server = start_server(demo_copy, "--model-control-mode", "explicit")
    with _client(server) as client:
        assert not _index(client)[("simple", "")][0]
        error = _error(lambda: client.load_model("no_such_model"))
        assert error.status() == "StatusCode.INTERNAL"
        assert error.message() == (
            "failed to load 'no_such_model', failed to poll from model repository"
        )


def test_reload_with_config_override_takes_effect(
    demo_copy: Path, start_server: Callable[..., ServerProcess]
) -> None:
    server = start_server(demo_copy, "--model-control-mode", "explicit", "--load-model", "simple")
    with _client(server) as client:
        assert client.get_model_config("simple").config.max_batch_size == 8
        config = _simple_config(demo_copy)
        config.max_batch_size = 4
        client.load_model("simple", config=json_format.MessageToJson(config))
        assert client.get_model_config("simple").config.max_batch_size == 4
        assert _infer_simple(client).shape == (1, 16)

        # Without the override the repository's config.pbtxt applies again.
        client.load_model("simple")
        assert client.get_model_config("simple").config.max_batch_size == 8

        # A version policy override, with integers written as strings (protobuf JSON).
        (demo_copy / "simple" / "2").mkdir()
        shutil.copy(demo_copy / "simple" / "1" / "model.onnx", demo_copy / "simple" / "2")
        override = json.loads(json_format.MessageToJson(_simple_config(demo_copy)))
        override["version_policy"] = {"specific": {"versions": ["1", "2"]}}
        client.load_model("simple", config=json.dumps(override))
        assert client.is_model_ready("simple", "1") and client.is_model_ready("simple", "2")

        error = _error(lambda: client.load_model("simple", config="{not json"))
        assert error.status() == "StatusCode.INVALID_ARGUMENT"
        assert error.message().startswith("Invalid config override: ")
        assert client.is_model_ready("simple", "2")  # a failed load leaves what serves


def test_failed_reload_keeps_the_serving_version(
    demo_copy: Path, start_server: Callable[..., ServerProcess]
) -> None:
    server = start_server(demo_copy, "--model-control-mode", "explicit", "--load-model", "simple")
    with _client(server) as client:
        config = _simple_config(demo_copy)
        config.input[0].data_type = model_config_pb2.TYPE_FP32  # the graph says INT32
        error = _error(
            lambda: client.load_model("simple", config=json_format.MessageToJson(config))
        )
        assert error.status() == "StatusCode.INVALID_ARGUMENT"
        assert error.message().startswith("load failed for model 'simple': ")
        assert "configuration expects datatype TYPE_FP32 for input 'INPUT0'" in error.message()
        assert _infer_simple(client).tolist() == [[2 * i for i in range(16)]]
        assert _index(client)[("simple", "1")] == ("READY", "")


def test_uploaded_files_serve_a_model(
    demo_copy: Path, start_server: Callable[..., ServerProcess]
) -> None:
    server = start_server(demo_copy, "--model-control-mode", "explicit")
    config = _simple_config(demo_copy)
    config.name = "uploaded"
    files = {"file:1/model.onnx": (demo_copy / "simple" / "1" / "model.onnx").read_bytes()}
    with _client(server) as client:
        client.load_model("uploaded", config=json_format.MessageToJson(config), files=files)
        assert client.is_model_ready("uploaded")
        assert _infer_simple(client, "uploaded").tolist() == [[2 * i for i in range(16)]]
        assert not (demo_copy / "uploaded").exists()  # never written into the repository
        client.unload_model("uploaded")
        assert not client.is_model_ready("uploaded")

        # Uploading over a repository model replaces its directory for that load.
        config.name = "simple"
        client.load_model("simple", config=json_format.MessageToJson(config), files=files)
        assert _infer_simple(client).shape == (1, 16)
    assert server.stop() == 0
    assert "Traceback" not in server.log_text()


def test_request_in_flight_finishes_during_reload(
    tmp_path: Path, start_server: Callable[..., ServerProcess]
) -> None:
    repository, marker = tmp_path / "models", tmp_path / "running"
    (repository / "holder" / "1").mkdir(parents=True)
    (repository / "holder" / "1" / "model.py").write_text(HOLDER_PY)
    config = model_config_pb2.ModelConfig()
    json_format.ParseDict(_holder_config(1, marker), config)
    (repository / "holder" / "config.pbtxt").write_text(text_format.MessageToString(config))
    server = start_server(repository, "--model-control-mode", "explicit", "--load-model", "holder")

    def tag(client: tritongrpc.InferenceServerClient, hold: float) -> int:
        tensor = tritongrpc.InferInput("INPUT0", [1], "FP32")
        tensor.set_data_from_numpy(np.array([hold], dtype=np.float32))
        output = client.infer("holder", [tensor], client_timeout=WAIT_S).as_numpy("OUTPUT0")
        assert output is not None
        return int(output[0])

    answers: list[int | BaseException] = []

    def in_flight() -> None:
        with _client(server) as client:
            try:
                answers.append(tag(client, 2.0))
            except BaseException as exc:
                answers.append(exc)

    with _client(server) as client:
        assert tag(client, 0.0) == 1
        holding = threading.Thread(target=in_flight)
        holding.start()
        wait_until(marker.exists, "the held request to start running")
        client.load_model("holder", config=json.dumps(_holder_config(2, marker)))
        assert tag(client, 0.0) == 2  # new requests: the new version
        holding.join(WAIT_S)
    assert answers == [1]  # the request that was running finished on the old version


def test_poll_mode_follows_the_repository(
    tmp_path: Path, start_server: Callable[..., ServerProcess]
) -> None:
    repository = build_test_repository(tmp_path / "models")
    server = start_server(
        repository, "--model-control-mode", "poll", "--repository-poll-secs", "0.2"
    )
    with _client(server) as client:
        assert client.is_model_ready("versioned_latest", "3")
        # A new version directory: version 4 serves, 3 is unloaded.
        shutil.copytree(
            repository / "versioned_latest" / "3", repository / "versioned_latest" / "4"
        )
        wait_until(lambda: client.is_model_ready("versioned_latest", "4"), "version 4")
        wait_until(
            lambda: _index(client)[("versioned_latest", "3")] == ("UNAVAILABLE", "unloaded"),
            "version 3 unloaded",
        )
        # A removed model goes away; a new one comes.
        shutil.rmtree(repository / "unbatched")
        wait_until(lambda: not client.is_model_ready("unbatched"), "unbatched unloaded")
        wait_until(
            lambda: "unbatched" not in {name for name, _ in _index(client)}, "unbatched unlisted"
        )
        shutil.copytree(repository / "autocomplete", tmp_path / "staging" / "added")
        (tmp_path / "staging" / "added").rename(repository / "added")
        wait_until(lambda: client.is_model_ready("added"), "the new model")

        error = _error(lambda: client.load_model("autocomplete"))
        assert (error.status(), error.message()) == ("StatusCode.UNAVAILABLE", NOT_ALLOWED)
    assert server.stop() == 0


def test_none_mode_refuses_load_and_unload(demo_server: ServerProcess) -> None:
    with _client(demo_server) as client:
        for call in (lambda: client.load_model("simple"), lambda: client.unload_model("simple")):
            error = _error(call)
            assert (error.status(), error.message()) == ("StatusCode.UNAVAILABLE", NOT_ALLOWED)
        assert client.is_model_ready("simple")


HOSTILE_NAMES = {
    "../simple": "must not contain path traversal characters",
    "..": "must not contain path traversal characters",
    "simple/../simple": "must not contain path traversal characters",
    "a/b": "must not contain path traversal characters",
    "a\\b": "must not contain path traversal characters",
    "/etc": "must not contain path traversal characters",
    ".hidden": "must not start with '.'",
    "a\x00b": "must not contain control characters",
    "x" * 256: "must be at most 255 characters",
    "": "model name must not be empty",
    " \t": "model name must not contain only whitespace characters",
}


def test_hostile_model_names_are_refused(
    demo_copy: Path, tmp_path: Path, start_server: Callable[..., ServerProcess]
) -> None:
    (tmp_path / "outside").mkdir()
    (demo_copy / "escape").symlink_to(tmp_path / "outside")  # resolves outside: refused
    server = start_server(demo_copy, "--model-control-mode", "explicit", "--load-model", "simple")
    with _client(server) as client:
        for name, expected in HOSTILE_NAMES.items():
            calls = (
                lambda name=name: client.load_model(name),
                lambda name=name: client.unload_model(name),
            )
            for call in calls:
                error = _error(call)
                assert error.status() == "StatusCode.INVALID_ARGUMENT", name
                assert expected in error.message(), (name, error.message())
        error = _error(lambda: client.load_model("escape"))
        assert "failed to poll from model repository" in error.message()
        assert _infer_simple(client).shape == (1, 16)


HOSTILE_FILES = {
    "file:../model.onnx": "expected file:<version>/<file name>",
    "file:1/../../model.onnx": "expected file:<version>/<file name>",
    "file:/etc/passwd": "expected file:<version>/<file name>",
    "file:1/a/model.onnx": "expected file:<version>/<file name>",
    "file:1\\model.onnx": "expected file:<version>/<file name>",
    "file:01/model.onnx": "expected file:<version>/<file name>",
    "file:model.onnx": "expected file:<version>/<file name>",
    "file:1/": "expected file:<version>/<file name>",
    "file:1/..": "must not start with '.'",
    "file:1/.hidden": "must not start with '.'",
    "file:1/a\x01b": "must not contain control characters",
    "file:1/" + "m" * 256: "at most 255 bytes",
}


def test_hostile_uploads_are_refused(
    demo_copy: Path, start_server: Callable[..., ServerProcess]
) -> None:
    server = start_server(demo_copy, "--model-control-mode", "explicit", "--load-model", "simple")
    config = _simple_config(demo_copy)
    config.name = "uploaded"
    config_json = json_format.MessageToJson(config)
    with _client(server) as client:
        for key, expected in HOSTILE_FILES.items():
            load = functools.partial(
                client.load_model, "uploaded", config=config_json, files={key: b"x"}
            )
            error = _error(load)
            assert error.status() == "StatusCode.INVALID_ARGUMENT", key
            assert expected in error.message(), (key, error.message())

        error = _error(lambda: client.load_model("uploaded", files={"file:1/model.onnx": b"x"}))
        assert error.message() == (
            "Load parameter 'config' must be specified for model file override"
        )
        many = {f"file:1/f{index}": b"" for index in range(model_control.MAX_UPLOAD_FILES + 1)}
        error = _error(lambda: client.load_model("uploaded", config=config_json, files=many))
        assert "too many file parameters: 257" in error.message()

        error = _error(
            lambda: client.load_model("uploaded", config=config_json, files={"file:1/x": b"x"})
        )
        assert error.message().startswith("load failed for model 'uploaded': ")
        assert not client.is_model_ready("uploaded")
        assert _infer_simple(client).shape == (1, 16)


def test_parameter_types_and_names_follow_triton(
    demo_copy: Path, start_server: Callable[..., ServerProcess]
) -> None:
    server = start_server(demo_copy, "--model-control-mode", "explicit")
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    with grpc.insecure_channel(server.address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        cases: list[tuple[Any, Any, str]] = [
            (
                stub.RepositoryModelLoad,
                service_pb2.RepositoryModelLoadRequest(
                    model_name="simple",
                    parameters={"config": service_pb2.ModelRepositoryParameter(bool_param=True)},
                ),
                "invalid value type for load parameter 'config', expected string_param.",
            ),
            (
                stub.RepositoryModelLoad,
                service_pb2.RepositoryModelLoadRequest(
                    model_name="simple",
                    parameters={"file:1/m": service_pb2.ModelRepositoryParameter(string_param="x")},
                ),
                "invalid value type for load parameter 'file:1/m', expected bytes_param.",
            ),
            (
                stub.RepositoryModelLoad,
                service_pb2.RepositoryModelLoadRequest(
                    model_name="simple",
                    parameters={"color": service_pb2.ModelRepositoryParameter(string_param="x")},
                ),
                "unrecognized load parameter 'color'.",
            ),
            (
                stub.RepositoryModelUnload,
                service_pb2.RepositoryModelUnloadRequest(
                    model_name="simple",
                    parameters={
                        "unload_dependents": service_pb2.ModelRepositoryParameter(string_param="x")
                    },
                ),
                "invalid value type for 'unload_dependents' parameter, expected bool_param.",
            ),
        ]
        for method, request, message in cases:
            with pytest.raises(grpc.RpcError) as failed:
                method(request, timeout=WAIT_S)
            assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert failed.value.details() == message
        with pytest.raises(grpc.RpcError) as failed:
            stub.RepositoryModelLoad(
                service_pb2.RepositoryModelLoadRequest(model_name="simple", repository_name="r"),
                timeout=WAIT_S,
            )
        assert failed.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert failed.value.details() == "'repository_name' specification is not supported"


def test_upload_bytes_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_control, "MAX_UPLOAD_BYTES", 10)
    request = pb.RepositoryModelLoadRequest(model_name="m")
    request.parameters["config"].string_param = "{}"
    request.parameters["file:1/a"].bytes_param = b"123456"
    request.parameters["file:1/b"].bytes_param = b"123456"
    with pytest.raises(EngineError) as raised:
        decode_load_request(request)
    assert raised.value.message == "file parameters hold 12 bytes, at most 10 per load"


def test_startup_flags_are_checked() -> None:
    mode = model_control.ModelControlMode
    assert model_control.startup_models(mode.NONE, ()) is None
    assert model_control.startup_models(mode.EXPLICIT, ("*",)) is None
    assert model_control.startup_models(mode.EXPLICIT, ("a", "b")) == ("a", "b")
    with pytest.raises(ValueError, match="only allowed with --model-control-mode explicit"):
        model_control.startup_models(mode.POLL, ("a",))
    with pytest.raises(ValueError, match="must be the ONLY startup model"):
        model_control.startup_models(mode.EXPLICIT, ("*", "a"))
    with pytest.raises(ValueError, match="path traversal"):
        model_control.startup_models(mode.EXPLICIT, ("../a",))


def test_bad_flags_stop_the_server_before_it_serves(
    demo_copy: Path, start_server: Callable[..., ServerProcess]
) -> None:
    for flags in (
        ("--model-control-mode", "poll", "--repository-poll-secs", "0"),
        ("--load-model", "simple"),
    ):
        server = start_server(demo_copy, *flags, wait=False)
        assert server.wait() == 1
        assert "--" in server.log_text()


def test_explicit_mode_can_load_everything_at_start(
    demo_copy: Path, start_server: Callable[..., ServerProcess]
) -> None:
    server = start_server(demo_copy, "--model-control-mode", "explicit", "--load-model", "*")
    with _client(server) as client:
        states = _index(client)
        assert all(state == "READY" for state, _ in states.values()), states
        client.unload_model("simple")
        assert not client.is_model_ready("simple")


def test_requests_never_fail_across_reloads(
    demo_copy: Path, start_server: Callable[..., ServerProcess]
) -> None:
    """Clients keep sending while the model is reloaded again and again: every request
    is answered, by the old version or the new one."""
    server = start_server(demo_copy, "--model-control-mode", "explicit", "--load-model", "simple")
    stop = threading.Event()
    answered: list[int] = []
    failures: list[BaseException] = []

    def send() -> None:
        with _client(server) as client:
            while not stop.is_set():
                try:
                    _infer_simple(client)
                    answered.append(1)
                except BaseException as exc:
                    failures.append(exc)
                    return

    senders = [threading.Thread(target=send) for _ in range(4)]
    for sender in senders:
        sender.start()
    config = _simple_config(demo_copy)
    try:
        with _client(server) as client:
            wait_until(lambda: len(answered) > 0, "the first answers")
            for max_batch_size in (4, 8, 2, 8):
                config.max_batch_size = max_batch_size
                client.load_model("simple", config=json_format.MessageToJson(config))
                assert client.get_model_config("simple").config.max_batch_size == max_batch_size
    finally:
        stop.set()
        for sender in senders:
            sender.join(WAIT_S)
    assert failures == []
    assert answered
