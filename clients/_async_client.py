"""The asyncio client: ``Client``'s methods as coroutines over a ``grpc.aio`` channel,
and ``ModelStreamInfer`` streaming, which only this client has."""

from __future__ import annotations

import asyncio
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Iterable,
    Mapping,
    Sequence,
)
from types import TracebackType
from typing import Any, TypeVar

import grpc
import numpy as np
import numpy.typing as npt

from ..protos import model_config_pb2
from ..protos.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from . import _codec
from ._client import DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_URL, BaseClient
from ._codec import (
    ModelMetadata,
    ParameterValue,
    RepositoryModel,
    ServerMetadata,
    StreamRequest,
    StreamResponse,
)
from ._errors import RequestCancelledError, error_from_rpc, translated_rpc_errors
from ._propagation import trace_metadata

ResultT = TypeVar("ResultT")

GRPC_ERROR_HEADER = "triton_grpc_error"


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

    def stream_infer(
        self,
        requests: AsyncIterable[StreamRequest] | Iterable[StreamRequest],
        *,
        timeout: float | None = None,
        grpc_errors: bool = False,
    ) -> AsyncGenerator[StreamResponse, None]:
        """Send ``requests`` on one ``ModelStreamInfer`` call and iterate its responses.

        Each request is sent as soon as ``requests`` yields it, and the responses come
        back as the server sends them, interleaved across requests: match them by
        ``StreamResponse.request_id``. A decoupled model may answer a request with any
        number of responses; ``final`` marks its last. When ``requests`` is exhausted the
        client half-closes the stream and the iteration ends once the server has
        answered everything. A plain iterable is read on the event loop, so it must not
        block; requests that arrive over time belong in an async iterable.

        Errors for one request arrive as responses with ``error`` set (code UNKNOWN, as
        the stream carries no status) and the stream goes on. With ``grpc_errors=True``
        the client sends Triton's ``triton_grpc_error`` header, and the server's first
        error ends the call: iterating raises its ``InferdError`` (e.g.
        ``InvalidArgumentError``). A status that ends the call raises the same way, and
        an exception raised by ``requests`` (or a request that cannot be encoded)
        cancels the call and is raised here.

        ``timeout`` (seconds) bounds the whole call, not each request; the client's own
        default timeout does not apply, since a stream lives as long as its requests keep
        coming. The call opens at the first iteration. Leaving the ``async for`` early
        cancels the call once the iterator is released; ``await responses.aclose()``
        (or ``contextlib.aclosing``) cancels it at once, as does cancelling the task
        that iterates.
        """
        self._check_open()
        metadata = tuple(trace_metadata() or ())
        if grpc_errors:
            metadata += ((GRPC_ERROR_HEADER, "true"),)
        return self._stream(requests, timeout, metadata)

    async def _stream(
        self,
        requests: AsyncIterable[StreamRequest] | Iterable[StreamRequest],
        timeout: float | None,
        metadata: tuple[tuple[str, str], ...],
    ) -> AsyncGenerator[StreamResponse, None]:
        call = self._stub_now().ModelStreamInfer(timeout=timeout, metadata=metadata or None)
        writer = asyncio.ensure_future(_send_requests(call, requests))
        try:
            while True:
                try:
                    message = await call.read()
                except asyncio.CancelledError:
                    _raise_why_cancelled(writer, closed=self._closed)
                    raise
                except grpc.RpcError as error:
                    raise error_from_rpc(error) from error
                if message is grpc.aio.EOF:
                    return
                yield _codec.parse_stream_response(message)
        finally:
            call.cancel()  # a no-op when the call has ended
            writer.cancel()

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

    def _check_open(self) -> None:
        if self._closed:
            # The message the sync client's closed channel gives for the same mistake.
            raise ValueError("Cannot invoke RPC on closed channel!")

    def _stub_now(self) -> GRPCInferenceServiceStub:
        self._check_open()
        if self._stub is None:
            # Created here, not in __init__, so that it binds to the running loop.
            self._channel = grpc.aio.insecure_channel(self._target, options=self._options)
            self._stub = GRPCInferenceServiceStub(self._channel)
        return self._stub

    async def _send(self, rpc: _codec.Rpc[ResultT], timeout: float | None) -> ResultT:
        method = getattr(self._stub_now(), rpc.method)
        with translated_rpc_errors():
            response = await method(
                rpc.request, timeout=self._timeout_for(timeout), metadata=trace_metadata()
            )
        return rpc.parse(response)


def _raise_why_cancelled(writer: asyncio.Task[Exception | None], *, closed: bool) -> None:
    """Reading raised CancelledError: either the task iterating is being cancelled (let
    it propagate), or the call was cancelled under it, by the writer, whose error is the
    one to raise, or by ``close()``."""
    task = asyncio.current_task()
    # Task.cancelling() is Python 3.11+; without it a writer failure that coincides
    # with the task's own cancellation wins.
    if task is not None and getattr(task, "cancelling", lambda: 0)():
        return
    failure = writer.result() if writer.done() and not writer.cancelled() else None
    if failure is not None:
        raise failure from None
    if closed:
        raise RequestCancelledError("the client was closed during ModelStreamInfer") from None


async def _send_requests(
    call: Any, requests: AsyncIterable[StreamRequest] | Iterable[StreamRequest]
) -> Exception | None:
    """Write each request as it comes, then half-close. Returns the exception that
    stopped it (having cancelled the call), or None. When the call has ended, writing
    stops quietly: the reader reports how it ended."""
    try:
        async for request in _each(requests):
            message = _codec.stream_request_message(request)
            try:
                await call.write(message)
            except (grpc.RpcError, asyncio.InvalidStateError):
                return None
        await call.done_writing()
    except Exception as error:
        call.cancel()
        return error
    return None


async def _each(
    requests: AsyncIterable[StreamRequest] | Iterable[StreamRequest],
) -> AsyncIterator[StreamRequest]:
    if isinstance(requests, AsyncIterable):
        async for request in requests:
            yield request
    else:
        for request in requests:
            yield request
