"""Load over ``ModelStreamInfer``: many requests share one stream, each matched to its
responses by request id.

As perf_analyzer's ``--streaming`` does, a ``LoadSession`` sends all the requests of a
channel on one stream (``RequestStream``), opened at the first request and again after
a stream ends. A request completes at its final response or at an error response (an
error ends the request it names). Requests to a decoupled model ask for Triton's empty
final response, so that their end is visible even when a model's last response with
outputs does not carry the final flag.

What is kept per request in flight is its future and the arrival times of its
responses; requests are bounded by the session (its concurrency, or ``max_outstanding``).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from inferd.clients import (
    AsyncClient,
    DeadlineExceededError,
    RequestCancelledError,
    StreamRequest,
    StreamResponse,
    UnavailableError,
)


@dataclass(frozen=True, slots=True)
class StreamedRequest:
    """When one request's responses arrived, in ``time.perf_counter()`` seconds."""

    response_times: tuple[float, ...]  # responses that carried outputs, in order
    finished: float  # its final response


@dataclass(slots=True)
class _Pending:
    future: asyncio.Future[StreamedRequest]
    response_times: list[float] = field(default_factory=list)


class RequestStream:
    """Requests for one model on one ``ModelStreamInfer`` call of ``client``."""

    def __init__(
        self,
        client: AsyncClient,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        version: str = "",
        decoupled: bool = False,
    ) -> None:
        self._client = client
        self._model = model
        self._inputs = inputs
        self._version = version
        self._decoupled = decoupled
        self._ids = itertools.count()
        self._pending: dict[str, _Pending] = {}
        self._outgoing: asyncio.Queue[StreamRequest] | None = None
        self._reader: asyncio.Task[None] | None = None

    async def infer(self, timeout: float | None = None) -> StreamedRequest:
        """Send one request and wait for its final response.

        Raises the request's error response as an ``InferdError``, the error that ended
        the stream under it, or ``DeadlineExceededError`` when no final response came
        within ``timeout`` seconds (the server may still run the request: a stream has
        no way to cancel one request).
        """
        if self._outgoing is None or self._reader is None or self._reader.done():
            self._outgoing = asyncio.Queue()
            self._reader = asyncio.ensure_future(self._read(self._outgoing))
        request_id = str(next(self._ids))
        pending = _Pending(asyncio.get_running_loop().create_future())
        self._pending[request_id] = pending
        self._outgoing.put_nowait(
            StreamRequest(
                self._model,
                self._inputs,
                request_id=request_id,
                version=self._version,
                enable_empty_final_response=self._decoupled,
            )
        )
        try:
            if timeout is None:
                return await pending.future
            try:
                return await asyncio.wait_for(pending.future, timeout)
            except asyncio.TimeoutError:
                raise DeadlineExceededError(
                    f"no final response within {timeout:g} s on the stream"
                ) from None
        finally:
            self._pending.pop(request_id, None)

    async def close(self) -> None:
        """Cancel the stream; requests still waiting fail with ``RequestCancelledError``."""
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            await asyncio.wait({reader})

    async def _read(self, outgoing: asyncio.Queue[StreamRequest]) -> None:
        failure: Exception = RequestCancelledError("the stream was closed")
        try:
            async for response in self._client.stream_infer(_queued(outgoing)):
                self._deliver(response, time.perf_counter())
            failure = UnavailableError("the server ended the stream")
        except Exception as error:  # the stream's end is every waiting request's result
            failure = error
        finally:
            for pending in self._pending.values():
                if not pending.future.done():
                    pending.future.set_exception(failure)

    def _deliver(self, response: StreamResponse, now: float) -> None:
        pending = self._pending.get(response.request_id)
        if pending is None or pending.future.done():
            return  # its request has ended (an error, then the final flag) or was given up
        if response.error is not None:
            pending.future.set_exception(response.error)
            return
        if response.outputs:
            pending.response_times.append(now)
        if response.final:
            pending.future.set_result(StreamedRequest(tuple(pending.response_times), now))


async def _queued(outgoing: asyncio.Queue[StreamRequest]) -> AsyncIterator[StreamRequest]:
    # Never exhausted: the stream stays open until it fails or close() cancels it.
    while True:
        yield await outgoing.get()
