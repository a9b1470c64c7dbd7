"""Wire compatibility with Triton's own Python client, ``tritonclient.grpc``, over real loopback.

Every test talks to a real ``inferd serve`` subprocess (the session's ``demo_server`` and
``test_server``, or one started for the test). Requests are built by tritonclient where it
can build them; where it cannot (typed ``*_contents`` fields, malformed tensors, reserved
parameters), they are built from tritonclient's own generated protobuf modules and sent on a
plain grpc channel, as any other Triton client would. Error cases check the status code, the
exact message (Triton's wording where Triton has one) and that the server still serves.
"""

from __future__ import annotations

import importlib.metadata
import math
import queue
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tritongrpc
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.support.model_builders import DATATYPES

NO_ID = "[request id: <id_unknown>] "
BATCH_NOTE = (
    "NOTE: Setting a non-zero max_batch_size in the model config requires a batch dimension "
    "to be prepended to each input shape. If you want to specify the full shape including "
    "the batch dim in your input dims config, try setting max_batch_size to zero. See the "
    "model configuration docs for more info on max_batch_size."
)
CALL_TIMEOUT_S = 30.0
# Written out here rather than imported from inferd.protos.datatypes: the wire test checks
# inferd against the protocol, so it must not share inferd's own table.
NUMPY_DTYPES = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
# The elements a C-string, text or length-prefix bug would mangle: embedded and lone NULs,
# empty strings, non-UTF-8 bytes, multi-byte UTF-8 and one element longer than 255 bytes.
AWKWARD_BYTES = [
    b"",
    b"\x00",
    b"a\x00b",
    b"\xff\xfe\x00a",
    "é€😀".encode(),
    b"",
    b"\x00\x00\x00\x00",
    b"x" * 300,
    b"plain",
    b"\x80",
    b"\n\r\t",
    b"\xc3",
    b"",
    b"end\x00",
    b"\x01\x02\x03\x04",
]


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_client(demo_server: Any) -> Iterator[tritongrpc.InferenceServerClient]:
    client = tritongrpc.InferenceServerClient(demo_server.address)
    yield client
    client.close()


@pytest.fixture(scope="module")
def test_client(test_server: Any) -> Iterator[tritongrpc.InferenceServerClient]:
    client = tritongrpc.InferenceServerClient(test_server.address)
    yield client
    client.close()


def _stub(address: str) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    channel = grpc.insecure_channel(address)
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


@pytest.fixture(scope="module")
def demo_stub(demo_server: Any) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    yield from _stub(demo_server.address)


@pytest.fixture(scope="module")
def test_stub(test_server: Any) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    yield from _stub(test_server.address)


# --- helpers ----------------------------------------------------------------------------


def _input(name: str, array: np.ndarray, datatype: str) -> tritongrpc.InferInput:
    tensor = tritongrpc.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def _simple_inputs(
    input0: np.ndarray, input1: np.ndarray, datatype: str = "INT32"
) -> list[tritongrpc.InferInput]:
    return [_input("INPUT0", input0, datatype), _input("INPUT1", input1, datatype)]


def _run(
    client: tritongrpc.InferenceServerClient, mode: str, model: str, inputs: list, **kwargs: Any
) -> tritongrpc.InferResult:
    """``infer``, or ``async_infer`` waited on: both raise InferenceServerException."""
    if mode == "infer":
        return client.infer(model, inputs, client_timeout=CALL_TIMEOUT_S, **kwargs)
    answers: queue.Queue = queue.Queue()
    client.async_infer(
        model,
        inputs,
        callback=lambda result, error: answers.put((result, error)),
        client_timeout=CALL_TIMEOUT_S,
        **kwargs,
    )
    result, error = answers.get(timeout=CALL_TIMEOUT_S + 5)
    if error is not None:
        raise error
    return result


def _assert_simple_serves(client: tritongrpc.InferenceServerClient) -> None:
    """The server still answers a good request correctly."""
    input0 = np.arange(16, dtype=np.int32).reshape(1, 16)
    input1 = np.full((1, 16), 3, dtype=np.int32)
    result = client.infer("simple", _simple_inputs(input0, input1), client_timeout=CALL_TIMEOUT_S)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), input0 + input1)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), input0 - input1)


def _assert_message(message: str, expected: str, match: str) -> None:
    if match == "exact":
        assert message == expected
    elif match == "prefix":
        assert message.startswith(expected), message
    else:
        assert expected in message, message


def _triton_error(call: Callable[[], object]) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


