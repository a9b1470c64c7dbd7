"""The engine's request checks as pure logic: no server, no model."""

from __future__ import annotations

import numpy as np
import pytest

from inferd.engines import (
    EngineError,
    ErrorCode,
    InferRequest,
    InputTensor,
    RequestedOutput,
    TensorSpec,
)
from inferd.engines.validation import validate_request
from inferd.protos.datatypes import encode_bytes_tensor

INPUTS = (TensorSpec("INPUT0", "INT32", (16,)), TensorSpec("INPUT1", "INT32", (16,)))
OUTPUTS = (TensorSpec("OUTPUT0", "INT32", (16,)), TensorSpec("OUTPUT1", "INT32", (16,)))
PREFIX = "[request id: <id_unknown>] "


def _int32(name: str, shape: tuple[int, ...], count: int | None = None) -> InputTensor:
    elements = int(np.prod(shape)) if count is None else count
    return InputTensor(name, "INT32", shape, np.arange(elements, dtype=np.int32).tobytes())


def _request(*inputs: InputTensor, outputs: tuple[str, ...] = (), request_id: str = ""):
    requested = tuple(RequestedOutput(name) for name in outputs)
    return InferRequest("simple", None, list(inputs), requested, request_id)


def _error(request: InferRequest, max_batch_size: int = 8, inputs=INPUTS) -> EngineError:
    with pytest.raises(EngineError) as caught:
        validate_request(request, inputs, OUTPUTS, max_batch_size)
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT
    return caught.value


def test_valid_request_gets_zero_copy_arrays_and_its_batch_size() -> None:
    request = _request(_int32("INPUT0", (3, 16)), _int32("INPUT1", (3, 16)))
    assert validate_request(request, INPUTS, OUTPUTS, 8) == 3
    array = request.inputs[0].array
    assert array is not None and array.shape == (3, 16) and array.dtype == np.int32
    assert not array.flags.owndata  # a view over the request's bytes, not a copy
    assert array[2, 15] == 47


def test_unknown_requested_output_is_checked_first() -> None:
    error = _error(_request(_int32("INPUT0", (1, 16)), outputs=("NOPE",)))
    assert error.message == "unexpected inference output 'NOPE' for model 'simple'"


def test_missing_input_lists_given_and_missing_names() -> None:
    error = _error(_request(_int32("INPUT0", (1, 16))))
    assert error.message == (
        PREFIX + "expected 2 inputs but got 1 inputs for model 'simple'. Got input(s) "
        "['INPUT0'], but missing required input(s) ['INPUT1']. Please provide all required "
        "input(s)."
    )


def test_optional_inputs_change_the_expected_count_wording() -> None:
    inputs = (INPUTS[0], TensorSpec("INPUT1", "INT32", (16,), optional=True))
    error = _error(_request(), inputs=inputs)
    assert "expected number of inputs between 1 and 2 but got 0 inputs" in error.message


def test_unknown_input_and_duplicate_input() -> None:
    unknown = _error(_request(_int32("INPUT0", (1, 16)), _int32("FOO", (1, 16))))
    assert unknown.message == "unexpected inference input 'FOO' for model 'simple'"
    duplicate = _error(_request(_int32("INPUT0", (1, 16)), _int32("INPUT0", (1, 16))))
    assert duplicate.message == PREFIX + "input 'INPUT0' already exists in request"


def test_request_id_appears_in_the_prefix() -> None:
    error = _error(_request(_int32("INPUT0", (1, 16)), request_id="abc"))
    assert error.message.startswith("[request id: abc] expected 2 inputs")


def test_datatype_mismatch() -> None:
    fp32 = InputTensor("INPUT0", "FP32", (1, 16), np.zeros(16, np.float32).tobytes())
    error = _error(_request(fp32, _int32("INPUT1", (1, 16))))
    assert error.message == (
        PREFIX + "inference input 'INPUT0' data-type is 'FP32', but model 'simple' expects 'INT32'"
    )


def test_shape_mismatch_carries_the_batch_note() -> None:
    error = _error(_request(_int32("INPUT0", (1, 15)), _int32("INPUT1", (1, 16))))
    assert error.message.startswith(
        PREFIX + "unexpected shape for input 'INPUT0' for model 'simple'. Expected [-1,16], "
        "got [1,15]. NOTE: Setting a non-zero max_batch_size"
    )


