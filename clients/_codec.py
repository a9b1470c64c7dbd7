"""What both clients send and how they read the replies, written once.

Each public client method is one ``Rpc``: the name of a ``GRPCInferenceService``
method, its request message, and the function that turns the response into the
clients' own types. The sync and async clients differ only in how they send it.

Tensors travel in ``raw_input_contents``/``raw_output_contents`` as little-endian,
C-ordered bytes (BYTES in the length-prefixed layout of ``inferd.protos.datatypes``),
which is what Triton sends and expects.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt
from google.protobuf.message import Message

from ..protos import grpc_service_pb2 as pb
from ..protos import model_config_pb2
from ..protos.datatypes import NUMPY_DTYPES, datatype_of, decode_bytes_tensor, encode_bytes_tensor
from ._errors import InferdError, InternalError, error_from_stream

ResultT = TypeVar("ResultT")

ParameterValue = bool | int | float | str
"""A request parameter; Python's type picks the ``InferParameter`` field."""

_INT64_MAX = 2**63 - 1

# Triton's streaming parameters: the flag on every streamed response, and the request
# parameter that asks a decoupled model for an empty response marking the end.
FINAL_RESPONSE = "triton_final_response"
EMPTY_FINAL_RESPONSE = "triton_enable_empty_final_response"

# Which InferTensorContents field holds each datatype when a server sends typed
# contents instead of raw bytes. FP16 has none: the protocol sends it raw only.
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


@dataclass(frozen=True, slots=True)
class ServerMetadata:
    """The server's name, version and the protocol extensions it supports."""

    name: str
    version: str
    extensions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TensorMetadata:
    """One model input or output; ``-1`` in ``shape`` marks a variable dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    """A model's name, available versions, platform and tensor signature."""

    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorMetadata, ...]
    outputs: tuple[TensorMetadata, ...]


@dataclass(frozen=True, slots=True)
class RepositoryModel:
    """One entry of the repository index; ``state`` is e.g. ``READY`` or ``UNAVAILABLE``."""

    name: str
    version: str
    state: str
    reason: str


# eq=False: the tensors are numpy arrays, whose == does not give a truth value.
@dataclass(frozen=True, slots=True, eq=False)
class StreamRequest:
    """One request to send on a ``ModelStreamInfer`` stream (``AsyncClient.stream_infer``).

    ``request_id`` is what the request's responses carry back, so give every request on
    a stream a distinct one. ``outputs=None`` asks for all of the model's outputs.
    ``enable_empty_final_response`` asks a decoupled model to mark the end of the
    request's responses with an empty one (Triton's ``triton_enable_empty_final_response``);
    without it, a decoupled model's last response may be indistinguishable from the rest.
    """

    model: str
    inputs: Mapping[str, npt.ArrayLike]
    outputs: Iterable[str] | None = None
    request_id: str = ""
    version: str = ""
    parameters: Mapping[str, ParameterValue] = field(default_factory=dict)
    enable_empty_final_response: bool = False


@dataclass(frozen=True, slots=True, eq=False)
class StreamResponse:
    """One response read from a ``ModelStreamInfer`` stream.

    ``request_id`` is the id of the request it answers. ``final`` marks the request's
    last response (``triton_final_response``); a decoupled model may send several
    responses per request, or an empty final one with no outputs. A response without
    the flag (an error for a request that never ran, or a server that does not send it)
    is final. ``error`` is set, and ``outputs`` empty, when the server answered the
    request with an error; the stream goes on. ``parameters`` holds the response's other
    parameters.
    """

    request_id: str
    model: str
    version: str
    outputs: dict[str, np.ndarray]
    final: bool
    error: InferdError | None = None
    parameters: Mapping[str, ParameterValue] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Rpc(Generic[ResultT]):
    """One unary call, ready to send: the RPC's name, its request, and how to read the reply."""

    method: str
    request: Message
    parse: Callable[[Any], ResultT]


def server_live() -> Rpc[bool]:
    return Rpc("ServerLive", pb.ServerLiveRequest(), lambda response: response.live)


def server_ready() -> Rpc[bool]:
    return Rpc("ServerReady", pb.ServerReadyRequest(), lambda response: response.ready)