def _rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def _sample(datatype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Values covering each type's edge cases: extremes, signed zero, inf, nan, subnormals."""
    count = math.prod(shape)
    rng = np.random.default_rng(seed)
    dtype: Any = NUMPY_DTYPES[datatype]
    if datatype == "BYTES":
        elements = (AWKWARD_BYTES * (count // len(AWKWARD_BYTES) + 1))[:count]
        array = np.empty(count, dtype=np.object_)
        array[:] = elements
        return array.reshape(shape)
    if datatype == "BOOL":
        return (rng.integers(0, 2, count) == 1).reshape(shape)
    if dtype.kind in "iu":
        limits = np.iinfo(dtype)
        flat = rng.integers(limits.min, limits.max, count, dtype=dtype, endpoint=True)
        flat[: min(3, count)] = [limits.min, limits.max, 0][:count]
        return flat.reshape(shape)
    info = np.finfo(dtype)
    flat = (rng.standard_normal(count) * 1000).astype(dtype)
    specials = [np.inf, -np.inf, -0.0, np.nan, info.smallest_subnormal, info.max, info.min]
    flat[: min(len(specials), count)] = np.array(specials, dtype=dtype)[:count]
    return flat.reshape(shape)


def _assert_identical(got: np.ndarray | None, sent: np.ndarray) -> None:
    assert got is not None
    assert got.dtype == sent.dtype
    assert got.shape == sent.shape
    if sent.dtype == np.object_:
        assert got.ravel().tolist() == sent.ravel().tolist()
    else:
        assert got.tobytes() == sent.tobytes()  # bit-exact, nan payloads and -0.0 included


# --- 1. health, metadata, config, repository index ------------------------------------------


def test_health(demo_client: tritongrpc.InferenceServerClient) -> None:
    assert demo_client.is_server_live() is True
    assert demo_client.is_server_ready() is True
    assert demo_client.is_model_ready("simple") is True
    assert demo_client.is_model_ready("simple", "1") is True
    # Unknown models and versions answer False, never an error...
    assert demo_client.is_model_ready("nope") is False
    assert demo_client.is_model_ready("simple", "7") is False
    # ...but a version that is not a number is a bad request, as in Triton.
    error = _triton_error(lambda: demo_client.is_model_ready("simple", "abc"))
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "version string 'abc'" in error.message()


def test_model_readiness_by_version_and_for_broken_models(
    test_client: tritongrpc.InferenceServerClient,
) -> None:
    for version in ("", "1", "2", "3"):
        assert test_client.is_model_ready("versioned_all", version) is True
    assert test_client.is_model_ready("versioned_latest", "3") is True
    assert test_client.is_model_ready("versioned_latest", "1") is False
    assert test_client.is_model_ready("versioned_specific", "2") is False
    for broken in ("broken_config", "broken_onnx", "broken_mismatch"):
        assert test_client.is_model_ready(broken) is False


def test_server_metadata(demo_client: tritongrpc.InferenceServerClient) -> None:
    metadata = demo_client.get_server_metadata()
    assert metadata.name == "inferd"
    assert metadata.version == importlib.metadata.version("inferd")
    assert list(metadata.extensions) == [
        "classification",
        "model_configuration",
        "model_repository",
        "model_repository(unload_dependents)",
        "schedule_policy",
        "sequence",
        "statistics",
        "trace",
    ]
    as_json = demo_client.get_server_metadata(as_json=True)
    assert as_json["name"] == "inferd"


def test_model_metadata(demo_client: tritongrpc.InferenceServerClient) -> None:
    metadata = demo_client.get_model_metadata("simple")
    assert metadata.name == "simple"
    assert list(metadata.versions) == ["1"]
    assert metadata.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        ("INPUT0", "INT32", [-1, 16]),
        ("INPUT1", "INT32", [-1, 16]),
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [
        ("OUTPUT0", "INT32", [-1, 16]),
        ("OUTPUT1", "INT32", [-1, 16]),
    ]
    cnn = demo_client.get_model_metadata("cnn_classifier", "1")
    assert [(t.name, t.datatype, list(t.shape)) for t in cnn.inputs] == [
        ("INPUT", "FP32", [-1, 3, 32, 32])
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in cnn.outputs] == [
        ("OUTPUT", "FP32", [-1, 10])
    ]
    strings = demo_client.get_model_metadata("simple_string")
    assert {t.datatype for t in (*strings.inputs, *strings.outputs)} == {"BYTES"}


def test_model_metadata_versions_and_unbatched_shapes(
    test_client: tritongrpc.InferenceServerClient,
) -> None:
    assert list(test_client.get_model_metadata("versioned_all").versions) == ["1", "2", "3"]
    assert list(test_client.get_model_metadata("versioned_all", "2").versions) == ["2"]
    assert list(test_client.get_model_metadata("versioned_latest").versions) == ["3"]
    assert list(test_client.get_model_metadata("versioned_specific").versions) == ["1", "3"]
    unbatched = test_client.get_model_metadata("unbatched")
    assert [(t.name, t.datatype, list(t.shape)) for t in unbatched.inputs] == [
        ("INPUT0", "FP32", [-1])
    ]
    error = _triton_error(lambda: test_client.get_model_metadata("versioned_latest", "1"))
    assert error.status() == "StatusCode.NOT_FOUND"
    assert error.message() == "Request for unknown model: 'versioned_latest' version 1 is not found"
    error = _triton_error(lambda: test_client.get_model_metadata("nope"))
    assert error.status() == "StatusCode.NOT_FOUND"
    assert error.message() == "Request for unknown model: 'nope' is not found"


def test_model_config(demo_client: tritongrpc.InferenceServerClient) -> None:
    config = demo_client.get_model_config("simple").config
    assert config.name == "simple"
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 8
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [
        ("INPUT0", model_config_pb2.TYPE_INT32, [16]),
        ("INPUT1", model_config_pb2.TYPE_INT32, [16]),
    ]
    assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == [
        ("OUTPUT0", model_config_pb2.TYPE_INT32, [16]),
        ("OUTPUT1", model_config_pb2.TYPE_INT32, [16]),
    ]
    as_json = demo_client.get_model_config("simple_string", as_json=True)
    assert as_json["config"]["input"][0]["data_type"] == "TYPE_STRING"


def test_autocompleted_model_config(test_client: tritongrpc.InferenceServerClient) -> None:
    # No config.pbtxt at all: everything below comes from the ONNX graph.
    config = test_client.get_model_config("autocomplete").config
    assert config.name == "autocomplete"
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 4
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [
        ("INPUT0", model_config_pb2.TYPE_INT32, [4])
    ]
    assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == [
        ("OUTPUT0", model_config_pb2.TYPE_INT32, [4])
    ]
    assert len(config.instance_group) == 1
    assert config.instance_group[0].count == 2
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU

    # ...and it serves: OUTPUT0 = INPUT0 + 0.
    data = np.array([[1, -2, 3, 2**31 - 1]], dtype=np.int32)
    result = test_client.infer("autocomplete", [_input("INPUT0", data, "INT32")])
    _assert_identical(result.as_numpy("OUTPUT0"), data)


def _index(entries: Any) -> dict[tuple[str, str], tuple[str, str]]:
    return {(m.name, m.version): (m.state, m.reason) for m in entries}


def test_repository_index(
    test_client: tritongrpc.InferenceServerClient,
    test_stub: service_pb2_grpc.GRPCInferenceServiceStub,
) -> None:
    index = _index(test_client.get_model_repository_index().models)

    for datatype in DATATYPES:
        assert index[(f"identity_{datatype.lower()}", "1")] == ("READY", "")
    for version in ("1", "2", "3"):
        assert index[("versioned_all", version)] == ("READY", "")
    assert index[("versioned_latest", "3")] == ("READY", "")
    assert index[("versioned_specific", "1")] == ("READY", "")
    assert index[("versioned_specific", "3")] == ("READY", "")
    ready_versions = {(name, v) for (name, v), (state, _) in index.items() if state == "READY"}
    assert {v for name, v in ready_versions if name == "versioned_latest"} == {"3"}
    assert {v for name, v in ready_versions if name == "versioned_specific"} == {"1", "3"}
    for name in ("autocomplete", "unbatched", "slow"):
        assert index[(name, "1")] == ("READY", "")

    broken = {name: (state, reason) for (name, _), (state, reason) in index.items()}
    for name in ("broken_config", "broken_onnx", "broken_mismatch"):
        assert broken[name][0] == "UNAVAILABLE"
        assert broken[name][1], f"{name} has no reason"
    assert "config.pbtxt" in broken["broken_config"][1]
    assert "parse" in broken["broken_config"][1]
    assert "model.onnx" in broken["broken_onnx"][1]
    assert "protobuf" in broken["broken_onnx"][1].lower()
    mismatch = broken["broken_mismatch"][1]
    assert "INPUT0" in mismatch and "TYPE_INT32" in mismatch and "TYPE_FP32" in mismatch

    # tritonclient's get_model_repository_index() cannot ask for ready models only.
    ready = _index(
        test_stub.RepositoryIndex(
            service_pb2.RepositoryIndexRequest(ready=True), timeout=CALL_TIMEOUT_S
        ).models
    )
    assert ready == {key: value for key, value in index.items() if value[0] == "READY"}
    assert not any(name.startswith("broken_") for name, _ in ready)


# --- 2. every datatype round-trips exactly, with infer and async_infer --------------------


@pytest.mark.parametrize("mode", ["infer", "async_infer"])
@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_identity_round_trip_for_every_datatype(
    test_client: tritongrpc.InferenceServerClient, datatype: str, mode: str
) -> None:
    model = f"identity_{datatype.lower()}"
    for shape in [(1, 15), (3, 5), (8, 2)]:  # batch 1, batch > 1, the maximum batch
        sent = _sample(datatype, shape, seed=shape[0])
        request_id = f"{mode}-{datatype}-{shape[0]}"
        result = _run(
            test_client, mode, model, [_input("INPUT0", sent, datatype)], request_id=request_id
        )
        response = result.get_response()
        assert response.model_name == model
        assert response.model_version == "1"
        assert response.id == request_id
        output = result.get_output("OUTPUT0")
        assert output.datatype == datatype
        assert list(output.shape) == list(shape)
        _assert_identical(result.as_numpy("OUTPUT0"), sent)


@pytest.mark.parametrize("mode", ["infer", "async_infer"])
def test_awkward_bytes_elements_round_trip(
    demo_client: tritongrpc.InferenceServerClient, mode: str
) -> None:
    sent = np.array(
        [[b"\xff\xfe\x00a", b"", b"a\x00b"], [b"\x00", "é".encode(), b""]], dtype=np.object_
    )
    result = _run(demo_client, mode, "simple_identity", [_input("INPUT0", sent, "BYTES")])
    _assert_identical(result.as_numpy("OUTPUT0"), sent)
    # One element, all of it empty: the raw buffer is just a zero length.
    empty = np.array([[b""]], dtype=np.object_)
    result = _run(demo_client, mode, "simple_identity", [_input("INPUT0", empty, "BYTES")])
    _assert_identical(result.as_numpy("OUTPUT0"), empty)


def test_async_infer_reports_errors_through_the_callback(
    demo_client: tritongrpc.InferenceServerClient,
) -> None:
    data = np.zeros((1, 16), np.int32)
    error = _triton_error(
        lambda: _run(demo_client, "async_infer", "nope", _simple_inputs(data, data))
    )
    assert error.status() == "StatusCode.NOT_FOUND"
    assert error.message() == "Request for unknown model: 'nope' is not found"
    _assert_simple_serves(demo_client)


# --- 3. results match onnxruntime run directly ------------------------------------------


def _onnxruntime(repository: Path, model: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(
        str(repository / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    return session.run(None, feeds)


@pytest.mark.parametrize("mode", ["infer", "async_infer"])
def test_simple_matches_onnxruntime(
    demo_client: tritongrpc.InferenceServerClient, demo_repository: Path, mode: str
) -> None:
    rng = np.random.default_rng(1)
    input0 = rng.integers(-(2**31), 2**31 - 1, (4, 16), dtype=np.int32, endpoint=True)
    input1 = rng.integers(-(2**31), 2**31 - 1, (4, 16), dtype=np.int32, endpoint=True)
    expected = _onnxruntime(demo_repository, "simple", {"INPUT0": input0, "INPUT1": input1})
    result = _run(demo_client, mode, "simple", _simple_inputs(input0, input1))
    _assert_identical(result.as_numpy("OUTPUT0"), expected[0])
    _assert_identical(result.as_numpy("OUTPUT1"), expected[1])


def test_simple_int8_matches_onnxruntime(
    demo_client: tritongrpc.InferenceServerClient, demo_repository: Path
) -> None:
    rng = np.random.default_rng(2)
    input0 = rng.integers(-128, 127, (2, 16), dtype=np.int8, endpoint=True)
    input1 = rng.integers(-128, 127, (2, 16), dtype=np.int8, endpoint=True)
    expected = _onnxruntime(demo_repository, "simple_int8", {"INPUT0": input0, "INPUT1": input1})
    result = demo_client.infer("simple_int8", _simple_inputs(input0, input1, "INT8"))
    _assert_identical(result.as_numpy("OUTPUT0"), expected[0])
    _assert_identical(result.as_numpy("OUTPUT1"), expected[1])


def test_simple_string_matches_onnxruntime(
    demo_client: tritongrpc.InferenceServerClient, demo_repository: Path
) -> None:
    rng = np.random.default_rng(3)
    numbers0 = rng.integers(-1000, 1000, (3, 16))
    numbers1 = rng.integers(-1000, 1000, (3, 16))
    as_text = np.vectorize(str, otypes=[np.object_])
    expected = _onnxruntime(
        demo_repository, "simple_string", {"INPUT0": as_text(numbers0), "INPUT1": as_text(numbers1)}
    )
    as_bytes = np.vectorize(lambda n: str(n).encode(), otypes=[np.object_])
    result = demo_client.infer(
        "simple_string", _simple_inputs(as_bytes(numbers0), as_bytes(numbers1), "BYTES")
    )
    for name, want in zip(("OUTPUT0", "OUTPUT1"), expected, strict=True):
        got = result.as_numpy(name)
        assert got is not None and got.shape == (3, 16)
        assert got.ravel().tolist() == [text.encode() for text in want.ravel()]
    # ...and the strings are the decimal sum and difference.
    assert result.as_numpy("OUTPUT0")[0, 0] == str(numbers0[0, 0] + numbers1[0, 0]).encode()
    assert result.as_numpy("OUTPUT1")[2, 15] == str(numbers0[2, 15] - numbers1[2, 15]).encode()


def test_cnn_classifier_matches_onnxruntime(
    demo_client: tritongrpc.InferenceServerClient, demo_repository: Path
) -> None:
    images = np.random.default_rng(4).standard_normal((5, 3, 32, 32)).astype(np.float32)
    (expected,) = _onnxruntime(demo_repository, "cnn_classifier", {"INPUT": images})
    result = demo_client.infer("cnn_classifier", [_input("INPUT", images, "FP32")])
    got = result.as_numpy("OUTPUT")
    assert got is not None and got.dtype == np.float32 and got.shape == (5, 10)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)  # softmax


def test_classification_returns_top_k_strings(
    demo_client: tritongrpc.InferenceServerClient, demo_repository: Path
) -> None:
    images = np.random.default_rng(5).standard_normal((2, 3, 32, 32)).astype(np.float32)
    (scores,) = _onnxruntime(demo_repository, "cnn_classifier", {"INPUT": images})
    result = demo_client.infer(
        "cnn_classifier",
        [_input("INPUT", images, "FP32")],
        outputs=[tritongrpc.InferRequestedOutput("OUTPUT", class_count=3)],
    )
    got = result.as_numpy("OUTPUT")
    assert got is not None and got.shape == (2, 3)
    for row, row_scores in zip(got, scores, strict=True):
        indices = [int(entry.decode().split(":")[1]) for entry in row]
        assert indices == list(np.argsort(-row_scores, kind="stable")[:3])
        values = [float(entry.decode().split(":")[0]) for entry in row]
        np.testing.assert_allclose(values, row_scores[indices], atol=1e-6)


def test_classification_of_bytes_output_is_refused(
    test_client: tritongrpc.InferenceServerClient,
) -> None:
    values = np.array([[b"a", b"b"]], dtype=np.object_)
    error = _triton_error(
        lambda: test_client.infer(
            "identity_bytes",
            [_input("INPUT0", values, "BYTES")],
            outputs=[tritongrpc.InferRequestedOutput("OUTPUT0", class_count=1)],
        )
    )
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert error.message() == (
        "class result not available for output due to unsupported type 'BYTES'"
    )


# --- 4. requested outputs, request ids, versions, unbatched models ------------------------


def test_requested_output_subset(demo_client: tritongrpc.InferenceServerClient) -> None:
    input0 = np.arange(16, dtype=np.int32).reshape(1, 16)
    input1 = np.full((1, 16), 5, dtype=np.int32)
    result = demo_client.infer(
        "simple",
        _simple_inputs(input0, input1),
        outputs=[tritongrpc.InferRequestedOutput("OUTPUT1")],
    )
    response = result.get_response()
    assert [output.name for output in response.outputs] == ["OUTPUT1"]
    assert len(response.raw_output_contents) == 1
    assert result.get_output("OUTPUT0") is None
    _assert_identical(result.as_numpy("OUTPUT1"), input0 - input1)

    both = demo_client.infer(
        "simple",
        _simple_inputs(input0, input1),
        outputs=[
            tritongrpc.InferRequestedOutput("OUTPUT1"),
            tritongrpc.InferRequestedOutput("OUTPUT0"),
        ],
    )
    _assert_identical(both.as_numpy("OUTPUT0"), input0 + input1)
    _assert_identical(both.as_numpy("OUTPUT1"), input0 - input1)


@pytest.mark.parametrize("mode", ["infer", "async_infer"])
def test_request_id_is_echoed(demo_client: tritongrpc.InferenceServerClient, mode: str) -> None:
    data = np.ones((2, 16), np.int32)
    result = _run(demo_client, mode, "simple", _simple_inputs(data, data), request_id="req-42 é")
    assert result.get_response().id == "req-42 é"
    without = _run(demo_client, mode, "simple", _simple_inputs(data, data))
    assert without.get_response().id == ""


@pytest.mark.parametrize(
    ("model", "version", "served"),
    [
        ("versioned_all", "1", 1),
        ("versioned_all", "2", 2),
        ("versioned_all", "3", 3),
        ("versioned_all", "", 3),
        ("versioned_latest", "3", 3),
        ("versioned_latest", "", 3),
        ("versioned_specific", "1", 1),
        ("versioned_specific", "3", 3),
        ("versioned_specific", "", 3),
    ],
)
def test_model_version_selection(
    test_client: tritongrpc.InferenceServerClient, model: str, version: str, served: int
) -> None:
    data = np.array([[0, 10, -10, 100], [1, 2, 3, 4]], dtype=np.int32)
    result = test_client.infer(model, [_input("INPUT0", data, "INT32")], model_version=version)
    assert result.get_response().model_version == str(served)
    _assert_identical(result.as_numpy("OUTPUT0"), data + served)


@pytest.mark.parametrize(
    ("model", "version"),
    [("versioned_latest", "1"), ("versioned_latest", "2"), ("versioned_specific", "2")],
)
def test_version_not_loaded_is_not_found(
    test_client: tritongrpc.InferenceServerClient, model: str, version: str
) -> None:
    data = np.zeros((1, 4), np.int32)
    error = _triton_error(
        lambda: test_client.infer(model, [_input("INPUT0", data, "INT32")], model_version=version)
    )
    assert error.status() == "StatusCode.NOT_FOUND"
    assert error.message() == f"Request for unknown model: '{model}' version {version} is not found"
    result = test_client.infer(model, [_input("INPUT0", data, "INT32")])
    _assert_identical(result.as_numpy("OUTPUT0"), data + 3)


def test_unbatched_model(test_client: tritongrpc.InferenceServerClient) -> None:
    config = test_client.get_model_config("unbatched").config
    assert config.max_batch_size == 0
    for length in (1, 7, 1000):
        data = _sample("FP32", (length,), seed=length)
        result = test_client.infer("unbatched", [_input("INPUT0", data, "FP32")])
        assert list(result.get_output("OUTPUT0").shape) == [length]
        _assert_identical(result.as_numpy("OUTPUT0"), data)

    # A leading batch dimension is just a wrong shape here, and no batching note is added.
    batched = np.zeros((1, 5), np.float32)
    error = _triton_error(
        lambda: test_client.infer("unbatched", [_input("INPUT0", batched, "FP32")])
    )
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert error.message() == (
        NO_ID + "unexpected shape for input 'INPUT0' for model 'unbatched'. Expected [-1], "
        "got [1,5]. "
    )


# --- 5. typed contents, built by hand -----------------------------------------------------

# datatype -> the typed field that carries it and values at the edges of its range.
TYPED_CONTENTS: dict[str, tuple[str, list]] = {
    "BOOL": ("bool_contents", [True, False, True]),
    "UINT8": ("uint_contents", [0, 255, 7]),
    "UINT16": ("uint_contents", [0, 65535, 7]),
    "UINT32": ("uint_contents", [0, 2**32 - 1, 7]),
    "UINT64": ("uint64_contents", [0, 2**64 - 1, 2**53 + 1]),
    "INT8": ("int_contents", [-128, 127, 0]),
    "INT16": ("int_contents", [-(2**15), 2**15 - 1, 0]),
    "INT32": ("int_contents", [-(2**31), 2**31 - 1, 0]),
    "INT64": ("int64_contents", [-(2**63), 2**63 - 1, 2**53 + 1]),
    "FP32": ("fp32_contents", [1.5, -0.0, float("inf")]),
    "FP64": ("fp64_contents", [1e300, -0.1, float("-inf")]),
    "BYTES": ("bytes_contents", [b"a\x00b", b"", b"\xff\xfe\x00a"]),
}


def _assert_raw_only(response: service_pb2.ModelInferResponse) -> None:
    """Outputs come raw, one buffer per outputs[] entry, never in typed contents."""
    assert len(response.outputs) == len(response.raw_output_contents)
    for output in response.outputs:
        assert not output.HasField("contents")


@pytest.mark.parametrize("datatype", list(TYPED_CONTENTS))
def test_typed_contents_for_every_datatype(
    test_stub: service_pb2_grpc.GRPCInferenceServiceStub, datatype: str
) -> None:
    field, values = TYPED_CONTENTS[datatype]
    request = service_pb2.ModelInferRequest(
        model_name=f"identity_{datatype.lower()}", id=f"typed-{datatype}"
    )
    tensor = request.inputs.add(name="INPUT0", datatype=datatype, shape=[1, len(values)])
    getattr(tensor.contents, field).extend(values)

    response = test_stub.ModelInfer(request, timeout=CALL_TIMEOUT_S)

    assert response.id == f"typed-{datatype}"
    _assert_raw_only(response)
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("OUTPUT0", datatype, [1, len(values)])
    ]
    if datatype == "BYTES":
        expected = b"".join(struct.pack("<I", len(v)) + v for v in values)
    else:
        expected = np.array(values, dtype=NUMPY_DTYPES[datatype]).tobytes()
    assert response.raw_output_contents[0] == expected


def test_typed_contents_on_a_model_with_two_outputs(
    demo_stub: service_pb2_grpc.GRPCInferenceServiceStub,
) -> None:
    input0 = list(range(-8, 24, 2))
    input1 = list(range(16))
    request = service_pb2.ModelInferRequest(model_name="simple")
    for name, values in (("INPUT0", input0), ("INPUT1", input1)):
        tensor = request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        tensor.contents.int_contents.extend(values)

    response = demo_stub.ModelInfer(request, timeout=CALL_TIMEOUT_S)

    _assert_raw_only(response)
    # Positionally aligned, in the model's output order.
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("OUTPUT0", "INT32", [1, 16]),
        ("OUTPUT1", "INT32", [1, 16]),
    ]
    a, b = np.array(input0, np.int32), np.array(input1, np.int32)
    assert response.raw_output_contents[0] == (a + b).tobytes()
    assert response.raw_output_contents[1] == (a - b).tobytes()


def test_typed_bytes_contents_on_simple_string(
    demo_stub: service_pb2_grpc.GRPCInferenceServiceStub,
) -> None:
    request = service_pb2.ModelInferRequest(model_name="simple_string")
    for name, values in (("INPUT0", range(16)), ("INPUT1", [2] * 16)):
        tensor = request.inputs.add(name=name, datatype="BYTES", shape=[1, 16])
        tensor.contents.bytes_contents.extend(str(v).encode() for v in values)

    response = demo_stub.ModelInfer(request, timeout=CALL_TIMEOUT_S)

    _assert_raw_only(response)
    assert [o.name for o in response.outputs] == ["OUTPUT0", "OUTPUT1"]

    def encoded(numbers: Any) -> bytes:
        return b"".join(struct.pack("<I", len(s)) + s for s in (str(n).encode() for n in numbers))

    assert response.raw_output_contents[0] == encoded(v + 2 for v in range(16))
    assert response.raw_output_contents[1] == encoded(v - 2 for v in range(16))


# --- 6. bad requests: status, message, and the server keeps serving -----------------------

_I0 = np.arange(16, dtype=np.int32).reshape(1, 16)


def _simple_call(inputs: list[tritongrpc.InferInput], **kwargs: Any):
    return lambda client: client.infer("simple", inputs, client_timeout=CALL_TIMEOUT_S, **kwargs)


def _short_input0() -> list[tritongrpc.InferInput]:
    """INPUT0 declared [1,16] but carrying 15 elements (60 bytes)."""
    short = tritongrpc.InferInput("INPUT0", [1, 15], "INT32")
    short.set_data_from_numpy(_I0[:, :15])
    short.set_shape([1, 16])
    return [short, _input("INPUT1", _I0, "INT32")]


TRITONCLIENT_ERRORS = [
    pytest.param(
        lambda client: client.infer("nope", _simple_inputs(_I0, _I0)),
        "NOT_FOUND",
        "Request for unknown model: 'nope' is not found",
        "exact",
        id="unknown-model",
    ),
    pytest.param(
        _simple_call(_simple_inputs(_I0, _I0), model_version="7"),
        "NOT_FOUND",
        "Request for unknown model: 'simple' version 7 is not found",
        "exact",
        id="unknown-version",
    ),
    pytest.param(
        _simple_call(_simple_inputs(_I0, _I0), model_version="abc"),
        "INVALID_ARGUMENT",
        "failed to get model version from specified version string 'abc' (details: stol), "
        "version should be an integral value > 0",
        "exact",
        id="version-not-a-number",
    ),
    pytest.param(
        _simple_call(_simple_inputs(_I0, _I0), model_version="-1"),
        "INVALID_ARGUMENT",
        "invalid model version specified '-1' , version should be an integral value > 0",
        "exact",
        id="version-negative",
    ),
    pytest.param(
        _simple_call([_input("INPUT0", _I0, "INT32"), _input("FOO", _I0, "INT32")]),
        "INVALID_ARGUMENT",
        "unexpected inference input 'FOO' for model 'simple'",
        "exact",
        id="unknown-input",
    ),
    pytest.param(
        _simple_call([_input("INPUT0", _I0, "INT32")]),
        "INVALID_ARGUMENT",
        NO_ID + "expected 2 inputs but got 1 inputs for model 'simple'. Got input(s) "
        "['INPUT0'], but missing required input(s) ['INPUT1']. Please provide all required "
        "input(s).",
        "exact",
        id="missing-input",
    ),
    pytest.param(
        _simple_call([_input("INPUT0", _I0, "INT32"), _input("INPUT0", _I0, "INT32")]),
        "INVALID_ARGUMENT",
        NO_ID + "input 'INPUT0' already exists in request",
        "exact",
        id="duplicate-input",
    ),
    pytest.param(
        _simple_call(_simple_inputs(_I0, _I0), outputs=[tritongrpc.InferRequestedOutput("NOPE")]),
        "INVALID_ARGUMENT",
        "unexpected inference output 'NOPE' for model 'simple'",
        "exact",
        id="unknown-output",
    ),
    pytest.param(
        _simple_call(
            [_input("INPUT0", _I0.astype(np.float32), "FP32"), _input("INPUT1", _I0, "INT32")]
        ),
        "INVALID_ARGUMENT",
        NO_ID + "inference input 'INPUT0' data-type is 'FP32', but model 'simple' expects 'INT32'",
        "exact",
        id="wrong-datatype",
    ),
    pytest.param(
        _simple_call(_simple_inputs(_I0[:, :15], _I0[:, :15])),
        "INVALID_ARGUMENT",
        NO_ID + "unexpected shape for input 'INPUT0' for model 'simple'. Expected [-1,16], got "
        "[1,15]. " + BATCH_NOTE,
        "exact",
        id="wrong-shape",
    ),
    pytest.param(
        _simple_call(_simple_inputs(_I0[:, :15], _I0[:, :15]), request_id="my-id"),
        "INVALID_ARGUMENT",
        "[request id: my-id] unexpected shape for input 'INPUT0' for model 'simple'. Expected "
        "[-1,16], got [1,15]. NOTE: Setting a non-zero max_batch_size",
        "prefix",
        id="request-id-in-prefix",
    ),
    pytest.param(
        _simple_call(_simple_inputs(np.zeros((9, 16), np.int32), np.zeros((9, 16), np.int32))),
        "INVALID_ARGUMENT",
        NO_ID + "inference request batch-size must be <= 8 for 'simple'",
        "exact",
        id="batch-too-large",
    ),
    pytest.param(
        _simple_call(_short_input0()),
        "INVALID_ARGUMENT",
        NO_ID + "input byte size mismatch for input 'INPUT0' for model 'simple'. Expected 64, "
        "got 60",
        "exact",
        id="raw-size-mismatch",
    ),
]


@pytest.mark.parametrize(("call", "status", "message", "match"), TRITONCLIENT_ERRORS)
def test_bad_request_via_tritonclient(
    demo_client: tritongrpc.InferenceServerClient,
    call: Callable[[tritongrpc.InferenceServerClient], object],
    status: str,
    message: str,
    match: str,
) -> None:
    error = _triton_error(lambda: call(demo_client))
    assert error.status() == f"StatusCode.{status}"
    _assert_message(error.message(), message, match)
    _assert_simple_serves(demo_client)


def _raw_simple(
    *buffers: bytes, shapes: tuple[list[int], list[int]] = ([1, 16], [1, 16])
) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="simple")
    for name, shape in zip(("INPUT0", "INPUT1"), shapes, strict=True):
        request.inputs.add(name=name, datatype="INT32", shape=shape)
    request.raw_input_contents.extend(buffers)
    return request


def _raw_bytes_identity(raw: bytes, shape: list[int]) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="simple_identity")
    request.inputs.add(name="INPUT0", datatype="BYTES", shape=shape)
    request.raw_input_contents.append(raw)
    return request


def _with(request: service_pb2.ModelInferRequest, edit: Callable[[Any], None]):
    edit(request)
    return request


def _length_prefixed(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


_GOOD = _I0.tobytes()


def _typed_fp16() -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="identity_fp16")
    tensor = request.inputs.add(name="INPUT0", datatype="FP16", shape=[1, 2])
    tensor.contents.fp32_contents.extend([1.0, 2.0])
    return request


def _typed_simple(field: str, values: list) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="simple")
    for name in ("INPUT0", "INPUT1"):
        tensor = request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        getattr(tensor.contents, field).extend(values)
    return request


