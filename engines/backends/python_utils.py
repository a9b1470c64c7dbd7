"""``triton_python_backend_utils`` for inferd: the module a Triton ``model.py`` imports
as ``pb_utils``.

The Python backend registers this module under that name in ``sys.modules`` when it
loads a model, so ``import triton_python_backend_utils as pb_utils`` works unmodified.
Names, signatures and error wording follow Triton's Python backend (its pybind classes
and its pure-Python utilities); what inferd does not do yet (BLS, request rescheduling,
custom metrics, GPU tensors) fails with a TritonModelException that says so.
"""

from __future__ import annotations

import enum
import json
import logging
import struct
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from inferd.engines.backends.python_config import ModelConfig
from inferd.engines.options import FLAG_SEQUENCE_END, FLAG_SEQUENCE_START

__all__ = [
    "TRITONSERVER_REQUEST_FLAG_SEQUENCE_END",
    "TRITONSERVER_REQUEST_FLAG_SEQUENCE_START",
    "TRITONSERVER_REQUEST_RELEASE_ALL",
    "TRITONSERVER_REQUEST_RELEASE_RESCHEDULE",
    "TRITONSERVER_RESPONSE_COMPLETE_FINAL",
    "TRITON_STRING_TO_NUMPY",
    "InferenceRequest",
    "InferenceResponse",
    "InferenceResponseSender",
    "Logger",
    "MetricFamily",
    "ModelConfig",
    "Tensor",
    "TritonError",
    "TritonModelException",
    "deserialize_bytes_tensor",
    "get_input_config_by_name",
    "get_input_tensor_by_name",
    "get_output_config_by_name",
    "get_output_tensor_by_name",
    "is_model_ready",
    "load_model",
    "numpy_to_triton_type",
    "serialize_byte_tensor",
    "triton_string_to_numpy",
    "triton_to_numpy_type",
    "unload_model",
    "using_decoupled_model_transaction_policy",
]

TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = FLAG_SEQUENCE_START
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = FLAG_SEQUENCE_END
TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITONSERVER_REQUEST_RELEASE_ALL = 1
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = 2

# TRITONSERVER_DataType numbers, as Triton's type helpers return them.
_BYTES = 13
_NUMPY_BY_TRITON: dict[int, type] = {
    1: np.bool_,
    2: np.uint8,
    3: np.uint16,
    4: np.uint32,
    5: np.uint64,
    6: np.int8,
    7: np.int16,
    8: np.int32,
    9: np.int64,
    10: np.float16,
    11: np.float32,
    12: np.float64,
    _BYTES: np.object_,
}
_TRITON_BY_DTYPE = {np.dtype(t): code for code, t in _NUMPY_BY_TRITON.items() if code != _BYTES}

TRITON_STRING_TO_NUMPY: dict[str, type] = {
    "TYPE_BOOL": bool,
    "TYPE_UINT8": np.uint8,
    "TYPE_UINT16": np.uint16,
    "TYPE_UINT32": np.uint32,
    "TYPE_UINT64": np.uint64,
    "TYPE_INT8": np.int8,
    "TYPE_INT16": np.int16,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}


def triton_string_to_numpy(triton_type_string: str) -> type:
    """``"TYPE_FP32"`` -> ``np.float32``."""
    return TRITON_STRING_TO_NUMPY[triton_type_string]


def triton_to_numpy_type(data_type: int) -> type | None:
    """A TRITONSERVER_DataType number -> numpy type (None when it has none)."""
    return _NUMPY_BY_TRITON.get(data_type)


def numpy_to_triton_type(data_type: Any) -> int | None:
    """A numpy dtype or type -> TRITONSERVER_DataType number (None when it has none)."""
    try:
        dtype = np.dtype(data_type)
    except TypeError:
        return None
    if dtype.kind in ("O", "S"):
        return _BYTES
    return _TRITON_BY_DTYPE.get(dtype)