def model_ready(model: str, version: str) -> Rpc[bool]:
    request = pb.ModelReadyRequest(name=model, version=version)
    return Rpc("ModelReady", request, lambda response: response.ready)


def server_metadata() -> Rpc[ServerMetadata]:
    return Rpc("ServerMetadata", pb.ServerMetadataRequest(), _server_metadata_from)


def model_metadata(model: str, version: str) -> Rpc[ModelMetadata]:
    request = pb.ModelMetadataRequest(name=model, version=version)
    return Rpc("ModelMetadata", request, _model_metadata_from)


def model_config(model: str, version: str) -> Rpc[model_config_pb2.ModelConfig]:
    request = pb.ModelConfigRequest(name=model, version=version)
    return Rpc("ModelConfig", request, lambda response: response.config)


def repository_index(ready: bool) -> Rpc[list[RepositoryModel]]:
    request = pb.RepositoryIndexRequest(ready=ready)
    return Rpc("RepositoryIndex", request, _repository_models_from)


def infer(
    model: str,
    inputs: Mapping[str, npt.ArrayLike],
    *,
    outputs: Iterable[str] | None,
    version: str,
    request_id: str,
    parameters: Mapping[str, ParameterValue] | None,
) -> Rpc[dict[str, np.ndarray]]:
    request = build_infer_request(
        model,
        inputs,
        outputs=outputs,
        version=version,
        request_id=request_id,
        parameters=parameters,
    )
    return Rpc("ModelInfer", request, parse_infer_response)


def build_infer_request(
    model: str,
    inputs: Mapping[str, npt.ArrayLike],
    *,
    outputs: Iterable[str] | None = None,
    version: str = "",
    request_id: str = "",
    parameters: Mapping[str, ParameterValue] | None = None,
) -> pb.ModelInferRequest:
    """A ``ModelInferRequest`` carrying every input as raw bytes.

    ``outputs=None`` asks for all of the model's outputs. Raises TypeError for an
    array or parameter value the protocol has no type for.
    """
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for key, value in (parameters or {}).items():
        request.parameters[key].CopyFrom(_parameter(key, value))
    for name, tensor in inputs.items():
        array = np.asarray(tensor)
        datatype = datatype_of(array)
        request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        request.raw_input_contents.append(_raw_bytes(array, datatype))
    for name in outputs or ():
        request.outputs.add(name=name)
    return request


def parse_infer_response(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """The response's outputs by name, shaped as the server declared them.

    Fixed-size outputs from ``raw_output_contents`` are read-only views of the
    response's bytes (no copy); BYTES outputs are object arrays of ``bytes``.
    Raises InternalError if an output's data doesn't match its datatype and shape.
    """
    raw = response.raw_output_contents
    # The protocol sends either every output raw, positionally, or none of them.
    if raw and len(raw) != len(response.outputs):
        raise InternalError(
            f"response has {len(response.outputs)} output(s) but "
            f"{len(raw)} raw_output_contents entries"
        )
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(response.outputs):
        shape = tuple(tensor.shape)
        if any(dim < 0 for dim in shape):
            raise InternalError(f"output '{tensor.name}' has a negative dimension: {list(shape)}")
        if tensor.datatype not in NUMPY_DTYPES:
            raise InternalError(f"output '{tensor.name}' has unknown datatype '{tensor.datatype}'")
        try:
            if raw:
                array = _from_raw(tensor.datatype, shape, raw[index])
            else:
                array = _from_contents(tensor.datatype, shape, tensor.contents)
        except ValueError as error:
            raise InternalError(f"output '{tensor.name}': {error}") from None
        arrays[tensor.name] = array
    return arrays


def stream_request_message(request: StreamRequest) -> pb.ModelInferRequest:
    """The ``ModelInferRequest`` that carries ``request`` on a stream."""
    parameters = dict(request.parameters)
    if request.enable_empty_final_response:
        parameters[EMPTY_FINAL_RESPONSE] = True
    return build_infer_request(
        request.model,
        request.inputs,
        outputs=request.outputs,
        version=request.version,
        request_id=request.request_id,
        parameters=parameters,
    )


def parse_stream_response(message: pb.ModelStreamInferResponse) -> StreamResponse:
    """A streamed response, its outputs read as ``parse_infer_response`` reads them.

    ``error_message`` becomes ``error`` (see ``error_from_stream``). Raises
    InternalError if an output's data doesn't match its datatype and shape.
    """
    response = message.infer_response
    parameters = {
        key: _parameter_value(value)
        for key, value in response.parameters.items()
        if key != FINAL_RESPONSE
    }
    flag = response.parameters.get(FINAL_RESPONSE)
    final = flag.bool_param if flag is not None else True
    error: InferdError | None = None
    outputs: dict[str, np.ndarray] = {}
    if message.error_message:
        error = error_from_stream(message.error_message)
    else:
        outputs = parse_infer_response(response)
    return StreamResponse(
        request_id=response.id,
        model=response.model_name,
        version=response.model_version,
        outputs=outputs,
        final=final,
        error=error,
        parameters=parameters,
    )


def _parameter_value(parameter: pb.InferParameter) -> ParameterValue:
    kind = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, kind) if kind is not None else ""


