"""How front ends reach the engine: a small interface with two implementations, the
engine in this process (here) and an engine process reached over a local socket
(``inferd.server.ipc.remote_client``). Lookups asked on every request (``model_info``,
``is_ready``) are synchronous; anything that may cross a process boundary is async.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Protocol

from inferd.engines.catalog import ModelInfo
from inferd.engines.client_memory.cuda import CudaRegionStatus, CudaSharedMemory
from inferd.engines.engine import Engine
from inferd.engines.statistics import StatisticsSnapshot
from inferd.engines.types import (
    BatchObserver,
    ErrorResponse,
    InferRequest,
    InferResponse,
    ModelIndexEntry,
)
from inferd.protos import model_config_pb2


class EngineClient(Protocol):
    async def start(self) -> None:
        """Load the repository; returns once every model has loaded or failed."""

    def is_ready(self) -> bool: ...

    def model_info(self, name: str, version: int | None) -> ModelInfo:
        """Raises EngineError(NOT_FOUND) for an unknown model or version."""

    async def repository_index(self, ready_only: bool) -> list[ModelIndexEntry]: ...

    async def statistics(self, name: str, version: int | None) -> list[StatisticsSnapshot]:
        """Statistics per version (pending requests included). Empty name: every model."""

    async def infer(self, request: InferRequest) -> InferResponse:
        """Run one request. Cancelling the awaiting task aborts it: queued work is dropped."""

    def infer_stream(self, request: InferRequest) -> AsyncIterator[InferResponse | ErrorResponse]:
        """Run one request and yield its responses in order, the last with ``final``
        set; a decoupled model may send many, and errors (ErrorResponse items). Errors
        before the model ran are raised. Closing the iterator early aborts the request."""

    async def load_model(
        self,
        name: str,
        directory: Path,
        config: model_config_pb2.ModelConfig | None = None,
        cleanup: Path | None = None,
    ) -> None:
        """Load or reload one model from ``directory``; the old versions serve until the
        new ones are ready, then drain. ``config`` replaces its config.pbtxt;
        ``cleanup`` is a private directory removed with the model. Raises EngineError
        when a version fails (whatever served before still serves)."""

    async def unload_model(self, name: str) -> None:
        """Stop serving the model; returns once its requests finished and it is released."""

    async def register_cuda_region(
        self, name: str, raw_handle: bytes, device_id: int, byte_size: int
    ) -> None:
        """Map a client's CUDA shared memory (an IPC handle) as region ``name``."""

    async def cuda_region_status(self, name: str) -> list[CudaRegionStatus]:
        """One CUDA region, or every one for an empty name (NOT_FOUND: unknown name)."""

    async def unregister_cuda_region(self, name: str) -> None:
        """Forget one CUDA region, or every one for an empty name."""

    async def close(self) -> None:
        """Finish queued work and release every model."""


class InProcessEngineClient:
    """The engine in this process; model work runs on its instance threads, off the loop."""

    def __init__(
        self,
        repository: Path,
        observer: BatchObserver | None = None,
        startup_models: tuple[str, ...] | None = None,
        cuda_shared_memory: CudaSharedMemory | None = None,  # None: refused
        on_models_changed: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._engine = Engine(repository, observer, cuda_shared_memory=cuda_shared_memory)
        self._startup_models = startup_models  # None: every model in the repository
        # Awaited after every load or unload, whoever asked (an RPC or the poll loop),
        # before that caller hears back: an engine process tells its fronts here.
        self._on_models_changed = on_models_changed
        self._ready = False

    async def start(self) -> None:
        if self._startup_models is None:
            await asyncio.to_thread(self._engine.load_all)
        else:
            await asyncio.to_thread(self._engine.load_named, self._startup_models)
        self._ready = True

    def is_ready(self) -> bool:
        return self._ready

    def model_info(self, name: str, version: int | None) -> ModelInfo:
        return self._engine.model_info(name, version)

    async def repository_index(self, ready_only: bool) -> list[ModelIndexEntry]:
        return self._engine.repository_index(ready_only)

    async def statistics(self, name: str, version: int | None) -> list[StatisticsSnapshot]:
        return self._engine.statistics(name, version)

    @property
    def engine(self) -> Engine:
        """The engine itself, for what runs beside it in this process (metrics, catalog)."""
        return self._engine

    async def infer(self, request: InferRequest) -> InferResponse:
        return await self._engine.infer(request)

    def infer_stream(self, request: InferRequest) -> AsyncIterator[InferResponse | ErrorResponse]:
        return self._engine.infer_stream(request)

    async def load_model(
        self,
        name: str,
        directory: Path,
        config: model_config_pb2.ModelConfig | None = None,
        cleanup: Path | None = None,
    ) -> None:
        try:
            await asyncio.to_thread(self._engine.load, name, directory, config, cleanup)
        finally:
            await self._models_changed()

    async def unload_model(self, name: str) -> None:
        try:
            await asyncio.to_thread(self._engine.unload, name)
        finally:
            await self._models_changed()

    async def _models_changed(self) -> None:
        if self._on_models_changed is not None:
            await self._on_models_changed()

    async def register_cuda_region(
        self, name: str, raw_handle: bytes, device_id: int, byte_size: int
    ) -> None:
        # Off the loop: the first registration starts CUDA, and mapping waits on the driver.
        regions = self._engine.cuda_shared_memory
        await asyncio.to_thread(regions.register, name, raw_handle, device_id, byte_size)

    async def cuda_region_status(self, name: str) -> list[CudaRegionStatus]:
        return self._engine.cuda_shared_memory.status(name)

    async def unregister_cuda_region(self, name: str) -> None:
        # Off the loop: unmapping waits on the driver.
        await asyncio.to_thread(self._engine.cuda_shared_memory.unregister, name)

    async def close(self) -> None:
        self._ready = False
        await asyncio.to_thread(self._engine.close)
