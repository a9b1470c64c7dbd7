"""One inference's path through the server, the same for every front door.

A front door knows its wire format; everything else about running a request lives
here once: the model lookup first (Triton reports an unknown model or version before
anything about the tensors), client shared memory (regions fetched, leased for the
request, released after), whether decoding and encoding run off the event loop (file
I/O on system regions), the trace span, the engine call, and a decoupled model's stream
of responses. The front door passes its request with what it already knows of it
(``InferCall``) and a ``Codec``: its own decode and encode.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Iterable
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from inferd.engines import (
    EngineClient,
    EngineError,
    ErrorCode,
    ErrorResponse,
    InferRequest,
    InferResponse,
)
from inferd.engines.client_memory.system import RequestRegions, SystemSharedMemoryRegistry

if TYPE_CHECKING:  # opentelemetry is an optional extra: imported only when tracing is on
    from inferd.server.tracing import Tracing

W = TypeVar("W")  # a front door's request, as it came off the wire
R = TypeVar("R", covariant=True)  # its encoded response
T = TypeVar("T")

Headers = Iterable[tuple[str, str | bytes]]  # gRPC metadata, HTTP headers


@dataclass(frozen=True, slots=True)
class Codec(Generic[W, R]):
    """A front door's wire format. ``decode`` reads inputs in system shared memory out
    of ``regions`` and binds outputs asked for in one; ``encode`` writes those. Both get
    None for a request that names no region."""

    decode: Callable[[W, float | None, RequestRegions | None], InferRequest]
    encode: Callable[[InferResponse, RequestRegions | None], R]


@dataclass(slots=True)  # not frozen: built per request, and frozen init costs a microsecond
class InferCall(Generic[W]):
    """One request as its front door received it, with what the path needs before
    decoding it."""

    request: W
    model: str
    version: str  # as the client wrote it: "" for the newest
    request_id: str
    regions: set[str]  # shared-memory regions it names (checked when decoded)
    deadline: float | None  # time.monotonic() after which nobody waits for the answer
    headers: Callable[[], Headers | None]  # for trace context; read only when tracing


def parse_version(version: str) -> int | None:
    """The protocol's version string: empty means the newest version."""
    if not version:
        return None
    try:
        number = int(version)
    except ValueError:
        raise EngineError(
            ErrorCode.INVALID_ARGUMENT,
            f"failed to get model version from specified version string '{version}' "
            "(details: stol), version should be an integral value > 0",
        ) from None
    if number < 0:
        raise EngineError(
            ErrorCode.INVALID_ARGUMENT,
            f"invalid model version specified '{version}' , version should be an integral "
            "value > 0",
        )
    return number


class RequestPath:
    def __init__(
        self,
        engine: EngineClient,
        shared_memory: SystemSharedMemoryRegistry,
        tracing: Tracing | None,
    ) -> None:
        self._engine = engine
        self._shm = shared_memory
        self._tracing = tracing  # None: tracing off, and no tracing work at all
        # Requests between their lookup and their last response, from every front
        # door: a drain waits for this to reach zero.
        self.in_progress = 0

    async def infer(self, call: InferCall[W], codec: Codec[W, R]) -> R:
        """Run one request to its one response, encoded."""
        self.in_progress += 1
        try:
            self._engine.model_info(call.model, parse_version(call.version))
            if call.regions or self._tracing is not None:
                return await self._infer_with_extras(call, codec)
            # The common case, in as few steps as it takes: no shared memory, no trace.
            request = codec.decode(call.request, call.deadline, None)
            return codec.encode(await self._engine.infer(request), None)
        finally:
            self.in_progress -= 1

    async def _infer_with_extras(self, call: InferCall[W], codec: Codec[W, R]) -> R:
        """``infer`` for a request that names shared-memory regions, or with tracing on."""
        off_loop = bool(call.regions) and await self._off_loop(call.regions)
        if self._tracing is None:
            with self._shm.request() as regions:
                request = await _run(off_loop, codec.decode, call.request, call.deadline, regions)
                response = await self._engine.infer(request)
                return await _run(off_loop, codec.encode, response, regions)
        trace = self._tracing.start_request(
            call.headers(), call.model, call.version, call.request_id
        )
        encode_start_ns: int | None = None
        error: BaseException | None = None
        try:
            with self._shm.request() as regions:
                request = await _run(off_loop, codec.decode, call.request, call.deadline, regions)
                request.trace = trace
                response = await self._engine.infer(request)
                encode_start_ns = time.perf_counter_ns()
                return await _run(off_loop, codec.encode, response, regions)
        except BaseException as exc:
            error = exc
            raise
        finally:
            if trace is not None:
                trace.end(error, encode_start_ns)

    async def stream(
        self, call: InferCall[W], codec: Codec[W, R]
    ) -> AsyncGenerator[R | ErrorResponse]:
        """Run one request and yield its responses in order, encoded, and the errors a
        decoupled model reports (``ErrorResponse``) for the front door to word; errors
        before the model ran are raised. A bare final flag is yielded only when the
        request asked for it (``empty_final_response``). Closing the generator early
        aborts the request."""
        self.in_progress += 1
        try:
            # Closed with this generator, so that closing early aborts the request now.
            async with aclosing(self._stream(call, codec)) as items:
                async for item in items:
                    yield item
        finally:
            self.in_progress -= 1

    async def _stream(
        self, call: InferCall[W], codec: Codec[W, R]
    ) -> AsyncGenerator[R | ErrorResponse]:
        self._engine.model_info(call.model, parse_version(call.version))
        # Each response of a decoupled model writes its outputs into the same regions.
        with self._shm.request() as regions:
            off_loop = bool(call.regions) and await self._off_loop(call.regions)
            request = await _run(off_loop, codec.decode, call.request, call.deadline, regions)
            empty_final = request.options.empty_final_response
            trace = None
            if self._tracing is not None:
                trace = self._tracing.start_request(
                    call.headers(), call.model, call.version, call.request_id
                )
                request.trace = trace
            error: BaseException | None = None
            try:
                async for item in self._engine.infer_stream(request):
                    if isinstance(item, ErrorResponse):
                        yield item
                    elif item.outputs or not item.final or empty_final:
                        yield await _run(off_loop, codec.encode, item, regions)
            except GeneratorExit:  # the front door stopped reading: not this request's error
                raise
            except BaseException as exc:
                error = exc
                raise
            finally:
                if trace is not None:
                    trace.end(error, time.perf_counter_ns())

    async def _off_loop(self, names: set[str]) -> bool:
        """Fetch the regions a request names that this process does not know yet, and
        say whether its decode and encode leave the event loop: system regions are read
        and written with file I/O, CUDA ones in the engine."""
        await self._shm.prepare(names)
        return not names.isdisjoint(self._shm.names())


async def _run(off_loop: bool, function: Callable[..., T], *args: object) -> T:
    """``function(*args)`` on a worker thread when ``off_loop``, else right here."""
    if off_loop:
        return await asyncio.to_thread(function, *args)
    return function(*args)
