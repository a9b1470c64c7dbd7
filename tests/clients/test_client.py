"""inferd.clients: the codec and error mapping on their own, then both clients against a
real server (the ``demo_server`` fixture) serving the demo repository."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest

from inferd.clients import (
    AsyncClient,
    Client,
    DeadlineExceededError,
    InferdError,
    InternalError,
    InvalidArgumentError,
    ModelMetadata,
    NotFoundError,
    RepositoryModel,
    RequestCancelledError,
    ResourceExhaustedError,
    ServerMetadata,
    TensorMetadata,
    UnavailableError,
    UnexpectedStatusError,
    UnimplementedError,
)
from inferd.clients._codec import build_infer_request, parse_infer_response
from inferd.clients._errors import error_from_rpc, translated_rpc_errors
from inferd.protos import grpc_service_pb2 as pb
from inferd.protos import model_config_pb2

# Embedded NULs, an empty element and non-ASCII UTF-8: the cases a C-string or
# text-based encoding would get wrong.
AWKWARD_BYTES = np.array([b"", b"a\x00b", b"\x00", "é".encode(), b"\xff\xfe"], dtype=object)


def _response_echoing(request: pb.ModelInferRequest) -> pb.ModelInferResponse:
    """What an identity model's server would answer: each input back as an output."""
    response = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
    for tensor in request.inputs:
        response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
    response.raw_output_contents.extend(request.raw_input_contents)
    return response


# --- request building -----------------------------------------------------------------


def test_request_carries_inputs_as_little_endian_c_ordered_raw_bytes() -> None:
    ints = np.arange(6, dtype=np.int32).reshape(2, 3)
    floats = np.arange(6, dtype=">f8").reshape(3, 2).T  # big-endian and not C-contiguous
    request = build_infer_request(
        "m", {"INTS": ints, "FLOATS": floats}, version="2", request_id="req-7"
    )

    assert (request.model_name, request.model_version, request.id) == ("m", "2", "req-7")
    assert [(t.name, t.datatype, list(t.shape)) for t in request.inputs] == [
        ("INTS", "INT32", [2, 3]),
        ("FLOATS", "FP64", [2, 3]),
    ]
    assert request.raw_input_contents[0] == struct.pack("<6i", 0, 1, 2, 3, 4, 5)
    assert request.raw_input_contents[1] == struct.pack("<6d", 0, 2, 4, 1, 3, 5)
    assert not request.outputs  # none named: the server returns every output


def test_request_encodes_bytes_inputs_length_prefixed() -> None:
    request = build_infer_request("m", {"S": AWKWARD_BYTES, "T": np.array([["x", "yz"]])})

    assert [(t.datatype, list(t.shape)) for t in request.inputs] == [
        ("BYTES", [5]),
        ("BYTES", [1, 2]),
    ]
    expected = b"".join(struct.pack("<I", len(e)) + e for e in AWKWARD_BYTES)
    assert request.raw_input_contents[0] == expected
    assert request.raw_input_contents[1] == b"\x01\x00\x00\x00x\x02\x00\x00\x00yz"


def test_request_names_requested_outputs_and_types_parameters() -> None:
    request = build_infer_request(
        "m",
        {"X": np.zeros(1, np.float32)},
        outputs=["B", "A"],
        parameters={"flag": True, "count": -3, "huge": 2**64 - 1, "ratio": 0.5, "tag": "t"},
    )

    assert [output.name for output in request.outputs] == ["B", "A"]
    chosen = {
        key: (
            value.WhichOneof("parameter_choice"),
            getattr(value, value.WhichOneof("parameter_choice")),
        )
        for key, value in request.parameters.items()
    }
    assert chosen == {
        "flag": ("bool_param", True),
        "count": ("int64_param", -3),
        "huge": ("uint64_param", 2**64 - 1),
        "ratio": ("double_param", 0.5),
        "tag": ("string_param", "t"),
    }


def test_request_rejects_values_the_protocol_cannot_carry() -> None:
    with pytest.raises(TypeError, match="complex128"):
        build_infer_request("m", {"X": np.zeros(2, np.complex128)})
    with pytest.raises(TypeError, match="parameter 'p' must be bool, int, float or str"):
        build_infer_request("m", {}, parameters={"p": [1]})  # type: ignore[dict-item]