def serialize_byte_tensor(input_tensor: np.ndarray) -> bytes | None:
    """Elements as 4-byte little-endian lengths, each followed by its bytes, in C order
    (str and other objects as UTF-8 text); None for a tensor that is not BYTES."""
    if input_tensor.dtype.kind not in ("O", "S"):
        return None
    parts: list[bytes] = []
    for element in input_tensor.ravel(order="C"):
        data = _as_bytes(element)
        parts += (struct.pack("<I", len(data)), data)
    return b"".join(parts)


def deserialize_bytes_tensor(encoded_tensor: bytes) -> np.ndarray:
    """The inverse of ``serialize_byte_tensor``: a 1-D object array of bytes."""
    view = memoryview(encoded_tensor)
    elements: list[bytes] = []
    offset = 0
    while offset < len(view):
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        elements.append(bytes(view[offset : offset + length]))
        offset += length
    array = np.empty(len(elements), dtype=np.object_)
    array[:] = elements
    return array


def _as_bytes(element: object) -> bytes:
    if isinstance(element, bytes | np.bytes_):
        return bytes(element)
    return str(element).encode("utf-8")


class _ErrorCode(enum.IntEnum):
    # TRITONSERVER_Error_Code numbers.
    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7


class TritonError:
    """An error a model puts in an InferenceResponse (not an exception: Triton's is not)."""

    UNKNOWN = _ErrorCode.UNKNOWN
    INTERNAL = _ErrorCode.INTERNAL
    NOT_FOUND = _ErrorCode.NOT_FOUND
    INVALID_ARG = _ErrorCode.INVALID_ARG
    UNAVAILABLE = _ErrorCode.UNAVAILABLE
    UNSUPPORTED = _ErrorCode.UNSUPPORTED
    ALREADY_EXISTS = _ErrorCode.ALREADY_EXISTS
    CANCELLED = _ErrorCode.CANCELLED

    def __init__(self, message: str, code: int = _ErrorCode.INTERNAL) -> None:
        if message is None or code is None:
            raise TypeError("TritonError needs a message and a code (neither may be None)")
        self._message = str(message)
        self._code = _ErrorCode(code)

    def message(self) -> str:
        return self._message

    def code(self) -> _ErrorCode:
        return self._code

    def __str__(self) -> str:
        return self._message

    def __repr__(self) -> str:
        return f"TritonError({self._message!r}, TritonError.{self._code.name})"


class TritonModelException(Exception):
    """Raised by pb_utils calls that fail; models raise it too."""

    def message(self) -> str:
        return str(self)


