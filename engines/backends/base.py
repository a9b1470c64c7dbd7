"""The narrow interface every runtime (ONNX Runtime, TensorRT, torch, ...) implements."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np

from inferd.engines.errors import EngineError
from inferd.engines.execution.packing import gather
from inferd.engines.options import RequestOptions
from inferd.protos import model_config_pb2


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    """Where one execution instance runs: its index within the model, kind and device."""

    index: int
    kind: str  # "CPU" or "GPU"
    device: int | None = None  # GPU ordinal for GPU instances


class BackendInstance(abc.ABC):
    """One loaded copy of a model. ``gather`` and ``infer`` are called from one instance
    thread at a time."""

    # True: inputs may arrive as device tensors (torch, on a GPU) besides ndarrays, when
    # a client's CUDA shared memory holds them; ``gather`` and ``infer`` take both, and
    # ``infer`` honours ``device_outputs``.
    takes_device_tensors: bool = False

    def gather(self, requests: Sequence[Mapping[str, np.ndarray]]) -> Mapping[str, np.ndarray]:
        """Stack the requests of a batch into one input per name. A runtime that stages
        inputs somewhere (pinned memory for a GPU) overrides this to write them there
        directly, saving a copy of the whole batch."""
        return gather(requests)

    @abc.abstractmethod
    def infer(
        self,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str],
        device_outputs: frozenset[str] = frozenset(),
    ) -> dict[str, np.ndarray]:
        """Run the model; inputs already match the config. Returns the named outputs.

        ``device_outputs`` (only ever non-empty for ``takes_device_tensors``): outputs to
        return as device tensors, complete and of the config's type, since every request
        of the batch writes them into a client's CUDA shared memory."""

    def cancel(self) -> None:  # noqa: B027 - a runtime that cannot abort a run lets it finish
        """Abort the run in progress, from another thread; its ``infer`` then raises."""

    def close(self) -> None:  # noqa: B027 - most runtimes free everything on garbage collection
        """Release the instance's resources."""


class ResponseSender(Protocol):
    """Where one request's responses go. Thread-safe; callable from any thread, also
    after ``RequestInstance.execute`` has returned (decoupled models answer later)."""

    def send(
        self,
        outputs: Mapping[str, np.ndarray] | None = None,
        *,
        final: bool = False,
        error: EngineError | None = None,
    ) -> None:
        """One response (``outputs``, or ``error``), and/or the end of the request
        (``final``; with no outputs and no error it only marks the end). A request ends
        exactly once; sending after that raises EngineError."""

    def is_cancelled(self) -> bool:
        """The client has gone: further responses are dropped, the model may stop early."""


@dataclass(frozen=True, slots=True)
class BackendRequest:
    """One request of a batch, as a request-level instance receives it (never merged
    with the others): inputs shaped and typed as the config declares (BYTES: object
    arrays of bytes), the outputs asked for (all, when the client named none)."""

    request_id: str
    inputs: Mapping[str, np.ndarray]
    output_names: tuple[str, ...]
    options: RequestOptions
    sender: ResponseSender


class RequestInstance(abc.ABC):
    """An instance that takes a batch as separate requests and answers each one through
    its sender (Triton's Python backend: ``execute(requests)``); nothing is concatenated.
    ``execute`` is called from one instance thread at a time."""

    @abc.abstractmethod
    def execute(self, requests: Sequence[BackendRequest]) -> None:
        """Run one batch. Each request must end (a final send) eventually; a decoupled
        model may go on sending from its own threads after this returns. Raising fails
        every request of the batch that has not ended."""

    def cancel(self) -> None:  # noqa: B027 - nothing to abort by default
        """Abort the batch in progress, from another thread."""

    def close(self) -> None:  # noqa: B027
        """Release the instance (a Python model's ``finalize``)."""


class Backend(abc.ABC):
    """A runtime, registered by name; a stateless factory of instances."""

    name: ClassVar[str]  # the config's `backend` field, e.g. "onnxruntime"
    platforms: ClassVar[tuple[str, ...]]  # the config's `platform` names it serves
    default_model_filename: ClassVar[str]

    def gpu_count(self) -> int:
        """The GPUs this runtime can place instances on (KIND_AUTO and the default
        instance group use them when there are any)."""
        return 0

    @abc.abstractmethod
    def complete_config(
        self,
        model_path: Path,
        config: model_config_pb2.ModelConfig,
    ) -> None:
        """Fill in what the config leaves out (tensors, types, dims, batching) from the model
        file, in place, and fail with a message naming the mismatch where they disagree."""

    @abc.abstractmethod
    def load(
        self, model_path: Path, config: model_config_pb2.ModelConfig, instance: InstanceSpec
    ) -> BackendInstance | RequestInstance:
        """Build one execution instance: a tensor instance (batches concatenated) or a
        request instance (batches as separate requests, decoupled responses)."""
