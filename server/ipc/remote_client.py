"""The EngineClient of a front process: the engine runs in the engine process.

Requests go out as typed messages (``messages.py``) over one Unix socket; tensors above
the inline limit are written once into this front's request ring. Model lookups, asked
on every request, are answered from the catalog the engine sends at connection and
after every model change. If the engine process goes away, everything in flight fails
UNAVAILABLE at once, readiness turns false, and the client reconnects on its own (the
supervisor restarts the engine); the new engine gives new rings.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeAlias

import numpy as np

from inferd.engines import (
    EngineError,
    ErrorCode,
    ErrorResponse,
    InferRequest,
    InferResponse,
    InputTensor,
    ModelCatalog,
    ModelIndexEntry,
    ModelInfo,
    OutputTensor,
)
from inferd.engines.client_memory.cuda import CudaRegionStatus
from inferd.engines.client_memory.system import RegionStatus
from inferd.engines.statistics import StatisticsSnapshot
from inferd.engines.types import DeviceBytes, RequestedOutput, SharedMemoryRef, shape_only
from inferd.protos import model_config_pb2
from inferd.server.ipc import messages as m
from inferd.server.ipc import tensors
from inferd.server.ipc.channel import Channel
from inferd.server.ipc.ring import RingAllocator, Segment

logger = logging.getLogger("inferd.front")

_ENGINE_GONE = "the engine process is not available (it is starting or restarting): retry"
_RECONNECT_MAX_DELAY_S = 1.0
_RING_WAIT_MARGIN_S = 0.05

StreamItem: TypeAlias = InferResponse | ErrorResponse | EngineError


class _Connection:
    """One connection to one engine incarnation, with the rings it gave."""

    def __init__(self, channel: Channel[m.EngineMessage]) -> None:
        self.channel = channel
        self.welcomed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.request_ring: Segment | None = None
        self.response_ring: Segment | None = None
        self.requests: RingAllocator | None = None

    def close(self) -> None:
        for ring in (self.request_ring, self.response_ring):
            if ring is not None:
                ring.close()


class RemoteEngineClient:
    def __init__(
        self,
        socket_path: Path,
        front_id: int,
        epoch: int,
        on_readiness: Callable[[bool], None] | None = None,
    ) -> None:
        self._socket_path = socket_path
        self._front_id = front_id
        self._epoch = epoch
        self.on_readiness = on_readiness
        # Client shared-memory registrations from the engine (a front's mirror of them).
        # The engine's client shared-memory regions changed: (system regions, CUDA names).
        self.on_regions: Callable[[list[RegionStatus], list[str]], None] | None = None
        self._catalog = ModelCatalog()
        self._connection: _Connection | None = None  # welcomed and not lost
        self._keys = itertools.count(1)
        self._calls = itertools.count(1)
        self._waiters: dict[int, asyncio.Future[InferResponse] | asyncio.Queue[StreamItem]] = {}
        self._extents: dict[int, list[int]] = {}  # key -> its request-ring offsets
        self._replies: dict[int, asyncio.Future[m.Reply]] = {}
        self._ring_freed = asyncio.Event()
        self._releases: list[int] = []  # response-ring offsets to hand back
        self._releases_lock = threading.Lock()  # the last view of an output can die anywhere
        self._closing = False
        self._reconnect: asyncio.Task[None] | None = None
        self._pending_connection: _Connection | None = None  # connected, not yet welcomed
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- connection ----------------------------------------------------------------------

    async def start(self) -> None:
        """Returns once the engine process has answered (it answers once its models are
        loaded); retries while it is not there yet."""
        self._loop = asyncio.get_running_loop()
        await self._connect()

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        delay = 0.02
        while not self._closing:
            try:
                _, channel = await loop.create_unix_connection(
                    self._new_channel, str(self._socket_path)
                )
            except OSError:
                await asyncio.sleep(delay)
                delay = min(2 * delay, _RECONNECT_MAX_DELAY_S)
                continue
            connection = _Connection(channel)
            self._pending_connection = connection
            channel.send(m.Hello(self._front_id, self._epoch, os.getpid()))
            try:
                await connection.welcomed
            except EngineError:  # lost before the welcome: try again, not at once
                await asyncio.sleep(delay)
                delay = min(2 * delay, _RECONNECT_MAX_DELAY_S)
                continue
            return

    def _new_channel(self) -> Channel[m.EngineMessage]:
        channel: Channel[m.EngineMessage] = Channel(
            m.EngineMessage, self._on_message, lambda exc: self._on_closed(channel)
        )
        return channel

    def _on_closed(self, channel: Channel[m.EngineMessage]) -> None:
        pending = self._pending_connection
        if pending is not None and pending.channel is channel and not pending.welcomed.done():
            pending.close()
            pending.welcomed.set_exception(EngineError(ErrorCode.UNAVAILABLE, _ENGINE_GONE))
            return
        connection = self._connection
        if connection is None or connection.channel is not channel:
            return  # an earlier connection, already given up
        self._connection = None
        lost = EngineError(
            ErrorCode.UNAVAILABLE, "the engine process exited with this request in flight"
        )
        waiters, self._waiters = self._waiters, {}
        for waiter in waiters.values():
            if isinstance(waiter, asyncio.Queue):
                waiter.put_nowait(lost)
            elif not waiter.done():
                waiter.set_exception(lost)
        replies, self._replies = self._replies, {}
        for reply in replies.values():
            if not reply.done():
                reply.set_exception(lost)
        self._extents.clear()
        with self._releases_lock:
            self._releases.clear()
        self._ring_freed.set()  # ring waiters see the connection gone
        connection.close()
        self._catalog = ModelCatalog()
        if self.on_readiness is not None:
            self.on_readiness(False)
        if not self._closing:
            logger.error("lost the engine process: reconnecting")
            self._reconnect = asyncio.get_running_loop().create_task(self._reconnected())

    async def _reconnected(self) -> None:
        await self._connect()
        if self._connection is not None:
            logger.info("engine process reconnected")

    def _welcome(self, welcome: m.Welcome) -> None:
        connection = self._pending_connection
        assert connection is not None
        try:
            connection.request_ring = Segment.open(welcome.request_ring, welcome.ring_bytes)
            connection.response_ring = Segment.open(welcome.response_ring, welcome.ring_bytes)
        except (OSError, ValueError) as exc:
            logger.error("cannot map the engine's shared-memory rings: %s", exc)
            connection.channel.close()  # _on_closed fails the welcome: _connect retries
            return
        connection.requests = RingAllocator(connection.request_ring.size)
        self._catalog = ModelCatalog(m.from_wire_catalog(welcome.catalog))
        if self.on_regions is not None:  # a restarted engine has none: clients re-register
            self.on_regions(welcome.regions, welcome.cuda_names)
        self._connection = connection
        connection.welcomed.set_result(None)
        if self.on_readiness is not None:
            self.on_readiness(True)

    # --- messages from the engine --------------------------------------------------------

    def _on_message(self, message: m.EngineMessage) -> None:
        if isinstance(message, m.Result):
            self._result(message)
        elif isinstance(message, m.Failure):
            self._failure(message)
        elif isinstance(message, m.Reply):
            reply = self._replies.pop(message.call, None)
            if reply is not None and not reply.done():
                reply.set_result(message)
        elif isinstance(message, m.Catalog):
            self._catalog = ModelCatalog(m.from_wire_catalog(message.entries))
            self._applied(message.seq)
        elif isinstance(message, m.Regions):
            if self.on_regions is not None:
                self.on_regions(message.regions, message.cuda_names)
            self._applied(message.seq)
        elif isinstance(message, m.Welcome):
            self._welcome(message)

    def _applied(self, seq: int) -> None:
        connection = self._connection or self._pending_connection
        if connection is not None:
            connection.channel.send(m.Applied(seq))

    def _result(self, message: m.Result) -> None:
        response = InferResponse(
            message.model,
            message.version,
            message.request_id,
            [
                OutputTensor(t.name, t.datatype, self._output(t), t.in_shared_memory)
                for t in message.outputs
            ],
            message.final,
        )
        waiter = self._waiters.get(message.key)
        if message.final:
            self._end(message.key)
        if isinstance(waiter, asyncio.Queue):
            waiter.put_nowait(response)
        elif waiter is not None and not waiter.done():
            waiter.set_result(response)

    def _failure(self, message: m.Failure) -> None:
        error = EngineError(message.code, message.message)
        waiter = self._waiters.get(message.key)
        if message.final or message.raised:
            self._end(message.key)
        if isinstance(waiter, asyncio.Queue):
            waiter.put_nowait(error if message.raised else ErrorResponse(error, message.final))
        elif waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def _end(self, key: int) -> None:
        """The engine is done with the request: its ring space can be reused."""
        self._waiters.pop(key, None)
        offsets = self._extents.pop(key, None)
        if offsets and self._connection is not None:
            assert self._connection.requests is not None
            for offset in offsets:
                self._connection.requests.free(offset)
            self._ring_freed.set()

    def _output(self, tensor: m.Tensor) -> np.ndarray:
        if tensor.in_shared_memory:  # the values are in the client's region
            return shape_only(tensor.datatype, tensor.shape)
        connection = self._connection
        ring = connection.response_ring if connection is not None else None
        buffer = tensors.view(tensor, ring, "output", "response ring")
        flat = tensors.flat_array(tensor.datatype, buffer, math.prod(tensor.shape))
        if tensor.data is None:
            if tensor.datatype == "BYTES":  # decoding copied the elements out
                self._release(connection, tensor.offset)
            else:  # the extent is free again once every view of it is gone (after encoding)
                weakref.finalize(flat, self._release, connection, tensor.offset)
        return flat.reshape(tensor.shape)

    def _release(self, connection: _Connection | None, offset: int) -> None:
        """May run on any thread (the last view can die anywhere)."""
        if connection is None or connection is not self._connection:
            return  # that engine is gone, and its ring with it
        with self._releases_lock:
            self._releases.append(offset)
            first = len(self._releases) == 1
        if first:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._send_releases)

    def _send_releases(self) -> None:
        with self._releases_lock:
            offsets, self._releases = self._releases, []
        if offsets and self._connection is not None:
            self._connection.channel.send(m.Release(offsets))

    # --- EngineClient --------------------------------------------------------------------

    def is_ready(self) -> bool:
        return self._connection is not None

    def model_info(self, name: str, version: int | None) -> ModelInfo:
        if self._connection is None:
            raise EngineError(ErrorCode.UNAVAILABLE, _ENGINE_GONE)
        return self._catalog.model_info(name, version)

    async def repository_index(self, ready_only: bool) -> list[ModelIndexEntry]:
        reply = await self.call(lambda call: m.IndexCall(call, ready_only))
        return reply.index or []

    async def statistics(self, name: str, version: int | None) -> list[StatisticsSnapshot]:
        reply = await self.call(
            lambda call: m.StatisticsCall(call, name, -1 if version is None else version)
        )
        return reply.statistics or []

    async def load_model(
        self,
        name: str,
        directory: Path,
        config: model_config_pb2.ModelConfig | None = None,
        cleanup: Path | None = None,
    ) -> None:
        override = config.SerializeToString() if config is not None else None
        private = str(cleanup) if cleanup is not None else None
        await self.call(lambda call: m.LoadCall(call, name, str(directory), override, private))

    async def unload_model(self, name: str) -> None:
        await self.call(lambda call: m.UnloadCall(call, name))

    async def register_cuda_region(
        self, name: str, raw_handle: bytes, device_id: int, byte_size: int
    ) -> None:
        await self.call(
            lambda call: m.RegisterCudaRegionCall(call, name, raw_handle, device_id, byte_size)
        )

    async def cuda_region_status(self, name: str) -> list[CudaRegionStatus]:
        reply = await self.call(lambda call: m.CudaRegionStatusCall(call, name))
        return reply.cuda_regions or []

    async def unregister_cuda_region(self, name: str) -> None:
        await self.call(lambda call: m.UnregisterCudaRegionCall(call, name))

    async def call(self, make: Callable[[int], m.FrontMessage]) -> m.Reply:
        """A control call to the engine process: ``make`` builds it from its call id."""
        connection = self._connection
        if connection is None:
            raise EngineError(ErrorCode.UNAVAILABLE, _ENGINE_GONE)
        call = next(self._calls)
        reply = asyncio.get_running_loop().create_future()
        self._replies[call] = reply
        connection.channel.send(make(call))
        result: m.Reply = await reply
        if result.code is not None:
            raise EngineError(result.code, result.message)
        return result

    async def infer(self, request: InferRequest) -> InferResponse:
        future: asyncio.Future[InferResponse] = asyncio.get_running_loop().create_future()
        key, connection = await self._send(request, future, stream=False)
        try:
            return await future
        except asyncio.CancelledError:
            if key in self._waiters:
                connection.channel.send(m.Abort(key))
            raise

    async def infer_stream(
        self, request: InferRequest
    ) -> AsyncIterator[InferResponse | ErrorResponse]:
        queue: asyncio.Queue[StreamItem] = asyncio.Queue()
        key, connection = await self._send(request, queue, stream=True)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, EngineError):
                    raise item
                if not item.final:
                    connection.channel.send(m.Credit(key, 1))
                yield item
                if item.final:
                    return
        finally:
            if key in self._waiters:  # closed early: the engine drops the request
                connection.channel.send(m.Abort(key))

    async def _send(
        self,
        request: InferRequest,
        waiter: asyncio.Future[InferResponse] | asyncio.Queue[StreamItem],
        stream: bool,
    ) -> tuple[int, _Connection]:
        connection = self._connection
        if connection is None:
            raise EngineError(ErrorCode.UNAVAILABLE, _ENGINE_GONE)
        key = next(self._keys)
        offsets: list[int] = []
        try:
            inputs = [
                await self._tensor(connection, tensor, request, offsets)
                for tensor in request.inputs
            ]
        except BaseException:
            if connection is self._connection:
                assert connection.requests is not None
                for offset in offsets:
                    connection.requests.free(offset)
                self._ring_freed.set()
            raise
        trace = None
        if request.trace is not None:
            trace = m.TraceRef(*request.trace.reference())  # type: ignore[attr-defined]
        if offsets:
            self._extents[key] = offsets
        self._waiters[key] = waiter
        connection.channel.send(
            m.Infer(
                key,
                request.model_name,
                -1 if request.model_version is None else request.model_version,
                request.request_id,
                inputs,
                [_wanted(output) for output in request.requested_outputs],
                m.to_wire_options(request.options),
                request.deadline,
                trace,
                stream,
            )
        )
        return key, connection

    async def _tensor(
        self,
        connection: _Connection,
        tensor: InputTensor,
        request: InferRequest,
        offsets: list[int],
    ) -> m.Tensor:
        data = tensor.data
        if isinstance(data, SharedMemoryRef):  # CUDA shared memory: the engine reads it
            return m.Tensor(
                tensor.name,
                tensor.datatype,
                tensor.shape,
                None,
                data.offset,
                data.byte_size,
                region=data.region,
            )
        if isinstance(data, DeviceBytes):
            raise TypeError("device bytes exist only in the engine process")
        raw = tensors.payload(tensor.datatype, data)
        elements = len(data) if isinstance(data, np.ndarray) else tensors.RAW  # typed contents
        offset = None
        if tensors.in_ring(raw.nbytes):
            offset = await self._allocate(connection, raw.nbytes, request)
            if offset is not None:
                offsets.append(offset)
        return tensors.encode(
            tensor.name,
            tensor.datatype,
            tensor.shape,
            raw,
            connection.request_ring,
            offset,
            elements,
        )

    async def _allocate(
        self, connection: _Connection, nbytes: int, request: InferRequest
    ) -> int | None:
        """An extent of the request ring, waiting for one until the request's deadline;
        None for a tensor larger than the whole ring (it travels inline)."""
        ring = connection.requests
        assert ring is not None
        if nbytes > ring.capacity:
            return None
        while True:
            if connection is not self._connection:
                raise EngineError(ErrorCode.UNAVAILABLE, _ENGINE_GONE)
            offset = ring.allocate(nbytes)
            if offset is not None:
                return offset
            timeout = None
            if request.deadline is not None:
                # Give up a little before the deadline, so the client reads why rather
                # than its own DEADLINE_EXCEEDED.
                timeout = request.deadline - _RING_WAIT_MARGIN_S - time.monotonic()
            if timeout is not None and timeout <= 0:
                raise EngineError(
                    ErrorCode.UNAVAILABLE,
                    f"request for model '{request.model_name}' timed out waiting for room in "
                    f"the {ring.capacity}-byte shared-memory ring to the engine process "
                    f"({ring.capacity - ring.free_bytes} bytes held by requests in flight): "
                    "the server is overloaded",
                )
            self._ring_freed.clear()
            try:
                await asyncio.wait_for(self._ring_freed.wait(), timeout)
            except asyncio.TimeoutError:
                continue

    async def close(self) -> None:
        self._closing = True
        if self._reconnect is not None:
            self._reconnect.cancel()
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.channel.close()
            connection.close()


def _wanted(output: RequestedOutput) -> m.WantedOutput:
    region = output.region
    if region is None:
        return m.WantedOutput(output.name, output.class_count)
    return m.WantedOutput(
        output.name, output.class_count, region.region, region.offset, region.byte_size
    )