class Tensor:
    """A named tensor: a request's input or a response's output. Always in CPU memory."""

    def __init__(self, name: str, numpy_array: np.ndarray) -> None:
        if not name:
            raise TritonModelException("Tensor name cannot be an empty string.")
        array = np.asarray(numpy_array)
        if array.dtype.kind in ("U", "V"):
            raise TritonModelException(
                f"Tensor '{name}': numpy dtype {array.dtype} is not supported by the Python "
                "backend. Please use np.object_ instead (an array of bytes)."
            )
        triton_dtype = numpy_to_triton_type(array.dtype)
        if triton_dtype is None:
            raise TritonModelException(
                f"Tensor '{name}': numpy dtype {array.dtype} has no Triton data type"
            )
        self._name = name
        self._array = np.ascontiguousarray(array)
        self._triton_dtype = triton_dtype

    @classmethod
    def _wrap(cls, name: str, array: np.ndarray) -> Tensor:
        """A request input, already validated against the config: no checks.

        Triton's inputs are writable (shared memory): models write into them and hand
        them to ``torch.from_numpy``, which warns on read-only arrays. Inputs arrive here
        as read-only views of the request's bytes, so those are copied once.
        """
        tensor = cls.__new__(cls)
        tensor._name = name
        tensor._array = array if array.flags.writeable else array.copy()
        tensor._triton_dtype = numpy_to_triton_type(array.dtype) or _BYTES
        return tensor

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array

    def shape(self) -> list[int]:
        return list(self._array.shape)

    def triton_dtype(self) -> int:
        return self._triton_dtype

    def is_cpu(self) -> bool:
        return True

    def to_dlpack(self) -> Any:
        """A DLPack capsule sharing this tensor's memory."""
        return self._exportable().__dlpack__()

    def __dlpack__(self, **kwargs: Any) -> Any:
        return self._exportable().__dlpack__(**kwargs)

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)  # kDLCPU, device 0

    def _exportable(self) -> np.ndarray:
        if self._triton_dtype == _BYTES:
            raise TritonModelException("DLPack does not have support for string tensors.")
        if not self._array.flags.writeable:  # legacy DLPack capsules cannot say read-only
            self._array = self._array.copy()
        return self._array

    @staticmethod
    def from_dlpack(name: str, tensor: Any) -> Tensor:
        """A Tensor from a DLPack capsule or any object with ``__dlpack__`` (a torch
        tensor, a numpy array), sharing its memory. Only CPU memory is supported."""
        if not name:
            raise TritonModelException("Tensor name cannot be an empty string.")
        source: Any = tensor if hasattr(tensor, "__dlpack__") else _Capsule(tensor)
        try:
            array = np.from_dlpack(source)
        except (BufferError, RuntimeError, TypeError, ValueError) as exc:
            raise TritonModelException(
                f"Tensor '{name}': cannot take this DLPack tensor ({exc}); inferd's Python "
                "backend holds tensors in CPU memory only, so move GPU tensors to the CPU "
                "first (e.g. torch's .cpu())"
            ) from None
        if not array.flags.c_contiguous:
            raise TritonModelException(
                "DLPack tensor is not contiguous. Only contiguous DLPack tensors that are "
                "stored in C-Order are supported."
            )
        return Tensor(name, array)

    def __repr__(self) -> str:
        return f"Tensor({self._name!r}, shape={self.shape()}, dtype={self._array.dtype})"


class _Capsule:
    """Lets ``np.from_dlpack`` take a bare capsule (it wants the producer object)."""

    def __init__(self, capsule: object) -> None:
        self._capsule = capsule

    def __dlpack__(self, **_: Any) -> object:
        return self._capsule

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)  # numpy reads the real device from the capsule and refuses non-CPU


class InferenceResponse:
    """One response: output tensors, or an error."""

    def __init__(
        self,
        output_tensors: Sequence[Tensor] | None = None,
        error: TritonError | None = None,
        parameters: Mapping[str, bool | int | str] | None = None,
    ) -> None:
        if output_tensors is not None and not isinstance(output_tensors, list | tuple):
            raise TritonModelException('"output_tensors" must be a list.')
        tensors = list(output_tensors or ())
        for tensor in tensors:
            if not isinstance(tensor, Tensor):
                raise TritonModelException(
                    f"output_tensors must hold pb_utils.Tensor objects, got {type(tensor).__name__}"
                )
        if error is not None and not isinstance(error, TritonError):
            raise TritonModelException(
                f"error must be a pb_utils.TritonError, got {type(error).__name__}"
            )
        self._output_tensors = tensors
        self._error = error
        self._parameters = _parameters_json(parameters)

    def output_tensors(self) -> list[Tensor]:
        return self._output_tensors

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def parameters(self) -> str:
        return self._parameters


def _parameters_json(parameters: Mapping[str, bool | int | str] | None) -> str:
    for key, value in (parameters or {}).items():
        if not isinstance(key, str):
            raise TritonModelException(
                f"Expect parameters keys to have type str, found type {type(key).__name__}"
            )
        if not isinstance(value, bool | int | str):
            raise TritonModelException(
                "Expect parameters values to have type bool/int/str, found type "
                f"{type(value).__name__}"
            )
    return json.dumps(dict(parameters or {}))