# --- response parsing -----------------------------------------------------------------


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.int32).reshape(3, 4),
        np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 2, 2),
        np.array([True, False, True]),
        np.arange(4, dtype=np.float16),
        np.zeros((2, 0), dtype=np.int64),
        AWKWARD_BYTES.reshape(5, 1),
        np.array([], dtype=object),
    ],
    ids=["int32", "fp32", "bool", "fp16", "empty-int64", "bytes", "empty-bytes"],
)
def test_round_trip_through_request_and_response(array: np.ndarray) -> None:
    outputs = parse_infer_response(_response_echoing(build_infer_request("m", {"X": array})))

    assert list(outputs) == ["X"]
    assert outputs["X"].shape == array.shape
    assert outputs["X"].dtype == array.dtype
    np.testing.assert_array_equal(outputs["X"], array)


def test_response_raw_contents_align_with_outputs_by_position() -> None:
    response = pb.ModelInferResponse()
    response.outputs.add(name="second", datatype="INT32", shape=[2])
    response.outputs.add(name="first", datatype="BYTES", shape=[1])
    response.raw_output_contents.extend([struct.pack("<2i", 7, -7), b"\x01\x00\x00\x00z"])

    outputs = parse_infer_response(response)

    assert list(outputs) == ["second", "first"]
    np.testing.assert_array_equal(outputs["second"], [7, -7])
    assert outputs["first"].tolist() == [b"z"]


def test_response_falls_back_to_typed_contents() -> None:
    response = pb.ModelInferResponse()
    ints = response.outputs.add(name="I", datatype="INT16", shape=[2, 2])
    ints.contents.int_contents.extend([1, -2, 3, -4])
    strings = response.outputs.add(name="S", datatype="BYTES", shape=[3])
    strings.contents.bytes_contents.extend([b"", b"\x00x", b"y"])
    floats = response.outputs.add(name="F", datatype="FP64", shape=[1])
    floats.contents.fp64_contents.append(2.5)

    outputs = parse_infer_response(response)

    assert outputs["I"].dtype == np.int16
    np.testing.assert_array_equal(outputs["I"], [[1, -2], [3, -4]])
    assert outputs["S"].dtype == object
    assert outputs["S"].tolist() == [b"", b"\x00x", b"y"]
    np.testing.assert_array_equal(outputs["F"], [2.5])


def _response(datatype: str, shape: list[int], raw: list[bytes] | None) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse()
    response.outputs.add(name="OUT", datatype=datatype, shape=shape)
    if raw is not None:
        response.raw_output_contents.extend(raw)
    return response


@pytest.mark.parametrize(
    ("response", "complaint"),
    [
        (_response("INT32", [2], [b"\x00" * 8, b""]), r"1 output\(s\) but 2 raw_output_contents"),
        (_response("INT32", [3], [b"\x00" * 8]), "'OUT'.*needs 12 bytes, got 8"),
        (_response("BYTES", [2], [b"\x01\x00\x00\x00a"]), "'OUT'.*expected 2 string elements"),
        (_response("INT32", [-1], [b""]), "'OUT' has a negative dimension"),
        (_response("COMPLEX", [1], [b"\x00"]), "'OUT' has unknown datatype 'COMPLEX'"),
        (_response("INT32", [2], None), r"'OUT'.*needs 2 element\(s\), got 0"),
        (_response("FP16", [1], None), "'OUT'.*FP16 must be sent in raw_output_contents"),
    ],
    ids=[
        "raw-count",
        "raw-size",
        "bytes-truncated",
        "negative-dim",
        "datatype",
        "contents",
        "fp16",
    ],
)
def test_malformed_response_raises_internal_error(
    response: pb.ModelInferResponse, complaint: str
) -> None:
    with pytest.raises(InternalError, match=complaint) as caught:
        parse_infer_response(response)
    assert caught.value.code == grpc.StatusCode.INTERNAL


