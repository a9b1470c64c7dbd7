"""``inference.GRPCInferenceService``: short typed methods that decode, call the engine
client and encode. Protobuf types stop here; the engine sees only its own types."""

from __future__ import annotations

import asyncio
import importlib.metadata
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, TypeVar

import grpc

from inferd.engines import EngineClient, EngineError, ErrorCode, ModelInfo, TensorSpec
from inferd.engines.client_memory.system import SystemSharedMemoryRegistry
from inferd.protos import grpc_service_pb2 as pb
from inferd.protos import grpc_service_pb2_grpc as pb_grpc
from inferd.server.grpc.codec import (
    decode_infer_request,
    encode_infer_response,
    parse_version,
    shared_memory_regions,
)
from inferd.server.grpc.statistics import encode_model_statistics
from inferd.server.grpc.status import maps_engine_errors
from inferd.server.grpc.streaming import StreamCall
from inferd.server.model_control import ModelControl

T = TypeVar("T")

if TYPE_CHECKING:  # opentelemetry is an optional extra: imported only when tracing is on
    from inferd.server.tracing import Tracing

SERVER_NAME = "inferd"
# Only what inferd really answers; clients probe this list before using an extension.
SUPPORTED_EXTENSIONS = (
    "classification",
    "model_configuration",
    "model_repository",
    "model_repository(unload_dependents)",
    "schedule_policy",
    "sequence",
    "statistics",
    "trace",
)