class InferenceResponseSender:
    """Sends one request's responses (``request.get_response_sender()``), with Triton's
    rules: the final flag ends the request and any later send raises; a model that is
    not decoupled sends exactly one response. Thread-safe."""

    def __init__(
        self,
        deliver: Callable[[InferenceResponse | None, bool], None],
        is_cancelled: Callable[[], bool],
        decoupled: bool,
    ) -> None:
        self._deliver = deliver  # the backend's: converts and hands to the engine
        self._is_cancelled = is_cancelled
        self._decoupled = decoupled
        self._lock = threading.Lock()
        self._closed = False
        self._sent = 0
        self._held: InferenceResponse | None = None

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        if flags not in (0, TRITONSERVER_RESPONSE_COMPLETE_FINAL):
            raise TritonModelException("Unable to send response. Unsupported flag provided.")
        if response is None and flags == 0:
            raise TritonModelException(
                "Inference Response object must be provided when the response flags is set to zero."
            )
        if response is not None and not isinstance(response, InferenceResponse):
            raise TritonModelException(
                "Unable to send response: expected a pb_utils.InferenceResponse, got "
                f"{type(response).__name__}"
            )
        final = flags == TRITONSERVER_RESPONSE_COMPLETE_FINAL
        with self._lock:  # one request's responses leave in the order they were sent
            if not self._decoupled:
                if response is not None and self._sent:
                    raise TritonModelException(
                        "Unable to send response. Non-decoupled model cannot send more than "
                        "one response."
                    )
                if response is None and final and not self._sent:
                    raise TritonModelException(
                        "Unable to send response. Non-decoupled model cannot send complete "
                        "final before sending a response."
                    )
            if self._closed:
                raise TritonModelException(
                    "Unable to send response. Response sender has been closed."
                )
            if not self._decoupled:
                # One answer per request: held until the final flag, then sent as one.
                if not final:
                    self._held = response
                    self._sent += 1
                    return
                if response is None:
                    response = self._held
            self._deliver(response, final)
            self._sent += 1
            self._closed = final

    def is_cancelled(self) -> bool:
        return self._is_cancelled()

    def _close(self) -> bool:
        """End the sender from the backend's side; True if it was still open (the
        request has not ended). Later sends from the model raise."""
        with self._lock:
            was_open = not self._closed
            self._closed = True
            return was_open


class InferenceRequest:
    """A request as ``execute`` receives it. Building one in a model (to call another
    model: BLS) is not supported yet."""

    _inputs: list[Tensor]
    _request_id: str
    _requested_output_names: list[str]
    _parameters: str
    _timeout: int
    _sender: InferenceResponseSender
    _flags: int
    _correlation_id: int | str

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TritonModelException(
            "inferd's Python backend does not support BLS yet: a model cannot build a "
            "pb_utils.InferenceRequest to call another model"
        )

    @classmethod
    def _create(
        cls,
        inputs: list[Tensor],
        request_id: str,
        requested_output_names: list[str],
        parameters: str,
        timeout: int,
        sender: InferenceResponseSender,
    ) -> InferenceRequest:
        request = cls.__new__(cls)
        request._inputs = inputs
        request._request_id = request_id
        request._requested_output_names = requested_output_names
        request._parameters = parameters
        request._timeout = timeout
        request._sender = sender
        request._flags = 0
        request._correlation_id = 0
        return request

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def request_id(self) -> str:
        return self._request_id

    def correlation_id(self) -> int | str:
        """The sequence id (an int, or a str for string ids); 0 outside a sequence."""
        return self._correlation_id

    def flags(self) -> int:
        return self._flags

    def set_flags(self, flags: int) -> None:
        self._flags = flags

    def requested_output_names(self) -> list[str]:
        return self._requested_output_names

    def parameters(self) -> str:
        """The request's parameters as a JSON object string, as Triton hands them."""
        return self._parameters

    def timeout(self) -> int:
        """The client's timeout in microseconds (0: none)."""
        return self._timeout

    def get_response_sender(self) -> InferenceResponseSender:
        return self._sender

    def is_cancelled(self) -> bool:
        return self._sender.is_cancelled()

    def set_release_flags(self, flags: int) -> None:
        if flags == TRITONSERVER_REQUEST_RELEASE_RESCHEDULE:
            raise TritonModelException(
                "inferd's Python backend does not support request rescheduling "
                "(TRITONSERVER_REQUEST_RELEASE_RESCHEDULE) yet"
            )
        if flags != TRITONSERVER_REQUEST_RELEASE_ALL:
            raise TritonModelException(f"unknown request release flags {flags}")

    def exec(self, *args: Any, **kwargs: Any) -> Any:
        raise TritonModelException("inferd's Python backend does not support BLS yet")

    def async_exec(self, *args: Any, **kwargs: Any) -> Any:
        raise TritonModelException("inferd's Python backend does not support BLS yet")


