"""The engine: a model repository's loaded models, and the requests they serve."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from inferd.engines.errors import EngineError, ErrorCode
from inferd.engines.model import ModelVersion
from inferd.engines.repository import LoadedModel, load_model, model_directories
from inferd.engines.statistics import StatisticsSnapshot
from inferd.engines.types import (
    BatchObserver,
    ErrorResponse,
    InferRequest,
    InferResponse,
    ModelIndexEntry,
    ModelState,
)
from inferd.engines.validation import TensorSpec
from inferd.protos import model_config_pb2

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What a front end needs to know about one servable model version."""

    name: str
    version: int
    ready_versions: tuple[int, ...]
    platform: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    config: model_config_pb2.ModelConfig


class Engine:
    def __init__(self, repository: Path, observer: BatchObserver | None = None) -> None:
        self.repository = repository
        self._observer = observer
        self._models: dict[str, LoadedModel] = {}
        self._infos: dict[tuple[str, int | None], ModelInfo] = {}

    def load_all(self, parallelism: int = 4) -> None:
        """Load every model in the repository (blocking: call it off the event loop)."""
        if not self.repository.is_dir():
            raise EngineError(
                ErrorCode.INVALID_ARGUMENT,
                f"model repository {self.repository} does not exist or is not a directory",
            )
        directories = model_directories(self.repository)
        with ThreadPoolExecutor(max_workers=parallelism, thread_name_prefix="inferd-load") as pool:
            loads = pool.map(lambda directory: load_model(directory, self._observer), directories)
            for loaded in loads:
                self._models[loaded.name] = loaded

    def model(self, name: str, version: int | None) -> ModelVersion:
        """The version asked for, or the newest ready one; NOT_FOUND names what was asked."""
        loaded = self._models.get(name)
        if loaded is None:
            raise EngineError(
                ErrorCode.NOT_FOUND, f"Request for unknown model: '{name}' is not found"
            )
        if version is None:
            if not loaded.versions:
                raise EngineError(
                    ErrorCode.NOT_FOUND,
                    f"Request for unknown model: '{name}' has no available versions",
                )
            return loaded.versions[max(loaded.versions)]
        found = loaded.versions.get(version)
        if found is None:
            if str(version) in loaded.failures:
                raise EngineError(
                    ErrorCode.UNAVAILABLE,
                    f"Request for unknown model: '{name}' version {version} is not at ready state",
                )
            raise EngineError(
                ErrorCode.NOT_FOUND,
                f"Request for unknown model: '{name}' version {version} is not found",
            )
        return found

    def model_info(self, name: str, version: int | None) -> ModelInfo:
        # Asked on every request; what it describes does not change once loaded.
        info = self._infos.get((name, version))
        if info is None:
            info = self._infos[(name, version)] = self._describe(name, version)
        return info

    def _describe(self, name: str, version: int | None) -> ModelInfo:
        model = self.model(name, version)
        ready = (
            (model.version,) if version is not None else tuple(sorted(self._models[name].versions))
        )
        return ModelInfo(
            name=model.name,
            version=model.version,
            ready_versions=ready,
            platform=model.config.platform or model.config.backend,
            max_batch_size=model.max_batch_size,
            inputs=model.inputs,
            outputs=model.outputs,
            config=model.config,
        )

    def repository_index(self, ready_only: bool) -> list[ModelIndexEntry]:
        entries = [
            entry for name in sorted(self._models) for entry in self._models[name].index_entries()
        ]
        if ready_only:
            entries = [entry for entry in entries if entry.state is ModelState.READY]
        return entries

    def statistics(self, name: str, version: int | None) -> list[StatisticsSnapshot]:
        """Statistics per ready version: every model when name is empty, every version
        when version is None."""
        if name and (name not in self._models or not self._models[name].versions):
            raise EngineError(
                ErrorCode.INVALID_ARGUMENT, f"requested model '{name}' is not available"
            )
        names = [name] if name else sorted(self._models)
        samples = []
        for model_name in names:
            versions = self._models[model_name].versions
            if version is not None and name:
                if version not in versions:
                    raise EngineError(
                        ErrorCode.INVALID_ARGUMENT,
                        f"requested model '{name}' version {version} is not available",
                    )
                chosen = [versions[version]]
            else:
                chosen = [versions[number] for number in sorted(versions)]
            samples += [model.statistics.snapshot() for model in chosen]
        return samples

    async def infer(self, request: InferRequest) -> InferResponse:
        return await self.model(request.model_name, request.model_version).infer(request)

    def infer_stream(self, request: InferRequest) -> AsyncIterator[InferResponse | ErrorResponse]:
        return self.model(request.model_name, request.model_version).infer_stream(request)

    def close(self) -> None:
        """Drain and stop every model's instances (blocking)."""
        for loaded in self._models.values():
            for model in loaded.versions.values():
                model.close()
        self._models.clear()
        self._infos.clear()
