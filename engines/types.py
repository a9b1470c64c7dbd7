"""Typed values that cross the engine's boundary: requests in, responses and model facts out.

No protobuf wire types and no gRPC here: the server converts to and from these, so a
second front end (or a front process talking to an engine process) reuses them as is.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

ParameterValue = bool | int | float | str


@dataclass(slots=True)
class InputTensor:
    """One input as the client declared it.

    ``data`` is either the wire's raw bytes (fixed-size elements, or BYTES in the
    protocol's length-prefixed layout) or a flat array decoded from typed contents.
    Validation checks it against the datatype and shape, then ``array`` holds the
    shaped ndarray (a zero-copy view over raw bytes where possible).
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: bytes | np.ndarray
    array: np.ndarray | None = None


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    name: str
    class_count: int = 0  # > 0: the classification extension's top-k instead of the tensor


@dataclass(slots=True)
class InferRequest:
    model_name: str
    model_version: int | None  # None: the newest loaded version
    inputs: list[InputTensor]
    requested_outputs: tuple[RequestedOutput, ...] = ()  # empty: all, in the model's order
    request_id: str = ""
    parameters: dict[str, ParameterValue] = field(default_factory=dict)
    deadline: float | None = None  # time.monotonic() after which the answer is useless


@dataclass(slots=True)
class OutputTensor:
    name: str
    datatype: str
    data: np.ndarray


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: int
    request_id: str
    outputs: list[OutputTensor]  # in the model's output order


class ModelState(enum.Enum):
    """Triton's state strings, as RepositoryIndex reports them."""

    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(frozen=True, slots=True)
class ModelIndexEntry:
    name: str
    version: str  # "" when the model failed before any version was known
    state: ModelState
    reason: str = ""