def get_input_tensor_by_name(inference_request: InferenceRequest, name: str) -> Tensor | None:
    for tensor in inference_request.inputs():
        if tensor.name() == name:
            return tensor
    return None


def get_output_tensor_by_name(inference_response: InferenceResponse, name: str) -> Tensor | None:
    for tensor in inference_response.output_tensors():
        if tensor.name() == name:
            return tensor
    return None


def get_input_config_by_name(model_config: Mapping[str, Any], name: str) -> Any:
    """The config's entry for input ``name`` (a dict), or None."""
    return _tensor_config(model_config, "input", name)


def get_output_config_by_name(model_config: Mapping[str, Any], name: str) -> Any:
    """The config's entry for output ``name`` (a dict), or None."""
    return _tensor_config(model_config, "output", name)


def _tensor_config(model_config: Mapping[str, Any], kind: str, name: str) -> Any:
    for tensor in model_config.get(kind, ()):
        if tensor["name"] == name:
            return tensor
    return None


def using_decoupled_model_transaction_policy(model_config: Mapping[str, Any]) -> bool:
    return bool(model_config.get("model_transaction_policy", {}).get("decoupled", False))


class _LogLevel(enum.IntEnum):
    INFO = 0
    WARNING = 1
    ERROR = 2
    VERBOSE = 3


_model_logger = logging.getLogger("inferd.python_model")
_LOGGING_LEVELS = {
    _LogLevel.INFO: logging.INFO,
    _LogLevel.WARNING: logging.WARNING,
    _LogLevel.ERROR: logging.ERROR,
    _LogLevel.VERBOSE: logging.DEBUG,
}


class Logger:
    """Triton's model logger, onto Python logging (logger ``inferd.python_model``;
    VERBOSE is DEBUG). Records name the model file and line that logged."""

    LogLevel = _LogLevel
    INFO = _LogLevel.INFO
    WARNING = _LogLevel.WARNING
    ERROR = _LogLevel.ERROR
    VERBOSE = _LogLevel.VERBOSE

    @staticmethod
    def log(message: str, level: int = _LogLevel.INFO) -> None:
        _model_logger.log(_LOGGING_LEVELS[_LogLevel(level)], "%s", message, stacklevel=2)

    @staticmethod
    def log_info(message: str) -> None:
        _model_logger.info("%s", message, stacklevel=2)

    @staticmethod
    def log_warn(message: str) -> None:
        _model_logger.warning("%s", message, stacklevel=2)

    @staticmethod
    def log_error(message: str) -> None:
        _model_logger.error("%s", message, stacklevel=2)

    @staticmethod
    def log_verbose(message: str) -> None:
        _model_logger.debug("%s", message, stacklevel=2)


class MetricFamily:
    """Custom metrics are not supported yet; creating one says so."""

    COUNTER = 0
    GAUGE = 1
    HISTOGRAM = 2

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TritonModelException("inferd's Python backend does not support custom metrics yet")


def load_model(*args: Any, **kwargs: Any) -> None:
    raise TritonModelException("inferd's Python backend does not support model control yet")


def unload_model(*args: Any, **kwargs: Any) -> None:
    raise TritonModelException("inferd's Python backend does not support model control yet")


def is_model_ready(*args: Any, **kwargs: Any) -> bool:
    raise TritonModelException("inferd's Python backend does not support BLS yet")
