"""``inference.GRPCInferenceService``: short typed methods that decode, call the server's
front services (the request path for inferences) and encode. Protobuf types stop here;
everything below sees only engine types."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc

from inferd.engines import TensorSpec
from inferd.protos import grpc_service_pb2 as pb
from inferd.protos import grpc_service_pb2_grpc as pb_grpc
from inferd.server.grpc.codec import UNARY, shared_memory_regions
from inferd.server.grpc.drain import DrainGate
from inferd.server.grpc.repository import decode_load_request, decode_unload_request
from inferd.server.grpc.statistics import encode_model_statistics
from inferd.server.grpc.status import maps_engine_errors
from inferd.server.grpc.streaming import StreamCall
from inferd.server.request_path import InferCall
from inferd.server.services import FrontServices


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


def deadline_of(context: grpc.aio.ServicerContext | grpc.ServicerContext) -> float | None:
    """The call's deadline as time.monotonic(), None when the client set none (grpc.aio
    says None; grpc's synchronous server says about 2**63 seconds)."""
    remaining = context.time_remaining()
    if remaining is None or remaining > _NO_DEADLINE_S:
        return None
    return time.monotonic() + remaining


_NO_DEADLINE_S = 1e9  # about 30 years: no client means that


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Inference and model-control RPCs ask ``gate`` first while a drain runs."""

    def __init__(self, services: FrontServices, gate: DrainGate) -> None:
        self._services = services
        self._requests = services.requests
        self._gate = gate

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._services.server_ready())

    @maps_engine_errors
    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(
            ready=self._services.model_ready(request.name, request.version)
        )

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        metadata = self._services.metadata()
        return pb.ServerMetadataResponse(
            name=metadata.name, version=metadata.version, extensions=metadata.extensions
        )

    @maps_engine_errors
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        info = self._services.model(request.name, request.version)
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
        info = self._services.model(request.name, request.version)
        return pb.ModelConfigResponse(config=info.config)

    @maps_engine_errors
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        snapshots = await self._services.statistics(request.name, request.version)
        return encode_model_statistics(snapshots)

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
                for entry in await self._services.engine.repository_index(request.ready)
            ]
        )

    @maps_engine_errors
    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        if self._gate.draining and not self._gate.admits():
            await self._gate.refuse(context)
        call = InferCall(
            request,
            request.model_name,
            request.model_version,
            request.id,
            shared_memory_regions(request),
            deadline_of(context),
            context.invocation_metadata,
        )
        return await self._requests.infer(call, UNARY)

    async def ModelStreamInfer(
        self,
        request_iterator: AsyncIterator[pb.ModelInferRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        if self._gate.draining and not self._gate.admits():
            await self._gate.refuse(context)
        call = StreamCall(self._requests, context)
        async for response in call.responses(request_iterator):
            yield response

    @maps_engine_errors
    async def TraceSetting(
        self, request: pb.TraceSettingRequest, context: grpc.aio.ServicerContext
    ) -> pb.TraceSettingResponse:
        changes = {key: list(value.value) for key, value in request.settings.items()}
        effective = self._services.trace_settings(request.model_name, changes)
        response = pb.TraceSettingResponse()
        for key, value in effective.items():
            response.settings[key].value.append(value)
        return response

    @maps_engine_errors
    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.SystemSharedMemoryRegisterResponse:
        if self._gate.draining and not self._gate.admits():
            await self._gate.refuse(context)
        await self._services.shared_memory.register_region(
            request.name, request.key, request.offset, request.byte_size
        )
        return pb.SystemSharedMemoryRegisterResponse()

    @maps_engine_errors
    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.SystemSharedMemoryStatusResponse:
        response = pb.SystemSharedMemoryStatusResponse()
        for region in await self._services.shared_memory.region_status(request.name):
            status = response.regions[region.name]
            status.name, status.key = region.name, region.key
            status.offset, status.byte_size = region.offset, region.byte_size
        return response

    @maps_engine_errors
    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        await self._services.shared_memory.unregister_region(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    @maps_engine_errors
    async def CudaSharedMemoryStatus(
        self, request: pb.CudaSharedMemoryStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.CudaSharedMemoryStatusResponse:
        response = pb.CudaSharedMemoryStatusResponse()
        for region in await self._services.engine.cuda_region_status(request.name):
            status = response.regions[region.name]
            status.name, status.device_id = region.name, region.device_id
            status.byte_size = region.byte_size
        return response

    @maps_engine_errors
    async def CudaSharedMemoryRegister(
        self, request: pb.CudaSharedMemoryRegisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.CudaSharedMemoryRegisterResponse:
        if self._gate.draining and not self._gate.admits():
            await self._gate.refuse(context)
        await self._services.engine.register_cuda_region(
            request.name, request.raw_handle, request.device_id, request.byte_size
        )
        return pb.CudaSharedMemoryRegisterResponse()

    @maps_engine_errors
    async def CudaSharedMemoryUnregister(
        self, request: pb.CudaSharedMemoryUnregisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.CudaSharedMemoryUnregisterResponse:
        await self._services.engine.unregister_cuda_region(request.name)
        return pb.CudaSharedMemoryUnregisterResponse()

    @maps_engine_errors
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        if self._gate.draining and not self._gate.admits():
            await self._gate.refuse(context)
        await self._services.model_control.load(decode_load_request(request))
        return pb.RepositoryModelLoadResponse()

    @maps_engine_errors
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        if self._gate.draining and not self._gate.admits():
            await self._gate.refuse(context)
        await self._services.model_control.unload(decode_unload_request(request))
        return pb.RepositoryModelUnloadResponse()


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