# --- error mapping --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgumentError),
        (grpc.StatusCode.NOT_FOUND, NotFoundError),
        (grpc.StatusCode.UNAVAILABLE, UnavailableError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhaustedError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceededError),
        (grpc.StatusCode.UNIMPLEMENTED, UnimplementedError),
        (grpc.StatusCode.INTERNAL, InternalError),
        (grpc.StatusCode.CANCELLED, RequestCancelledError),
        (grpc.StatusCode.PERMISSION_DENIED, UnexpectedStatusError),
        (grpc.StatusCode.UNKNOWN, UnexpectedStatusError),
    ],
)
def test_each_status_maps_to_its_error(code: grpc.StatusCode, expected: type[InferdError]) -> None:
    error = error_from_rpc(grpc.aio.AioRpcError(code, details="what went wrong"))

    assert type(error) is expected
    assert error.code == code
    assert error.message == "what went wrong"
    assert str(error) == f"[{code}] what went wrong"


def test_error_reads_like_status_and_message() -> None:
    error = NotFoundError("Request for unknown model: 'x' is not found")
    assert str(error) == "[StatusCode.NOT_FOUND] Request for unknown model: 'x' is not found"


def test_bare_rpc_error_maps_to_unknown() -> None:
    error = error_from_rpc(grpc.RpcError("no status attached"))
    assert isinstance(error, UnexpectedStatusError)
    assert (error.code, error.message) == (grpc.StatusCode.UNKNOWN, "no status attached")


def test_translation_chains_the_grpc_error() -> None:
    original = grpc.aio.AioRpcError(grpc.StatusCode.NOT_FOUND, details="gone")
    with pytest.raises(NotFoundError) as caught, translated_rpc_errors():
        raise original
    assert caught.value.__cause__ is original


def _unused_address() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def test_clients_raise_unavailable_when_nothing_listens() -> None:
    address = _unused_address()
    with Client(address, timeout=10) as client, pytest.raises(UnavailableError):
        client.is_server_live()

    async def scenario() -> None:
        async with AsyncClient(address, timeout=10) as client:
            with pytest.raises(UnavailableError):
                await client.is_server_live()

    asyncio.run(scenario())


def test_url_must_be_host_port_or_unix_path() -> None:
    with pytest.raises(ValueError, match="'host:port' or 'unix:/path'"):
        Client("http://127.0.0.1:8001")
    Client("unix:/tmp/inferd.sock").close()


def test_async_client_refuses_calls_after_close() -> None:
    async def scenario() -> None:
        client = AsyncClient(_unused_address())
        await client.close()
        with pytest.raises(ValueError, match="closed"):
            await client.is_server_live()

    asyncio.run(scenario())


# --- against a real server --------------------------------------------------------------


@pytest.fixture(params=["Client", "AsyncClient"])
def call(request: pytest.FixtureRequest, demo_server: Any) -> Iterator[Callable[..., Any]]:
    """``call(method, *args, **kwargs)`` on a Client, or on an AsyncClient run to completion,
    so that every check below runs once against each."""
    address = demo_server.address
    if request.param == "Client":
        with Client(address, timeout=30) as client:
            yield lambda method, *args, **kwargs: getattr(client, method)(*args, **kwargs)
        return
    loop = asyncio.new_event_loop()
    aclient = AsyncClient(address, timeout=30)
    try:
        yield lambda method, *args, **kwargs: loop.run_until_complete(
            getattr(aclient, method)(*args, **kwargs)
        )
    finally:
        loop.run_until_complete(aclient.close())
        loop.close()


def test_health(call: Callable[..., Any]) -> None:
    assert call("is_server_live") is True
    assert call("is_server_ready") is True
    assert call("is_model_ready", "simple") is True
    assert call("is_model_ready", "simple", "1") is True


def test_server_and_model_metadata(call: Callable[..., Any]) -> None:
    server = call("server_metadata")
    assert isinstance(server, ServerMetadata)
    assert server.name and server.version
    assert isinstance(server.extensions, tuple)

    model = call("model_metadata", "simple")
    assert isinstance(model, ModelMetadata)
    assert model.name == "simple"
    assert "1" in model.versions
    assert model.platform == "onnxruntime_onnx"
    assert model.inputs == (
        TensorMetadata("INPUT0", "INT32", (-1, 16)),
        TensorMetadata("INPUT1", "INT32", (-1, 16)),
    )
    assert [tensor.name for tensor in model.outputs] == ["OUTPUT0", "OUTPUT1"]

    string_model = call("model_metadata", "simple_string")
    assert {tensor.datatype for tensor in string_model.inputs} == {"BYTES"}


