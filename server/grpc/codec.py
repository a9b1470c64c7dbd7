"""Protobuf <-> engine types for ModelInfer. Protobuf stops here.

Raw inputs travel to the engine as the request's own bytes, which it views zero-copy
with ``np.frombuffer``. Wire-level mistakes (typed contents beside raw ones, a typed
field of the wrong type, a missing buffer) are caught here; everything checked against
the model's config (names, types, shapes, sizes) is checked in the engine.
"""

from __future__ import annotations

from typing import TypeAlias

import numpy as np

from inferd.engines import (
    EngineError,
    ErrorCode,
    InferRequest,
    InferResponse,
    InputTensor,
    RequestedOutput,
)
from inferd.engines.client_memory.system import RequestRegions
from inferd.engines.options import (
    DEFAULT_OPTIONS,
    EMPTY_FINAL_RESPONSE,
    PRIORITY,
    SEQUENCE_END,
    SEQUENCE_ID,
    SEQUENCE_START,
    TIMEOUT,
    ParameterValue,
    RequestOptions,
)
from inferd.engines.types import SharedMemoryRef
from inferd.protos import grpc_service_pb2 as pb
from inferd.protos.datatypes import NUMPY_DTYPES, encode_bytes_tensor
from inferd.server.request_path import Codec, parse_version

# The datatype each typed-contents field carries, as Triton names it in its errors.
_FIELD_DATATYPE = {
    "bool_contents": "BOOL",
    "int_contents": "INT32",
    "int64_contents": "INT64",
    "uint_contents": "UINT32",
    "uint64_contents": "UINT64",
    "fp32_contents": "FP32",
    "fp64_contents": "FP64",
    "bytes_contents": "BYTES",
}
# int_contents and uint_contents also carry the narrower integers, as in Triton.
_FIELD_ALSO_CARRIES = {"int_contents": ("INT8", "INT16"), "uint_contents": ("UINT8", "UINT16")}


def _invalid(message: str) -> EngineError:
    return EngineError(ErrorCode.INVALID_ARGUMENT, message)


def _typed_contents(model: str, tensor: pb.ModelInferRequest.InferInputTensor) -> np.ndarray:
    """The one typed-contents field that carries this input, as a flat array."""
    found: np.ndarray | None = None
    for field, values in tensor.contents.ListFields():
        where = f"input tensor '{tensor.name}' for model '{model}'"
        if found is not None:
            raise _invalid(
                f"unexpected explicit tensor data for {where}, binary data was already supplied."
            )
        carries = _FIELD_DATATYPE[field.name]
        if tensor.datatype != carries and tensor.datatype not in _FIELD_ALSO_CARRIES.get(
            field.name, ()
        ):
            raise _invalid(
                f"unexpected explicit tensor data for {where} of type '{carries}', expected "
                f"datatype '{tensor.datatype}'"
            )
        found = _typed_array(model, tensor, field.name, values)
    if found is None:  # a contents message with every field empty: zero elements
        return np.empty(0, dtype=NUMPY_DTYPES[tensor.datatype])
    return found


def _typed_array(
    model: str, tensor: pb.ModelInferRequest.InferInputTensor, field: str, values: object
) -> np.ndarray:
    if tensor.datatype == "BYTES":
        array = np.empty(len(values), dtype=np.object_)  # type: ignore[arg-type]
        array[:] = list(values)  # type: ignore[call-overload]
        return array
    dtype = NUMPY_DTYPES[tensor.datatype]
    # The field's own element type: left to infer it, numpy turns uint64 values above
    # 2**63 mixed with smaller ones into float64, losing precision (2**64-1 became 0).
    wide = np.asarray(values, dtype=NUMPY_DTYPES[_FIELD_DATATYPE[field]])
    if dtype.kind in "iu" and wide.size:
        limits = np.iinfo(dtype)
        if wide.min() < limits.min or wide.max() > limits.max:
            raise _invalid(
                f"values in {field} for input tensor '{tensor.name}' for model '{model}' do "
                f"not fit {tensor.datatype} (range {limits.min}..{limits.max})"
            )
    return wide.astype(dtype)


