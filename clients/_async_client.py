"""The asyncio client: ``Client``'s methods as coroutines over a ``grpc.aio`` channel."""

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
from ._client import DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_URL, BaseClient
from ._codec import ModelMetadata, ParameterValue, RepositoryModel, ServerMetadata
from ._errors import translated_rpc_errors
from ._propagation import trace_metadata

ResultT = TypeVar("ResultT")


class AsyncClient(BaseClient):
    """An asyncio client for an inferd (or Triton) server's gRPC endpoint.

    Takes the same arguments as ``Client``, and has the same methods as coroutines.
    It may be created outside a running loop, but is bound to the event loop of its
    first call: a ``grpc.aio`` channel only works on the loop it was created in.
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
        self._stub: GRPCInferenceServiceStub | None = None
        self._channel: grpc.aio.Channel | None = None
        self._closed = False

    async def is_server_live(self, *, timeout: float | None = None) -> bool:
        """Whether the server is live (running, even if not ready to serve)."""
        return await self._send(_codec.server_live(), timeout)

    async def is_server_ready(self, *, timeout: float | None = None) -> bool:
        """Whether the server is ready to accept inference requests."""
        return await self._send(_codec.server_ready(), timeout)

    async def is_model_ready(
        self, model: str, version: str = "", *, timeout: float | None = None
    ) -> bool:
        """Whether ``model`` (default: the server's chosen version) can serve requests."""
        return await self._send(_codec.model_ready(model, version), timeout)

    async def server_metadata(self, *, timeout: float | None = None) -> ServerMetadata:
        """The server's name, version and supported protocol extensions."""
        return await self._send(_codec.server_metadata(), timeout)

    async def model_metadata(
        self, model: str, version: str = "", *, timeout: float | None = None
    ) -> ModelMetadata:
        """``model``'s versions, platform, inputs and outputs."""
        return await self._send(_codec.model_metadata(model, version), timeout)

    async def model_config(
        self, model: str, version: str = "", *, timeout: float | None = None
    ) -> model_config_pb2.ModelConfig:
        """``model``'s full configuration, as Triton's ``ModelConfig`` message."""
        return await self._send(_codec.model_config(model, version), timeout)

    async def repository_index(
        self, ready: bool = False, *, timeout: float | None = None
    ) -> list[RepositoryModel]:
        """Every model in the repository, or with ``ready=True`` only the ready ones."""
        return await self._send(_codec.repository_index(ready), timeout)

    async def infer(
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
        return await self._send(rpc, timeout)

    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        self._closed = True
        if self._channel is not None:
            await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def _send(self, rpc: _codec.Rpc[ResultT], timeout: float | None) -> ResultT:
        if self._closed:
            # The message the sync client's closed channel gives for the same mistake.
            raise ValueError("Cannot invoke RPC on closed channel!")
        if self._stub is None:
            # Created here, not in __init__, so that it binds to the running loop.
            self._channel = grpc.aio.insecure_channel(self._target, options=self._options)
            self._stub = GRPCInferenceServiceStub(self._channel)
        method = getattr(self._stub, rpc.method)
        with translated_rpc_errors():
            response = await method(
                rpc.request, timeout=self._timeout_for(timeout), metadata=trace_metadata()
            )
        return rpc.parse(response)