def _set_parameter(key: str, kind: str, value: object) -> Callable[[Any], None]:
    return lambda request: setattr(request.parameters[key], kind, value)


RAW_ERRORS = [
    pytest.param(
        _raw_simple(_GOOD, _GOOD, shapes=([1, -1], [1, 16])),
        NO_ID + "All input dimensions should be specified for input 'INPUT0' for model "
        "'simple', got [1,-1]",
        "exact",
        id="negative-dimension",
    ),
    pytest.param(
        _raw_bytes_identity(_length_prefixed(b"a") + b"\x01\x00", [1, 2]),
        NO_ID + "incomplete string length indicator for inference input 'INPUT0' for model "
        "'simple_identity', expecting 4 bytes but only 2 bytes available. Please make sure the "
        "string length indicator is in one buffer.",
        "exact",
        id="bytes-incomplete-length",
    ),
    pytest.param(
        _raw_bytes_identity(_length_prefixed(b"a"), [1, 2]),
        NO_ID + "expected 2 string elements for inference input 'INPUT0' for model "
        "'simple_identity', got 1",
        "exact",
        id="bytes-too-few-elements",
    ),
    pytest.param(
        _raw_bytes_identity(_length_prefixed(b"a", b"b", b"c"), [1, 2]),
        NO_ID + "unexpected number of string elements 3 for inference input 'INPUT0' for model "
        "'simple_identity', expecting 2",
        "exact",
        id="bytes-too-many-elements",
    ),
    pytest.param(
        _raw_bytes_identity(struct.pack("<I", 5) + b"ab", [1, 1]),
        NO_ID + "incomplete string data for inference input 'INPUT0' for model "
        "'simple_identity', expecting string of length 5 but only 2 bytes available",
        "exact",
        id="bytes-truncated-element",
    ),
    pytest.param(
        _with(_raw_simple(_GOOD), lambda r: r.inputs[1].contents.int_contents.extend(range(16))),
        "contents field must not be specified when using raw_input_contents for 'INPUT1' for "
        "model 'simple'",
        "exact",
        id="typed-and-raw",
    ),
    pytest.param(
        _raw_simple(_GOOD, _GOOD, _GOOD),
        "raw_input_contents",
        "contains",
        id="surplus-raw-buffer",
    ),
    pytest.param(
        _raw_simple(_GOOD),
        "unable to find data for input tensor 'INPUT1' for model 'simple' in request.",
        "exact",
        id="missing-raw-buffer",
    ),
    pytest.param(
        _typed_simple("fp32_contents", [1.0] * 16),
        "unexpected explicit tensor data for input tensor 'INPUT0' for model 'simple' of type "
        "'FP32', expected datatype 'INT32'",
        "exact",
        id="typed-wrong-field",
    ),
    pytest.param(
        _typed_fp16(),
        "unexpected explicit tensor data for input tensor 'INPUT0' for model 'identity_fp16' of "
        "type 'FP32', expected datatype 'FP16'",
        "exact",
        id="typed-fp16",
    ),
    pytest.param(
        _typed_simple("int_contents", list(range(15))),
        NO_ID + "input byte size mismatch for input 'INPUT0' for model 'simple'. Expected 64, "
        "got 60",
        "exact",
        id="typed-too-few-values",
    ),
    pytest.param(
        _with(_raw_simple(_GOOD, _GOOD), _set_parameter("priority", "string_param", "high")),
        "invalid value type for 'priority' parameter, expected int64_param or uint64_param.",
        "exact",
        id="priority-wrong-type",
    ),
    pytest.param(
        _with(_raw_simple(_GOOD, _GOOD), _set_parameter("triton_foo", "int64_param", 1)),
        "parameter keys starting with 'triton_' are reserved for Triton usage. Only the "
        "following keys starting with 'triton_' are allowed: triton_enable_empty_final_response",
        "exact",
        id="reserved-parameter",
    ),
]