def test_batch_above_the_maximum_and_mismatched_batches() -> None:
    too_big = _error(_request(_int32("INPUT0", (9, 16)), _int32("INPUT1", (9, 16))))
    assert too_big.message == PREFIX + "inference request batch-size must be <= 8 for 'simple'"
    mixed = _error(_request(_int32("INPUT0", (2, 16)), _int32("INPUT1", (3, 16))))
    assert mixed.message == (
        PREFIX + "input 'INPUT1' batch size does not match other inputs for 'simple'"
    )


def test_no_shape_on_a_batching_model() -> None:
    error = _error(_request(_int32("INPUT0", ()), _int32("INPUT1", (1, 16))))
    assert "input 'INPUT0' has no shape but model requires batch dimension" in error.message


def test_negative_dimension() -> None:
    error = _error(_request(_int32("INPUT0", (1, -1), 0), _int32("INPUT1", (1, 16))))
    assert error.message == (
        PREFIX + "All input dimensions should be specified for input 'INPUT0' for model "
        "'simple', got [1,-1]"
    )


def test_raw_byte_size_mismatch() -> None:
    error = _error(_request(_int32("INPUT0", (1, 16), 15), _int32("INPUT1", (1, 16))))
    assert error.message == (
        PREFIX + "input byte size mismatch for input 'INPUT0' for model 'simple'. "
        "Expected 64, got 60"
    )


def test_unbatched_model_takes_the_exact_dims() -> None:
    inputs = (TensorSpec("INPUT0", "INT32", (-1,)), TensorSpec("INPUT1", "INT32", (-1,)))
    request = _request(_int32("INPUT0", (5,)), _int32("INPUT1", (5,)))
    assert validate_request(request, inputs, OUTPUTS, 0) == 1
    error = _error(_request(_int32("INPUT0", (1, 5)), _int32("INPUT1", (5,))), 0, inputs)
    assert error.message.endswith("Expected [-1], got [1,5]. ")


BYTES_INPUTS = (TensorSpec("INPUT0", "BYTES", (-1,)),)


@pytest.mark.parametrize(
    ("raw", "shape", "complaint"),
    [
        (
            b"\x01\x00",
            (1, 1),
            "incomplete string length indicator for inference input 'INPUT0' "
            "for model 'simple', expecting 4 bytes but only 2 bytes available",
        ),
        (
            encode_bytes_tensor(np.array([b"a"], dtype=object)),
            (1, 2),
            "expected 2 string elements for inference input 'INPUT0' for model 'simple', got 1",
        ),
        (
            encode_bytes_tensor(np.array([b"a", b"b"], dtype=object)),
            (1, 1),
            "unexpected number of string elements 2 for inference input 'INPUT0' for model "
            "'simple', expecting 1",
        ),
        (b"\x05\x00\x00\x00ab", (1, 1), "expecting string of length 5 but only 2 bytes"),
    ],
    ids=["short-length", "too-few", "too-many", "truncated-element"],
)
def test_malformed_bytes(raw: bytes, shape: tuple[int, ...], complaint: str) -> None:
    tensor = InputTensor("INPUT0", "BYTES", shape, raw)
    error = _error(_request(tensor), inputs=BYTES_INPUTS)
    assert error.message.startswith(PREFIX)
    assert complaint in error.message


def test_bytes_keep_embedded_nuls_and_empty_elements() -> None:
    values = np.array([b"a\x00b", b"", b"\xff"], dtype=object)
    tensor = InputTensor("INPUT0", "BYTES", (1, 3), encode_bytes_tensor(values))
    validate_request(_request(tensor), BYTES_INPUTS, OUTPUTS, 8)
    assert tensor.array is not None
    assert tensor.array.tolist() == [[b"a\x00b", b"", b"\xff"]]


def test_typed_contents_count_mismatch_reads_as_a_byte_size_mismatch() -> None:
    typed = InputTensor("INPUT0", "INT32", (1, 16), np.zeros(15, dtype=np.int32))
    error = _error(_request(typed, _int32("INPUT1", (1, 16))))
    assert error.message.endswith("Expected 64, got 60")