def _options(request: pb.ModelInferRequest) -> RequestOptions:
    """The request's parameters, checked as Triton checks them, typed once."""
    if not request.parameters:
        return DEFAULT_OPTIONS
    parameters: dict[str, ParameterValue] = {}
    for key, parameter in request.parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        allowed = _PARAMETER_TYPES.get(key)
        if allowed is None and key.startswith("triton_"):
            raise _invalid(
                "parameter keys starting with 'triton_' are reserved for Triton usage. Only "
                "the following keys starting with 'triton_' are allowed: "
                "triton_enable_empty_final_response"
            )
        allowed = allowed or _ANY_PARAMETER
        if choice not in allowed.choices:
            raise _invalid(
                f"invalid value type for '{key}' parameter, expected {allowed.expected}."
            )
        value = getattr(parameter, choice)
        if key == PRIORITY and value < 0:
            raise _invalid("invalid value for 'priority', expected value >= 0.")
        parameters[key] = value
    return RequestOptions.from_parameters(parameters)


class _ParameterType:
    def __init__(self, *choices: str) -> None:
        self.choices = choices
        if len(choices) > 2:
            self.expected = ", ".join(choices[:-1]) + ", or " + choices[-1]
        else:
            self.expected = " or ".join(choices)


# The request parameters Triton interprets, with the value types it accepts.
_PARAMETER_TYPES = {
    SEQUENCE_ID: _ParameterType("int64_param", "string_param"),
    SEQUENCE_START: _ParameterType("bool_param"),
    SEQUENCE_END: _ParameterType("bool_param"),
    PRIORITY: _ParameterType("int64_param", "uint64_param"),
    TIMEOUT: _ParameterType("int64_param"),
    EMPTY_FINAL_RESPONSE: _ParameterType("bool_param"),
}
_ANY_PARAMETER = _ParameterType("int64_param", "bool_param", "string_param", "double_param")


_ShmTensor: TypeAlias = (
    "pb.ModelInferRequest.InferInputTensor | pb.ModelInferRequest.InferRequestedOutputTensor"
)


def _shared_memory_parameters(tensor: _ShmTensor) -> tuple[str, int, int] | None:
    """(region, offset, byte_size) when the tensor uses shared memory, as Triton parses them."""
    parameters = tensor.parameters
    if not parameters:  # most tensors: no lookups at all
        return None
    region: str | None = None
    if "shared_memory_region" in parameters:
        parameter = parameters["shared_memory_region"]
        if parameter.WhichOneof("parameter_choice") != "string_param":
            raise _invalid(
                "invalid value type for 'shared_memory_region' parameter for tensor "
                f"'{tensor.name}', expected string_param."
            )
        region = parameter.string_param
    values = {"shared_memory_offset": 0, "shared_memory_byte_size": None}
    for key in values:
        if key not in parameters:
            continue
        if region is None:
            raise _invalid(
                f"'{key}' can not be specified without 'shared_memory_region' parameter for "
                f"tensor '{tensor.name}'"
            )
        if parameters[key].WhichOneof("parameter_choice") != "int64_param":
            raise _invalid(
                f"invalid value type for '{key}' parameter for tensor '{tensor.name}', "
                "expected int64_param."
            )
        values[key] = parameters[key].int64_param
    if region is None:
        return None
    byte_size = values["shared_memory_byte_size"]
    if byte_size is None:
        raise _invalid(
            "'shared_memory_byte_size' must be specified along with 'shared_memory_region' "
            f"parameter for tensor '{tensor.name}'"
        )
    return region, values["shared_memory_offset"] or 0, byte_size


def _requested_output(
    model: str,
    output: pb.ModelInferRequest.InferRequestedOutputTensor,
    regions: RequestRegions | None,
) -> RequestedOutput:
    shared = _shared_memory_parameters(output)
    if shared is not None:
        if "classification" in output.parameters:
            raise _invalid("output can't set both 'shared_memory_region' and 'classification'")
        if regions is None:
            raise _invalid(f"output '{output.name}' for model '{model}' cannot use shared memory")
        if not regions.reads(shared[0]):  # CUDA shared memory: the engine writes it
            return RequestedOutput(output.name, region=SharedMemoryRef(*shared))
        regions.bind_output(
            output.name, *shared, what=f"output '{output.name}' for model '{model}'"
        )
    if "classification" not in output.parameters:
        return RequestedOutput(output.name)
    parameter = output.parameters["classification"]
    if parameter.WhichOneof("parameter_choice") != "int64_param":
        raise _invalid("invalid value type for 'classification' parameter, expected int64_param")
    if parameter.int64_param < 1:
        raise _invalid("invalid value for 'classification' parameter, expected >= 1")
    return RequestedOutput(output.name, parameter.int64_param)