def _parameter(key: str, value: ParameterValue) -> pb.InferParameter:
    # bool before int: bool is an int subclass, and the protocol keeps them apart.
    if isinstance(value, bool):
        return pb.InferParameter(bool_param=value)
    if isinstance(value, int):
        if value > _INT64_MAX:
            return pb.InferParameter(uint64_param=value)
        return pb.InferParameter(int64_param=value)
    if isinstance(value, float):
        return pb.InferParameter(double_param=value)
    if isinstance(value, str):
        return pb.InferParameter(string_param=value)
    raise TypeError(
        f"parameter '{key}' must be bool, int, float or str, got {type(value).__name__}"
    )


def _raw_bytes(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        return encode_bytes_tensor(array)
    little_endian = NUMPY_DTYPES[datatype].newbyteorder("<")
    return array.astype(little_endian, copy=False).tobytes(order="C")


def _from_raw(datatype: str, shape: tuple[int, ...], data: bytes) -> np.ndarray:
    count = math.prod(shape)
    if datatype == "BYTES":
        return decode_bytes_tensor(data, count).reshape(shape)
    dtype = NUMPY_DTYPES[datatype].newbyteorder("<")
    if len(data) != count * dtype.itemsize:
        raise ValueError(
            f"shape {list(shape)} of {datatype} needs {count * dtype.itemsize} bytes, "
            f"got {len(data)}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _from_contents(datatype: str, shape: tuple[int, ...], contents: Any) -> np.ndarray:
    field = _CONTENTS_FIELD.get(datatype)
    if field is None:
        raise ValueError(f"{datatype} must be sent in raw_output_contents")
    values = list(getattr(contents, field))
    count = math.prod(shape)
    if len(values) != count:
        raise ValueError(f"shape {list(shape)} needs {count} element(s), got {len(values)}")
    array = np.empty(count, dtype=NUMPY_DTYPES[datatype])
    array[:] = values
    return array.reshape(shape)


def _tensor_metadata(tensor: Any) -> TensorMetadata:
    return TensorMetadata(name=tensor.name, datatype=tensor.datatype, shape=tuple(tensor.shape))


def _server_metadata_from(response: pb.ServerMetadataResponse) -> ServerMetadata:
    return ServerMetadata(
        name=response.name, version=response.version, extensions=tuple(response.extensions)
    )


def _model_metadata_from(response: pb.ModelMetadataResponse) -> ModelMetadata:
    return ModelMetadata(
        name=response.name,
        versions=tuple(response.versions),
        platform=response.platform,
        inputs=tuple(_tensor_metadata(tensor) for tensor in response.inputs),
        outputs=tuple(_tensor_metadata(tensor) for tensor in response.outputs),
    )


def _repository_models_from(response: pb.RepositoryIndexResponse) -> list[RepositoryModel]:
    return [
        RepositoryModel(
            name=model.name, version=model.version, state=model.state, reason=model.reason
        )
        for model in response.models
    ]
