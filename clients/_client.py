"""The blocking client, and the configuration it shares with the async one."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import TypeVar

import grpc
import numpy as np
import numpy.typing as npt

from ..protos import model_config_pb2
from ..protos.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from . import _codec
from ._codec import ModelMetadata, ParameterValue, RepositoryModel, ServerMetadata
from ._errors import translated_rpc_errors
from ._propagation import trace_metadata

ResultT = TypeVar("ResultT")

DEFAULT_URL = "127.0.0.1:8001"

# gRPC's own default caps received messages at 4 MiB, far below a batch of images;
# 2**31 - 1 is the largest limit gRPC accepts.
DEFAULT_MAX_MESSAGE_BYTES = 2**31 - 1


class BaseClient:
    """Target, channel options and default timeout, shared by Client and AsyncClient."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        timeout: float | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        channel_options: Sequence[tuple[str, int | str]] = (),
    ) -> None:
        self._target = _target_of(url)
        self._timeout = timeout
        # channel_options: extra gRPC channel arguments, e.g. keepalive settings, or
        # ("grpc.use_local_subchannel_pool", 1) for a TCP connection of its own.
        self._options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            *channel_options,
        ]

    def _timeout_for(self, timeout: float | None) -> float | None:
        return self._timeout if timeout is None else timeout


def _target_of(url: str) -> str:
    # gRPC reads "unix:/path" and "host:port" itself; a scheme such as http:// or
    # grpc:// would be taken as a resolver name and fail obscurely at the first call.
    if url.startswith("unix:") or ("://" not in url and ":" in url):
        return url
    raise ValueError(f"url must be 'host:port' or 'unix:/path', got {url!r}")


class Client(BaseClient):
    """A blocking client for an inferd (or Triton) server's gRPC endpoint.

    ``url`` is ``host:port`` or ``unix:/path``. ``timeout`` (seconds) applies to
    every call unless the call passes its own; ``None`` waits indefinitely. Failed
    calls raise a subclass of ``InferdError``, including when the server is down.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        timeout: float | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        channel_options: Sequence[tuple[str, int | str]] = (),
    ) -> None:
        super().__init__(
            url,
            timeout=timeout,
            max_message_bytes=max_message_bytes,
            channel_options=channel_options,
        )
        self._channel = grpc.insecure_channel(self._target, options=self._options)
        self._stub = GRPCInferenceServiceStub(self._channel)

    def is_server_live(self, *, timeout: float | None = None) -> bool:
        """Whether the server is live (running, even if not ready to serve)."""
        return self._send(_codec.server_live(), timeout)

    def is_server_ready(self, *, timeout: float | None = None) -> bool:
        """Whether the server is ready to accept inference requests."""
        return self._send(_codec.server_ready(), timeout)

    def is_model_ready(
        self, model: str, version: str = "", *, timeout: float | None = None
    ) -> bool:
        """Whether ``model`` (default: the server's chosen version) can serve requests."""
        return self._send(_codec.model_ready(model, version), timeout)

    def server_metadata(self, *, timeout: float | None = None) -> ServerMetadata:
        """The server's name, version and supported protocol extensions."""
        return self._send(_codec.server_metadata(), timeout)

    def model_metadata(
        self, model: str, version: str = "", *, timeout: float | None = None
    ) -> ModelMetadata:
        """``model``'s versions, platform, inputs and outputs."""
        return self._send(_codec.model_metadata(model, version), timeout)

    def model_config(
        self, model: str, version: str = "", *, timeout: float | None = None
    ) -> model_config_pb2.ModelConfig:
        """``model``'s full configuration, as Triton's ``ModelConfig`` message."""
        return self._send(_codec.model_config(model, version), timeout)

    def repository_index(
        self, ready: bool = False, *, timeout: float | None = None
    ) -> list[RepositoryModel]:
        """Every model in the repository, or with ``ready=True`` only the ready ones."""
        return self._send(_codec.repository_index(ready), timeout)

    def infer(
        self,
        model: str,
        inputs: Mapping[str, npt.ArrayLike],
        *,
        outputs: Iterable[str] | None = None,
        version: str = "",
        request_id: str = "",
        parameters: Mapping[str, ParameterValue] | None = None,
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Run ``model`` on ``inputs`` (name -> array) and return its outputs by name.

        ``outputs`` names the outputs to return (default: all). Fixed-size outputs are
        read-only arrays; BYTES outputs are object arrays of ``bytes``.
        """
        rpc = _codec.infer(
            model,
            inputs,
            outputs=outputs,
            version=version,
            request_id=request_id,
            parameters=parameters,
        )
        return self._send(rpc, timeout)

    def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _send(self, rpc: _codec.Rpc[ResultT], timeout: float | None) -> ResultT:
        method = getattr(self._stub, rpc.method)
        with translated_rpc_errors():
            response = method(
                rpc.request, timeout=self._timeout_for(timeout), metadata=trace_metadata()
            )
        return rpc.parse(response)