def _version() -> str:
    try:
        return importlib.metadata.version("inferd")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def _tensor_metadata(
    specs: tuple[TensorSpec, ...], batched: bool
) -> list[pb.ModelMetadataResponse.TensorMetadata]:
    return [
        pb.ModelMetadataResponse.TensorMetadata(
            name=spec.name,
            datatype=spec.datatype,
            shape=[-1, *spec.dims] if batched else list(spec.dims),
        )
        for spec in specs
    ]


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self,
        engine: EngineClient,
        tracing: Tracing | None = None,
        shared_memory: SystemSharedMemoryRegistry | None = None,
        model_control: ModelControl | None = None,
    ) -> None:
        self._engine = engine
        self._tracing = tracing  # None: tracing off, and no tracing work at all
        # RepositoryModelLoad/Unload; without one they are refused (mode "none").
        self._model_control = model_control or ModelControl(engine, None)
        self._shm = shared_memory or SystemSharedMemoryRegistry(enabled=False)
        self._server_version = _version()
        self._serving = True

    def stop_serving(self) -> None:
        """Shutdown has begun: report not ready so load balancers drain this server."""
        self._serving = False

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._serving and self._engine.is_ready())

    @maps_engine_errors
    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        version = parse_version(request.version)  # not a number: INVALID_ARGUMENT
        # Triton answers OK with ready=false for unknown or unready models and versions.
        try:
            self._engine.model_info(request.name, version)
        except EngineError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self._serving)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        extensions: tuple[str, ...] = SUPPORTED_EXTENSIONS
        if self._shm.enabled:
            extensions += ("system_shared_memory",)
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=self._server_version, extensions=extensions
        )

    def _model(self, name: str, version: str) -> ModelInfo:
        return self._engine.model_info(name, parse_version(version))

    @maps_engine_errors
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        info = self._model(request.name, request.version)
        batched = info.max_batch_size > 0
        return pb.ModelMetadataResponse(
            name=info.name,
            versions=[str(version) for version in info.ready_versions],
            platform=info.platform,
            inputs=_tensor_metadata(info.inputs, batched),
            outputs=_tensor_metadata(info.outputs, batched),
        )

    @maps_engine_errors
    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelConfigResponse:
        info = self._model(request.name, request.version)
        return pb.ModelConfigResponse(config=info.config)

    @maps_engine_errors
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        version = parse_version(request.version)
        return encode_model_statistics(await self._engine.statistics(request.name, version))

    @maps_engine_errors
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        return pb.RepositoryIndexResponse(
            models=[
                pb.RepositoryIndexResponse.ModelIndex(
                    name=entry.name,
                    version=entry.version,
                    state=entry.state.value,
                    reason=entry.reason,
                )
                for entry in await self._engine.repository_index(request.ready)
            ]
        )

    @maps_engine_errors
    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        # Unknown model or version is reported before anything about the tensors, as Triton does.
        self._model(request.model_name, request.model_version)
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        regions_named = shared_memory_regions(request)
        if regions_named:
            await self._shm.prepare(regions_named)
        # System regions are read and written with file I/O; CUDA ones in the engine.
        off_loop = bool(regions_named) and not regions_named.isdisjoint(self._shm.names())
        if self._tracing is None:
            with self._shm.request() as regions:
                response = await self._engine.infer(
                    await _run(off_loop, decode_infer_request, request, deadline, regions)
                )
                return await _run(off_loop, encode_infer_response, response, regions)
        trace = self._tracing.start_request(
            context.invocation_metadata(), request.model_name, request.model_version, request.id
        )
        encode_start_ns: int | None = None
        error: BaseException | None = None
        try:
            with self._shm.request() as regions:
                engine_request = await _run(
                    off_loop, decode_infer_request, request, deadline, regions
                )
                engine_request.trace = trace
                response = await self._engine.infer(engine_request)
                encode_start_ns = time.perf_counter_ns()
                return await _run(off_loop, encode_infer_response, response, regions)
        except BaseException as exc:
            error = exc
            raise
        finally:
            if trace is not None:
                trace.end(error, encode_start_ns)

    async def ModelStreamInfer(
        self,
        request_iterator: AsyncIterator[pb.ModelInferRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        call = StreamCall(self._engine, self._model, context, self._tracing, self._shm)
        async for response in call.responses(request_iterator):
            yield response

    @maps_engine_errors
    async def TraceSetting(
        self, request: pb.TraceSettingRequest, context: grpc.aio.ServicerContext
    ) -> pb.TraceSettingResponse:
        if request.model_name:
            self._model(request.model_name, "")  # unknown model: NOT_FOUND
        changes = {key: list(value.value) for key, value in request.settings.items()}
        if "trace_file" in changes:  # a path on the server: never settable over the network
            raise EngineError(
                ErrorCode.INVALID_ARGUMENT,
                "trace_file cannot be set over the network: inferd exports spans with "
                "OpenTelemetry (--trace-exporter, OTEL_EXPORTER_OTLP_ENDPOINT)",
            )
        if self._tracing is None:
            if changes:
                raise EngineError(
                    ErrorCode.UNAVAILABLE,
                    "tracing is off: start inferd with --trace-exporter otlp|console (or "
                    "OTEL_TRACES_EXPORTER) to trace requests",
                )
            effective = {"trace_level": "OFF", "trace_mode": "opentelemetry"}
        elif changes:
            effective = self._tracing.settings.update(request.model_name, changes)
        else:
            effective = self._tracing.settings.effective(request.model_name)
        response = pb.TraceSettingResponse()
        for key, value in effective.items():
            response.settings[key].value.append(value)
        return response

    @maps_engine_errors
    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.SystemSharedMemoryRegisterResponse:
        await self._shm.register_region(
            request.name, request.key, request.offset, request.byte_size
        )
        return pb.SystemSharedMemoryRegisterResponse()

    @maps_engine_errors
    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.SystemSharedMemoryStatusResponse:
        response = pb.SystemSharedMemoryStatusResponse()
        for region in await self._shm.region_status(request.name):
            status = response.regions[region.name]
            status.name, status.key = region.name, region.key
            status.offset, status.byte_size = region.offset, region.byte_size
        return response

    @maps_engine_errors
    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        await self._shm.unregister_region(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    @maps_engine_errors
    async def CudaSharedMemoryStatus(
        self, request: pb.CudaSharedMemoryStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.CudaSharedMemoryStatusResponse:
        response = pb.CudaSharedMemoryStatusResponse()
        for region in await self._engine.cuda_region_status(request.name):
            status = response.regions[region.name]
            status.name, status.device_id = region.name, region.device_id
            status.byte_size = region.byte_size
        return response

    @maps_engine_errors
    async def CudaSharedMemoryRegister(
        self, request: pb.CudaSharedMemoryRegisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.CudaSharedMemoryRegisterResponse:
        await self._engine.register_cuda_region(
            request.name, request.raw_handle, request.device_id, request.byte_size
        )
        return pb.CudaSharedMemoryRegisterResponse()

    @maps_engine_errors
    async def CudaSharedMemoryUnregister(
        self, request: pb.CudaSharedMemoryUnregisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.CudaSharedMemoryUnregisterResponse:
        await self._engine.unregister_cuda_region(request.name)
        return pb.CudaSharedMemoryUnregisterResponse()

    @maps_engine_errors
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        await self._model_control.load(request)
        return pb.RepositoryModelLoadResponse()

    @maps_engine_errors
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        await self._model_control.unload(request)
        return pb.RepositoryModelUnloadResponse()


async def _run(off_loop: bool, function: Callable[..., T], *args: object) -> T:
    """``function(*args)`` on a worker thread when ``off_loop``, else right here."""
    if off_loop:
        return await asyncio.to_thread(function, *args)
    return function(*args)


def _unimplemented(rpc: str, where: str) -> object:
    message = f"inferd does not implement {rpc} yet ({where})"

    async def answer(self: InferenceServicer, request: object, context: grpc.aio.ServicerContext):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)

    answer.__name__ = rpc
    return answer


# RPCs of the protocol that later work builds; each says so instead of grpc's bare
# "Method not implemented!".
for _rpc, _where in (("LogSettings", "log settings are planned"),):
    setattr(InferenceServicer, _rpc, _unimplemented(_rpc, _where))
