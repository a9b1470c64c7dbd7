"""Serving inferd's asyncio servicers from grpc's synchronous server.

The threads front (``--grpc-front threads``) answers ModelInfer on grpc's handler
threads; every other RPC is the same asyncio code as on the asyncio front, run on the
server's event loop. ``bridged`` makes a synchronous servicer out of an asyncio one:
each method submits its coroutine to the loop and waits for it on the handler thread.
A streamed request side is pumped to the loop by a thread of its own (a handler thread
cannot both wait for the client's next message and pass on responses), a streamed
response side is handed back through a bounded queue. ``context.abort`` on the loop
becomes the real abort on the handler thread, and the client going away cancels the
coroutine.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import queue
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor

_END = object()  # a stream's end, on either side
_RESPONSES_WAITING = 64  # responses a slow reader leaves queued before the stream waits
_REQUESTS_WAITING = 64  # requests read ahead of the loop before the reader waits
_CHECK_S = 1.0  # how often a waiting reader looks whether its call has ended


class Aborted(grpc.aio.AbortError):
    """``context.abort`` called on the loop: carried to the handler thread."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class LoopContext:
    """The part of ``grpc.aio.ServicerContext`` inferd's servicers use, over a
    synchronous call's context."""

    def __init__(self, context: grpc.ServicerContext) -> None:
        self._context = context

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise Aborted(code, details)

    def time_remaining(self) -> float | None:
        return self._context.time_remaining()

    def invocation_metadata(self) -> Any:
        return self._context.invocation_metadata()

    def peer(self) -> str:
        return self._context.peer()


class LoopBridge:
    """Runs coroutines for handler threads on ``loop``."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def call(self, coroutine: Awaitable[Any], context: grpc.ServicerContext) -> Any:
        """The coroutine's result, on this (handler) thread; raises what it raised
        (``Aborted`` for its abort), CancelledError when the client went away."""
        future = asyncio.run_coroutine_threadsafe(_as_coroutine(coroutine), self.loop)
        context.add_callback(lambda: _cancel(future))  # the client went away: stop the work
        return future.result()

    def stream(self, responses: AsyncIterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        """The async iterator's items, on this thread, as they come."""
        handoff: queue.Queue[Any] = queue.Queue(_RESPONSES_WAITING)

        async def put(item: Any) -> None:
            try:
                handoff.put_nowait(item)
            except queue.Full:  # the reader is slow: wait off the loop
                await asyncio.to_thread(handoff.put, item)

        async def pump() -> None:
            try:
                async for item in responses:
                    await put(item)
            except asyncio.CancelledError as cancelled:
                # Wakes a handler thread waiting for the next item; one that is not
                # waiting (the queue is full) finds the call over when it next yields.
                with contextlib.suppress(queue.Full):
                    handoff.put_nowait(cancelled)
                raise
            except BaseException as error:  # handed over and raised on the handler thread
                await put(error)
            else:
                await put(_END)

        future = asyncio.run_coroutine_threadsafe(pump(), self.loop)
        context.add_callback(lambda: _cancel(future))
        try:
            while (item := handoff.get()) is not _END:
                if isinstance(item, Aborted):
                    context.abort(item.code, item.details)
                if isinstance(item, asyncio.CancelledError):
                    context.abort(grpc.StatusCode.CANCELLED, "the call was cancelled")
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            future.cancel()  # the client stopped reading: the loop's side stops too

    def requests(
        self, requests: Iterator[Any], context: grpc.ServicerContext
    ) -> AsyncIterator[Any]:
        """A synchronous request iterator as an async one on the loop, read by a
        thread of its own, at most ``_REQUESTS_WAITING`` ahead of the loop (then the
        reader waits, and HTTP/2 flow control holds the client back)."""
        arrived: asyncio.Queue[Any] = asyncio.Queue()
        room = threading.Semaphore(_REQUESTS_WAITING)

        def read() -> None:
            try:
                for request in requests:
                    while not room.acquire(timeout=_CHECK_S):
                        if not context.is_active():  # the call ended while we waited
                            return
                    self.loop.call_soon_threadsafe(arrived.put_nowait, request)
            except Exception:  # the call ended (cancelled): the stream just ends
                pass
            finally:
                self.loop.call_soon_threadsafe(arrived.put_nowait, _END)

        threading.Thread(target=read, name="inferd-grpc-stream-reader", daemon=True).start()

        async def iterate() -> AsyncIterator[Any]:
            while (request := await arrived.get()) is not _END:
                room.release()
                yield request

        return iterate()


def _cancel(future: concurrent.futures.Future[Any]) -> None:
    future.cancel()


async def _as_coroutine(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def bridged(servicer: object, service: ServiceDescriptor, bridge: LoopBridge) -> Any:
    """A synchronous servicer for ``service`` whose methods run ``servicer``'s
    asyncio ones on the bridge's loop (for the generated ``add_*_to_server``)."""
    proxy = type(f"Bridged{type(servicer).__name__}", (), {})()
    for method in service.methods:
        coroutine = getattr(servicer, method.name)
        setattr(proxy, method.name, _bridge_method(coroutine, method, bridge))
    return proxy


def _bridge_method(
    method: Callable[..., Any], descriptor: Any, bridge: LoopBridge
) -> Callable[..., Any]:
    streams_in, streams_out = descriptor.client_streaming, descriptor.server_streaming

    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        arguments = bridge.requests(request, context) if streams_in else request
        if streams_out:
            return bridge.stream(method(arguments, LoopContext(context)), context)
        try:
            return bridge.call(method(arguments, LoopContext(context)), context)
        except Aborted as aborted:
            context.abort(aborted.code, aborted.details)
        except concurrent.futures.CancelledError:
            context.abort(grpc.StatusCode.CANCELLED, "the call was cancelled")

    return handle
