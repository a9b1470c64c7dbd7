"""The engine process: models, schedulers, instances and their statistics, serving the
front processes over a Unix socket.

Its event loop only moves messages: each request becomes a task awaiting the engine,
whose batching and model work run on the instance threads as in one process. Inputs
larger than the inline limit are read in place from the front's request ring (zero
copy: the instance's gather is the one copy); large outputs are written once into the
front's response ring. The repository poll loop (poll mode) and the /metrics endpoint
live here, since the models and their statistics do.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING

from inferd.engines import (
    EngineError,
    ErrorCode,
    ErrorResponse,
    InferRequest,
    InferResponse,
    InputTensor,
    OutputTensor,
    RequestedOutput,
)
from inferd.engines.types import SharedMemoryRef
from inferd.protos import model_config_pb2
from inferd.server.config import ServerConfig
from inferd.server.engine_host import EngineHost
from inferd.server.ipc import messages as m
from inferd.server.ipc import tensors
from inferd.server.ipc.channel import Channel
from inferd.server.ipc.events import EngineReady, send_event
from inferd.server.ipc.process import prepare_child
from inferd.server.ipc.ring import RingAllocator, Segment, segment_name
from inferd.server.lifecycle import run_loop

if TYPE_CHECKING:
    pass

logger = logging.getLogger("inferd.engine_process")

# A decoupled model's responses in flight to a front before it must say it took some.
STREAM_WINDOW = 64
# How long a load, unload or region change waits for every front to apply it.
_APPLY_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class EngineRuntime:
    socket_path: Path
    owner_pid: int  # the supervisor's: names every shared-memory segment of this server
    generation: int  # this engine's incarnation (restarts count up)
    ring_bytes: int  # each ring's size, per front process and direction


def engine_main(config: ServerConfig, runtime: EngineRuntime, events: Connection) -> None:
    """The spawned engine process's entry point; tells the supervisor EngineReady on
    ``events`` once front processes can connect."""
    prepare_child("engine", config.log_level, runtime.owner_pid)
    run_loop(EngineProcess(config, runtime, events).serve(), config.use_uvloop)


class EngineProcess:
    def __init__(self, config: ServerConfig, runtime: EngineRuntime, events: Connection) -> None:
        self.config = config
        self.runtime = runtime
        self._events = events
        self.fronts: set[FrontConnection] = set()
        self._stop = asyncio.Event()
        # The engine side, as in one process. Its system shared-memory registry is the
        # one every front mirrors: the engine never reads a region, it checks each
        # registration once, as the fronts will. Every model change is published to
        # the fronts before its caller (a front's load, or the poll loop) hears back.
        self.host = EngineHost(config, on_models_changed=self.publish_catalog)
        self._published = 0  # Catalog and Regions messages sent, in order

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._stop.set)  # the supervisor escalates
        async with self.host:  # loads the models
            self.runtime.socket_path.unlink(missing_ok=True)  # a crashed predecessor's
            server = await loop.create_unix_server(
                lambda: FrontConnection(self).channel, path=str(self.runtime.socket_path)
            )
            logger.info("engine serving front processes on %s", self.runtime.socket_path)
            send_event(self._events, EngineReady())
            try:
                await self._stop.wait()
            finally:
                logger.info("engine stopping")
                server.close()
                for front in list(self.fronts):
                    front.channel.close()
        self.runtime.socket_path.unlink(missing_ok=True)
        logger.info("engine stopped")

    async def publish_regions(self) -> None:
        regions = self.host.shared_memory.status("")
        await self._publish(lambda seq: m.Regions(seq, regions, self.cuda_names()))

    def cuda_names(self) -> list[str]:
        return sorted(self.host.cuda_shared_memory.names())

    def catalog(self) -> list[m.WireCatalogEntry]:
        return m.to_wire_catalog(self.host.engine.engine.catalog())

    async def publish_catalog(self) -> None:
        catalog = self.catalog()
        await self._publish(lambda seq: m.Catalog(seq, catalog))

    async def _publish(self, make: Callable[[int], m.Catalog | m.Regions]) -> None:
        """Send every front the change, and return once each has applied it (or gone):
        a model unloaded, or a region unregistered, is then gone from every front."""
        self._published += 1
        message = make(self._published)
        fronts = [front for front in self.fronts if front.welcomed]
        for front in fronts:
            front.channel.send(message)
        waits = [front.applied(message.seq) for front in fronts]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), _APPLY_TIMEOUT_S)
        except asyncio.TimeoutError:
            logger.warning("a front process did not apply change %d in time", message.seq)


class FrontConnection:
    """One front process's connection: its requests in flight and its two rings."""

    def __init__(self, process: EngineProcess) -> None:
        self._process = process
        self._client = process.host.engine
        self.channel: Channel[m.FrontMessage] = Channel(
            m.FrontMessage, self._on_message, self._on_closed
        )
        self.welcomed = False
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._calls: set[asyncio.Task[None]] = set()
        self._windows: dict[int, asyncio.Semaphore] = {}
        self._request_ring: Segment | None = None
        self._response_ring: Segment | None = None
        self._responses: RingAllocator | None = None
        self._name = "front"
        self._applied = 0  # the last Catalog/Regions seq this front applied
        self._applied_changed = asyncio.Event()
        process.fronts.add(self)

    async def applied(self, seq: int) -> None:
        """Returns once this front has applied change ``seq``, or has gone."""
        while self._applied < seq and not self.channel.closed:
            self._applied_changed.clear()
            await self._applied_changed.wait()

    # --- messages ------------------------------------------------------------------------

    def _on_message(self, message: m.FrontMessage) -> None:
        if isinstance(message, m.Infer):
            self._start(message)
        elif isinstance(message, m.Release):
            self._release(message.offsets)
        elif isinstance(message, m.Abort):
            task = self._tasks.get(message.key)
            if task is not None:
                task.cancel()
        elif isinstance(message, m.Applied):
            self._applied = max(self._applied, message.seq)
            self._applied_changed.set()
        elif isinstance(message, m.Credit):
            window = self._windows.get(message.key)
            if window is not None:
                for _ in range(message.count):
                    window.release()
        elif isinstance(message, m.Hello):
            self._welcome(message)
        else:
            call = asyncio.get_running_loop().create_task(self._call(message))
            self._calls.add(call)  # the loop keeps only a weak reference to a task
            call.add_done_callback(self._calls.discard)

    def _welcome(self, hello: m.Hello) -> None:
        if self._request_ring is not None:
            logger.error("%s said hello twice: dropping it", self._name)
            self.channel.close()
            return
        runtime = self._process.runtime
        self._name = f"front {hello.front_id} (epoch {hello.epoch}, pid {hello.pid})"
        label = f"e{runtime.generation}-f{hello.front_id}-{hello.epoch}"
        try:
            self._request_ring = Segment.create(
                segment_name(runtime.owner_pid, f"{label}-req"), runtime.ring_bytes
            )
            self._response_ring = Segment.create(
                segment_name(runtime.owner_pid, f"{label}-rsp"), runtime.ring_bytes
            )
        except (OSError, ValueError):
            logger.exception("cannot create the shared-memory rings for %s", self._name)
            self.channel.close()
            return
        self._responses = RingAllocator(self._response_ring.size)
        self.channel.send(
            m.Welcome(
                self._request_ring.name,
                self._response_ring.name,
                self._request_ring.size,
                self._process.catalog(),
                self._process.host.shared_memory.status(""),
                self._process.cuda_names(),
            )
        )
        self.welcomed = True
        logger.info("%s connected", self._name)

    def _on_closed(self, exc: Exception | None) -> None:
        self._process.fronts.discard(self)
        self._applied_changed.set()  # nobody waits for a front that is gone
        for task in self._tasks.values():
            task.cancel()
        for ring in (self._request_ring, self._response_ring):
            if ring is not None:
                # The name goes now; the memory once the last in-flight view of it dies.
                ring.unlink()
                ring.close()
        if self.welcomed:
            logger.info("%s disconnected: %d request(s) dropped", self._name, len(self._tasks))

    def _release(self, offsets: list[int]) -> None:
        if self._responses is None:  # before its Hello: nothing was lent
            return
        for offset in offsets:
            try:
                self._responses.free(offset)
            except KeyError:  # a confused front must not take the engine down
                logger.error("%s released an unknown response extent %d", self._name, offset)

    # --- requests ------------------------------------------------------------------------

    def _start(self, message: m.Infer) -> None:
        try:
            request = self._request(message)
        except EngineError as exc:
            self.channel.send(m.Failure(message.key, exc.code, exc.message, True, True))
            return
        except ValueError as exc:  # inputs the front encoded wrongly: a bug, not the client's
            self.channel.send(m.Failure(message.key, ErrorCode.INTERNAL, str(exc), True, True))
            return
        if message.stream:
            self._windows[message.key] = asyncio.Semaphore(STREAM_WINDOW)
        self._tasks[message.key] = asyncio.get_running_loop().create_task(
            self._run(message.key, request, message.stream)
        )

    def _request(self, message: m.Infer) -> InferRequest:
        trace = None
        tracing = self._process.host.tracing
        if message.trace is not None and tracing is not None:
            ref = message.trace
            trace = tracing.remote_request(ref.trace_id, ref.span_id, ref.sampled, ref.started_ns)
        return InferRequest(
            model_name=message.model,
            model_version=None if message.version < 0 else message.version,
            inputs=[self._input(tensor) for tensor in message.inputs],
            requested_outputs=tuple(
                RequestedOutput(
                    output.name,
                    output.class_count,
                    None
                    if output.region is None
                    else SharedMemoryRef(output.region, output.offset, output.byte_size),
                )
                for output in message.outputs
            ),
            request_id=message.request_id,
            options=m.from_wire_options(message.options),
            deadline=message.deadline,
            trace=trace,
        )

    def _input(self, tensor: m.Tensor) -> InputTensor:
        if tensor.region is not None:  # CUDA shared memory, which the engine reads
            ref = SharedMemoryRef(tensor.region, tensor.offset, tensor.nbytes)
            return InputTensor(tensor.name, tensor.datatype, tensor.shape, ref)
        raw = tensors.view(tensor, self._request_ring, "input", "request ring")
        if tensor.elements == tensors.RAW:
            return InputTensor(tensor.name, tensor.datatype, tensor.shape, raw)
        # Typed contents: checked by element count, as in one process.
        typed = tensors.flat_array(tensor.datatype, raw, tensor.elements)
        return InputTensor(tensor.name, tensor.datatype, tensor.shape, typed)

    async def _run(self, key: int, request: InferRequest, stream: bool) -> None:
        try:
            if stream:
                await self._run_stream(key, request)
            else:
                self._send_response(key, await self._client.infer(request))
        except EngineError as exc:
            self.channel.send(m.Failure(key, exc.code, exc.message, True, True))
        except asyncio.CancelledError:
            # An abort (or the front's end): the front frees the request's ring space
            # when the key ends, so it always ends.
            self.channel.send(m.Failure(key, ErrorCode.CANCELLED, "request aborted", True, True))
        except Exception as exc:  # a bug: answer it, and keep serving the others
            logger.exception("request for model '%s' failed", request.model_name)
            self.channel.send(m.Failure(key, ErrorCode.INTERNAL, repr(exc), True, True))
        finally:
            self._tasks.pop(key, None)
            self._windows.pop(key, None)

    async def _run_stream(self, key: int, request: InferRequest) -> None:
        window = self._windows[key]
        async for item in self._client.infer_stream(request):
            await window.acquire()  # the front is this many responses behind: wait
            if isinstance(item, ErrorResponse):
                error = item.error
                self.channel.send(m.Failure(key, error.code, error.message, item.final, False))
            else:
                self._send_response(key, item)

    def _send_response(self, key: int, response: InferResponse) -> None:
        self.channel.send(
            m.Result(
                key,
                response.model_name,
                response.model_version,
                response.request_id,
                [self._output(output) for output in response.outputs],
                response.final,
            )
        )

    def _output(self, output: OutputTensor) -> m.Tensor:
        name, datatype, array = output.name, output.datatype, output.data
        if output.in_shared_memory:  # written into the client's GPU memory
            return m.Tensor(name, datatype, array.shape, None, in_shared_memory=True)
        raw = tensors.payload(datatype, array)
        offset = None
        responses = self._responses
        if tensors.in_ring(raw.nbytes) and responses is not None:
            # A full ring (or a tensor larger than it) answers inline: slower, never stuck.
            offset = responses.allocate(raw.nbytes) if raw.nbytes <= responses.capacity else None
        return tensors.encode(name, datatype, array.shape, raw, self._response_ring, offset)

    # --- control calls -------------------------------------------------------------------

    async def _call(self, call: m.FrontMessage) -> None:
        client = self._client
        reply = m.Reply(getattr(call, "call", 0))
        try:
            if isinstance(call, m.StatisticsCall):
                version = None if call.version < 0 else call.version
                reply.statistics = [
                    dataclasses.replace(snapshot, failures=dict(snapshot.failures))
                    for snapshot in await client.statistics(call.name, version)
                ]
            elif isinstance(call, m.IndexCall):
                reply.index = await client.repository_index(call.ready_only)
            elif isinstance(call, m.LoadCall):
                config = None
                if call.config is not None:
                    config = model_config_pb2.ModelConfig.FromString(call.config)
                cleanup = Path(call.cleanup) if call.cleanup is not None else None
                await client.load_model(call.name, Path(call.directory), config, cleanup)
            elif isinstance(call, m.UnloadCall):
                await client.unload_model(call.name)
            elif isinstance(call, m.RegisterRegionCall):
                regions = self._process.host.shared_memory
                await regions.register_region(call.name, call.key, call.offset, call.byte_size)
                await self._process.publish_regions()  # before the caller hears back
            elif isinstance(call, m.UnregisterRegionCall):
                await self._process.host.shared_memory.unregister_region(call.name)
                await self._process.publish_regions()
            elif isinstance(call, m.RegionStatusCall):
                reply.regions = await self._process.host.shared_memory.region_status(call.name)
            elif isinstance(call, m.RegisterCudaRegionCall):
                await client.register_cuda_region(
                    call.name, call.raw_handle, call.device_id, call.byte_size
                )
                await self._process.publish_regions()  # fronts learn the name is CUDA's
            elif isinstance(call, m.UnregisterCudaRegionCall):
                await client.unregister_cuda_region(call.name)
                await self._process.publish_regions()
            elif isinstance(call, m.CudaRegionStatusCall):
                reply.cuda_regions = await client.cuda_region_status(call.name)
            else:
                raise EngineError(ErrorCode.INTERNAL, f"unexpected message {type(call).__name__}")
        except EngineError as exc:
            reply.code, reply.message = exc.code, exc.message
        except Exception as exc:
            logger.exception("control call from %s failed", self._name)
            reply.code, reply.message = ErrorCode.INTERNAL, repr(exc)
        try:
            self.channel.send(reply)
        except Exception as exc:  # a value msgpack cannot carry: a bug, but answer it
            logger.exception("cannot send the answer to a control call")
            self.channel.send(m.Reply(reply.call, code=ErrorCode.INTERNAL, message=repr(exc)))
