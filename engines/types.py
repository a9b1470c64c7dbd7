"""Typed values that cross the engine's boundary: requests in, responses and model facts out.

No protobuf wire types and no gRPC here: the server converts to and from these, so a
second front end (or a front process talking to an engine process) reuses them as is.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from inferd.engines.errors import EngineError
from inferd.engines.options import DEFAULT_OPTIONS, RequestOptions
from inferd.protos.datatypes import NUMPY_DTYPES


@dataclass(frozen=True, slots=True)
class SharedMemoryRef:
    """``byte_size`` bytes at ``offset`` of a client's CUDA shared-memory region.

    Front ends pass these through unread: only the engine's process holds CUDA, so the
    engine resolves them (``cuda_shared_memory``) before validation and after the model.
    """

    region: str
    offset: int
    byte_size: int


class DeviceBytes(abc.ABC):
    """An input's bytes in GPU memory, for a model whose instances take device tensors:
    validation checks ``nbytes`` and asks for a typed view, without a host copy."""

    nbytes: int

    @abc.abstractmethod
    def typed(self, datatype: str, shape: tuple[int, ...]) -> object:
        """The bytes as a device tensor of ``datatype`` (never BYTES) and ``shape``."""


@dataclass(slots=True)
class InputTensor:
    """One input as the client declared it.

    ``data`` is either the wire's raw bytes (fixed-size elements, or BYTES in the
    protocol's length-prefixed layout) or a flat array decoded from typed contents.
    A CUDA shared-memory input arrives as a ``SharedMemoryRef`` that the engine replaces
    with host bytes, or with ``DeviceBytes`` for models that take device tensors.
    Validation checks it against the datatype and shape, then ``array`` holds the
    shaped ndarray (a zero-copy view over raw bytes where possible; a device tensor for
    ``DeviceBytes``).
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    # memoryview: bytes in another process's ring, or copied out of GPU memory
    data: bytes | memoryview | np.ndarray | SharedMemoryRef | DeviceBytes
    array: np.ndarray | None = None


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    name: str
    class_count: int = 0  # > 0: the classification extension's top-k instead of the tensor
    region: SharedMemoryRef | None = None  # written into this CUDA shared-memory slice


@dataclass(slots=True)
class InferRequest:
    model_name: str
    model_version: int | None  # None: the newest loaded version
    inputs: list[InputTensor]
    requested_outputs: tuple[RequestedOutput, ...] = ()  # empty: all, in the model's order
    request_id: str = ""
    options: RequestOptions = DEFAULT_OPTIONS  # priority, timeout, sequence, ...
    deadline: float | None = None  # time.monotonic() after which the answer is useless
    # An opaque handle from the front end (its trace span), handed back with the batch
    # the request rode in; None (tracing off) costs the engine nothing.
    trace: object | None = None

    def uses_cuda_shared_memory(self) -> bool:
        return any(isinstance(tensor.data, SharedMemoryRef) for tensor in self.inputs) or any(
            output.region is not None for output in self.requested_outputs
        )


def shape_only(datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    """An array that holds only a shape and a type (no memory): an output whose values
    went into a client's shared memory."""
    dtype = NUMPY_DTYPES.get(datatype, np.dtype(object))
    return np.broadcast_to(np.zeros((), dtype), shape)


@dataclass(slots=True)
class OutputTensor:
    name: str
    datatype: str
    data: np.ndarray
    # Its values were written into the client's CUDA shared-memory region: the response
    # carries its name, datatype and shape (``data.shape``) and no bytes.
    in_shared_memory: bool = False


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: int
    request_id: str
    outputs: list[OutputTensor]  # in the model's output order
    # The request's last response. A decoupled model's request may have many, or end
    # with an empty one that carries only this flag.
    final: bool = True


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """A streamed request's response that reports an error; ``final`` when it also ends
    the request (a decoupled model may report an error and go on)."""

    error: EngineError
    final: bool


class ModelState(enum.Enum):
    """Triton's state strings, as RepositoryIndex reports them."""

    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"
    # A model directory that was never loaded: Triton lists only its name (no version,
    # state or reason).
    NOT_LOADED = ""


@dataclass(frozen=True, slots=True)
class ModelIndexEntry:
    name: str
    version: str  # "" when the model failed before any version was known
    state: ModelState
    reason: str = ""


@dataclass(frozen=True, slots=True)
class BatchMember:
    trace: object  # the request's handle from InferRequest.trace
    queued_ns: int  # time.perf_counter_ns() when it entered the queue


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """One execution, for observers (tracing): when each phase ran, on which instance,
    and which traced requests rode in it. Times are time.perf_counter_ns()."""

    model: str
    version: int
    instance: int
    device: str  # "cpu", or "cuda:N"
    rows: int
    requests: int
    start_ns: int  # taken from the queue
    infer_start_ns: int  # inputs gathered
    infer_end_ns: int
    done_ns: int  # outputs split back
    members: tuple[BatchMember, ...]
    error: str | None = None


class BatchObserver(Protocol):
    """Told of every execution that carried at least one traced request, on the
    instance's thread: keep it short and thread-safe."""

    def on_batch(self, record: BatchRecord) -> None: ...