def test_model_config(call: Callable[..., Any]) -> None:
    config = call("model_config", "simple")
    assert isinstance(config, model_config_pb2.ModelConfig)
    assert config.name == "simple"
    assert config.max_batch_size == 8
    assert [(tensor.name, list(tensor.dims)) for tensor in config.input] == [
        ("INPUT0", [16]),
        ("INPUT1", [16]),
    ]
    assert config.input[0].data_type == model_config_pb2.TYPE_INT32


@pytest.mark.parametrize("ready", [False, True])
def test_repository_index(call: Callable[..., Any], ready: bool) -> None:
    models = call("repository_index", ready)
    assert all(isinstance(model, RepositoryModel) for model in models)
    by_name = {model.name: model for model in models}
    assert {"simple", "simple_string", "simple_identity", "identity_fp32"} <= set(by_name)
    assert by_name["simple"].state == "READY"


def test_infer_simple(call: Callable[..., Any]) -> None:
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    b = np.full((2, 16), 3, dtype=np.int32)

    outputs = call("infer", "simple", {"INPUT0": a, "INPUT1": b}, request_id="r1")

    assert set(outputs) == {"OUTPUT0", "OUTPUT1"}
    assert outputs["OUTPUT0"].dtype == np.int32
    np.testing.assert_array_equal(outputs["OUTPUT0"], a + b)
    np.testing.assert_array_equal(outputs["OUTPUT1"], a - b)


def test_infer_returns_only_requested_outputs(call: Callable[..., Any]) -> None:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.ones((1, 16), dtype=np.int32)

    outputs = call("infer", "simple", {"INPUT0": a, "INPUT1": b}, outputs=["OUTPUT1"])

    assert list(outputs) == ["OUTPUT1"]
    np.testing.assert_array_equal(outputs["OUTPUT1"], a - b)


def test_infer_simple_string(call: Callable[..., Any]) -> None:
    a = np.arange(16).reshape(1, 16)
    b = np.full((1, 16), 5)
    as_strings = np.vectorize(lambda n: str(n).encode(), otypes=[object])

    outputs = call("infer", "simple_string", {"INPUT0": as_strings(a), "INPUT1": as_strings(b)})

    assert outputs["OUTPUT0"].dtype == object
    assert outputs["OUTPUT0"].shape == (1, 16)
    assert outputs["OUTPUT0"].tolist() == as_strings(a + b).tolist()
    assert outputs["OUTPUT1"].tolist() == as_strings(a - b).tolist()


def test_infer_bytes_identity_keeps_awkward_bytes(call: Callable[..., Any]) -> None:
    batch = AWKWARD_BYTES.reshape(1, -1)

    outputs = call("infer", "simple_identity", {"INPUT0": batch})

    assert outputs["OUTPUT0"].shape == batch.shape
    assert outputs["OUTPUT0"].tolist() == batch.tolist()


def test_infer_identity_fp32(call: Callable[..., Any]) -> None:
    rows = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)

    outputs = call("infer", "identity_fp32", {"INPUT0": rows})

    assert outputs["OUTPUT0"].dtype == np.float32
    np.testing.assert_array_equal(outputs["OUTPUT0"], rows)


def test_infer_beyond_grpc_default_message_limit(call: Callable[..., Any]) -> None:
    # 2 x 1.5M floats = 12 MB each way, three times gRPC's default 4 MiB receive limit.
    rows = np.random.default_rng(0).standard_normal((2, 1_500_000)).astype(np.float32)

    outputs = call("infer", "identity_fp32", {"INPUT0": rows})

    np.testing.assert_array_equal(outputs["OUTPUT0"], rows)


def test_unknown_model_raises_not_found(call: Callable[..., Any]) -> None:
    with pytest.raises(NotFoundError) as caught:
        call("infer", "no_such_model", {"INPUT0": np.zeros((1, 16), np.int32)})
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert "no_such_model" in caught.value.message
    assert str(caught.value).startswith("[StatusCode.NOT_FOUND] ")

    with pytest.raises(NotFoundError, match="no_such_model"):
        call("model_metadata", "no_such_model")


def test_wrong_shape_raises_invalid_argument(call: Callable[..., Any]) -> None:
    wrong = np.zeros((1, 15), dtype=np.int32)

    with pytest.raises(InvalidArgumentError) as caught:
        call("infer", "simple", {"INPUT0": wrong, "INPUT1": wrong})

    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.message