@pytest.mark.parametrize(("request_message", "message", "match"), RAW_ERRORS)
def test_bad_request_via_raw_stub(
    demo_client: tritongrpc.InferenceServerClient,
    test_stub: service_pb2_grpc.GRPCInferenceServiceStub,
    demo_stub: service_pb2_grpc.GRPCInferenceServiceStub,
    request_message: service_pb2.ModelInferRequest,
    message: str,
    match: str,
) -> None:
    stub = test_stub if request_message.model_name == "identity_fp16" else demo_stub
    error = _rpc_error(lambda: stub.ModelInfer(request_message, timeout=CALL_TIMEOUT_S))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    _assert_message(error.details() or "", message, match)
    _assert_simple_serves(demo_client)


def test_accepted_parameters(
    demo_client: tritongrpc.InferenceServerClient,
    demo_stub: service_pb2_grpc.GRPCInferenceServiceStub,
) -> None:
    request = _raw_simple(_GOOD, _GOOD)
    request.parameters["priority"].uint64_param = 1
    request.parameters["my_key"].string_param = "anything"
    response = demo_stub.ModelInfer(request, timeout=CALL_TIMEOUT_S)
    assert response.raw_output_contents[0] == (_I0 + _I0).tobytes()
    # tritonclient's own ways to send them.
    result = demo_client.infer(
        "simple", _simple_inputs(_I0, _I0), priority=1, parameters={"my_key": "anything"}
    )
    _assert_identical(result.as_numpy("OUTPUT1"), np.zeros_like(_I0))


def test_oversized_message_is_resource_exhausted(
    start_server: Callable[..., Any], demo_repository: Path
) -> None:
    server = start_server(demo_repository, "--max-message-size", "1048576")
    client = tritongrpc.InferenceServerClient(server.address)
    try:
        big = np.zeros((1, 512 * 1024), np.float32)  # 2 MiB of tensor data
        error = _triton_error(
            lambda: client.infer("identity_fp32", [_input("INPUT0", big, "FP32")])
        )
        assert error.status() == "StatusCode.RESOURCE_EXHAUSTED"
        assert "1048576" in error.message()
        small = np.arange(4, dtype=np.float32).reshape(1, 4)
        result = client.infer("identity_fp32", [_input("INPUT0", small, "FP32")])
        _assert_identical(result.as_numpy("OUTPUT0"), small)
    finally:
        client.close()