def shared_memory_regions(request: pb.ModelInferRequest) -> set[str]:
    """The regions a request names (parameters not yet checked: decoding does that)."""
    names = set()
    for tensors in (request.inputs, request.outputs):
        for tensor in tensors:
            if tensor.parameters:  # most tensors have none: skip the lookup
                parameter = tensor.parameters.get("shared_memory_region")
                if parameter is not None:
                    names.add(parameter.string_param)
    return names


def decode_infer_request(
    request: pb.ModelInferRequest,
    deadline: float | None,
    regions: RequestRegions | None = None,
) -> InferRequest:
    """Wire-level decoding; the engine then checks names, types, shapes and sizes.

    Inputs in system shared memory are copied out of their regions now; outputs asked
    for in one are bound in ``regions`` for ``encode_infer_response`` to write. Tensors in
    any other region (CUDA shared memory) become ``SharedMemoryRef`` for the engine."""
    model = request.model_name
    version = parse_version(request.model_version)
    raw_contents = request.raw_input_contents
    raw_index = 0
    inputs: list[InputTensor] = []
    for tensor in request.inputs:
        shared = _shared_memory_parameters(tensor)
        if tensor.datatype not in NUMPY_DTYPES:
            raise _invalid(
                f"invalid datatype '{tensor.datatype}' for input '{tensor.name}' for model "
                f"'{model}' (expected one of {', '.join(NUMPY_DTYPES)})"
            )
        data: bytes | np.ndarray | SharedMemoryRef
        if shared is not None:
            where = f"input tensor '{tensor.name}' for model '{model}'"
            if tensor.HasField("contents"):
                raise _invalid(
                    f"unexpected 'content' provided when using shared memory for {where}"
                )
            if regions is None:
                raise _invalid(f"{where} cannot use shared memory")
            if regions.reads(shared[0]):
                data = regions.read_input(*shared, what=where)
            else:  # a CUDA region (or none): the engine's process resolves it
                data = SharedMemoryRef(*shared)
        elif tensor.HasField("contents"):
            if raw_contents:
                raise _invalid(
                    f"contents field must not be specified when using raw_input_contents for "
                    f"'{tensor.name}' for model '{model}'"
                )
            data = _typed_contents(model, tensor)
        elif raw_index < len(raw_contents):
            data = raw_contents[raw_index]
            raw_index += 1
        else:
            raise _invalid(
                f"unable to find data for input tensor '{tensor.name}' for model '{model}' "
                "in request."
            )
        inputs.append(InputTensor(tensor.name, tensor.datatype, tuple(tensor.shape), data))
    if raw_index != len(raw_contents):
        # Triton silently ignores surplus buffers; inferd refuses them, since they mean the
        # client's inputs and buffers are misaligned.
        raise _invalid(
            f"expected {raw_index} raw_input_contents (one per input) but got "
            f"{len(raw_contents)} for model '{model}'"
        )
    return InferRequest(
        model_name=model,
        model_version=version,
        inputs=inputs,
        requested_outputs=tuple(
            _requested_output(model, output, regions) for output in request.outputs
        ),
        request_id=request.id,
        options=_options(request),
        deadline=deadline,
    )


def encode_infer_response(
    response: InferResponse, regions: RequestRegions | None = None
) -> pb.ModelInferResponse:
    message = pb.ModelInferResponse(
        model_name=response.model_name,
        model_version=str(response.model_version),
        id=response.request_id,
    )
    for output in response.outputs:
        message.outputs.add(name=output.name, datatype=output.datatype, shape=output.data.shape)
        if output.in_shared_memory:  # the engine wrote it into the client's GPU memory
            message.raw_output_contents.append(b"")
            continue
        if output.datatype == "BYTES":
            data = encode_bytes_tensor(output.data)
        else:
            data = output.data.tobytes()
        if regions is not None and regions.write_output(output.name, data, response.model_name):
            # Written to its region. An empty buffer keeps raw_output_contents aligned with
            # outputs, as Triton does (clients find each output's buffer by position).
            data = b""
        message.raw_output_contents.append(data)
    return message


# ModelInfer's wire format, for the request path.
UNARY = Codec(decode_infer_request, encode_infer_response)
