"""Checking a request against its model's config: pure logic, no I/O.

The checks run in Triton's order (requested outputs, input count, input names and
batch size, then per input: datatype, shape, data size) and keep Triton's wording,
including the ``[request id: ...]`` prefix on the checks Triton's core makes, because
clients match on it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np

from inferd.engines.errors import EngineError, ErrorCode
from inferd.engines.types import DeviceBytes, InferRequest, InputTensor, SharedMemoryRef
from inferd.protos.datatypes import NUMPY_DTYPES, decode_bytes_tensor


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: str  # protocol name: INT32, BYTES, ...
    dims: tuple[int, ...]  # without the batch dimension; -1 is variable
    optional: bool = False
    reshape: tuple[int, ...] | None = None  # the shape the model itself takes, if different


def shape_text(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(dim) for dim in shape) + "]"


def _names_text(names: Sequence[str]) -> str:
    return "[" + ",".join(f"'{name}'" for name in names) + "]"


def _matches(shape: Sequence[int], dims: Sequence[int]) -> bool:
    return len(shape) == len(dims) and all(
        want == -1 or got == want for got, want in zip(shape, dims, strict=True)
    )


_BATCH_NOTE = (
    "NOTE: Setting a non-zero max_batch_size in the model config requires a batch dimension "
    "to be prepended to each input shape. If you want to specify the full shape including "
    "the batch dim in your input dims config, try setting max_batch_size to zero. See the "
    "model configuration docs for more info on max_batch_size."
)


class _Checker:
    def __init__(self, request: InferRequest) -> None:
        self.model = request.model_name
        self._request_id = request.request_id

    def fail(self, message: str, *, prefixed: bool = True) -> EngineError:
        prefix = f"[request id: {self._request_id or '<id_unknown>'}] " if prefixed else ""
        return EngineError(ErrorCode.INVALID_ARGUMENT, prefix + message)


def validate_request(
    request: InferRequest,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    max_batch_size: int,
) -> int:
    """Raise EngineError for the first mismatch; fill each input's ``array``.

    Returns the request's batch size (1 for models without batching).
    """
    check = _Checker(request)
    model = check.model
    specs = {spec.name: spec for spec in inputs}

    output_specs = {spec.name: spec for spec in outputs}
    for output in request.requested_outputs:
        output_spec = output_specs.get(output.name)
        if output_spec is None:
            raise check.fail(
                f"unexpected inference output '{output.name}' for model '{model}'",
                prefixed=False,
            )
        if output.class_count > 0 and output_spec.datatype == "BYTES":
            raise check.fail(
                "class result not available for output due to unsupported type 'BYTES'",
                prefixed=False,
            )

    given = [tensor.name for tensor in request.inputs]
    seen: set[str] = set()
    for name in given:
        if name in seen:
            raise check.fail(f"input '{name}' already exists in request")
        seen.add(name)

    required = [spec.name for spec in inputs if not spec.optional]
    missing = [name for name in required if name not in seen]

    def count_error() -> EngineError:
        if len(required) == len(inputs):
            expected = f"expected {len(inputs)} inputs"
        else:
            expected = f"expected number of inputs between {len(required)} and {len(inputs)}"
        return check.fail(
            f"{expected} but got {len(given)} inputs for model '{model}'. Got input(s) "
            f"{_names_text(given)}, but missing required input(s) {_names_text(missing)}. "
            "Please provide all required input(s)."
        )

    # Counts first, as Triton does: with the right count, an unknown name is reported as
    # unknown rather than as the required input it displaced.
    if not len(required) <= len(given) <= len(inputs):
        raise count_error()
    for name in given:
        if name not in specs:
            raise check.fail(
                f"unexpected inference input '{name}' for model '{model}'", prefixed=False
            )
    if missing:
        raise count_error()

    batch_size: int | None = None
    for tensor in request.inputs:
        if max_batch_size > 0:
            if not tensor.shape:
                raise check.fail(
                    f"input '{tensor.name}' has no shape but model requires batch dimension "
                    f"for '{model}'"
                )
            if batch_size is None:
                batch_size = tensor.shape[0]
            elif tensor.shape[0] != batch_size:
                raise check.fail(
                    f"input '{tensor.name}' batch size does not match other inputs for '{model}'"
                )
    if batch_size is not None and not 0 <= batch_size <= max_batch_size:
        raise check.fail(f"inference request batch-size must be <= {max_batch_size} for '{model}'")

    for tensor in request.inputs:
        spec = specs[tensor.name]
        if tensor.datatype != spec.datatype:
            raise check.fail(
                f"inference input '{tensor.name}' data-type is '{tensor.datatype}', but model "
                f"'{model}' expects '{spec.datatype}'"
            )
        if any(dim < 0 for dim in tensor.shape):
            raise check.fail(
                f"All input dimensions should be specified for input '{tensor.name}' for "
                f"model '{model}', got {shape_text(tensor.shape)}"
            )
        expected = (-1, *spec.dims) if max_batch_size > 0 else spec.dims
        if not _matches(tensor.shape, expected):
            note = _BATCH_NOTE if max_batch_size > 0 else ""
            raise check.fail(
                f"unexpected shape for input '{tensor.name}' for model '{model}'. Expected "
                f"{shape_text(expected)}, got {shape_text(tensor.shape)}. {note}"
            )
        tensor.array = _materialize(check, tensor)

    return batch_size if batch_size is not None else 1


def _materialize(check: _Checker, tensor: InputTensor) -> np.ndarray:
    """The input's data as an ndarray of its shape, once its size is known to fit."""
    count = math.prod(tensor.shape)
    where = f"inference input '{tensor.name}' for model '{check.model}'"
    if isinstance(tensor.data, np.ndarray):  # from typed contents
        flat = tensor.data
        if len(flat) != count:
            if tensor.datatype == "BYTES":
                raise check.fail(f"expected {count} string elements for {where}, got {len(flat)}")
            size = NUMPY_DTYPES[tensor.datatype].itemsize
            raise check.fail(
                f"input byte size mismatch for input '{tensor.name}' for model "
                f"'{check.model}'. Expected {count * size}, got {len(flat) * size}"
            )
        return flat.reshape(tensor.shape)
    if isinstance(tensor.data, SharedMemoryRef):  # the engine resolves these first
        raise EngineError(ErrorCode.INTERNAL, f"{where} was not read from shared memory")
    if tensor.datatype == "BYTES":
        if isinstance(tensor.data, DeviceBytes):  # the engine copies strings to the host
            raise EngineError(ErrorCode.INTERNAL, f"{where}: BYTES cannot stay on the device")
        try:
            return decode_bytes_tensor(tensor.data, count, where).reshape(tensor.shape)
        except ValueError as exc:
            raise check.fail(str(exc)) from None
    dtype = NUMPY_DTYPES[tensor.datatype]
    expected_bytes = count * dtype.itemsize
    size = tensor.data.nbytes if isinstance(tensor.data, DeviceBytes) else len(tensor.data)
    if size != expected_bytes:
        raise check.fail(
            f"input byte size mismatch for input '{tensor.name}' for model '{check.model}'. "
            f"Expected {expected_bytes}, got {size}"
        )
    if isinstance(tensor.data, DeviceBytes):
        # A device tensor, for instances that say they take them (takes_device_tensors).
        return cast(np.ndarray, tensor.data.typed(tensor.datatype, tensor.shape))
    return np.frombuffer(tensor.data, dtype=dtype).reshape(tensor.shape)
