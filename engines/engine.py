"""The engine: a model repository's loaded models, and the requests they serve."""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from inferd.engines.catalog import CatalogEntry, ModelInfo, select_version
from inferd.engines.client_memory.cuda import CudaRequestMemory, CudaSharedMemory
from inferd.engines.errors import EngineError, ErrorCode
from inferd.engines.model import ModelVersion, Submitted
from inferd.engines.repository.loader import (
    LoadedModel,
    directory_stamp,
    load_model,
    model_directories,
)
from inferd.engines.statistics import StatisticsSnapshot
from inferd.engines.types import (
    BatchObserver,
    ErrorResponse,
    InferRequest,
    InferResponse,
    ModelIndexEntry,
    ModelState,
)
from inferd.protos import model_config_pb2

logger = logging.getLogger(__name__)


# How long a replaced or unloaded version may finish the requests it already has
# before it closes (and answers what is left UNAVAILABLE).
DRAIN_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class _Source:
    """Where a loaded model came from, to tell later whether a load would change it."""

    directory: Path
    stamp: int | None  # directory_stamp at load; None: a config or files override
    cleanup: Path | None = None  # a private directory of uploaded files, removed with it


class Engine:
    """Models by name. Model control (load, reload, unload) runs on caller threads,
    one operation at a time; lookups for requests run on the event loop. A request
    keeps the version it looked up until it finishes, and a replaced version closes
    only once those requests are done (or ``drain_timeout_s`` has passed)."""

    def __init__(
        self,
        repository: Path,
        observer: BatchObserver | None = None,
        drain_timeout_s: float = DRAIN_TIMEOUT_S,
        cuda_shared_memory: CudaSharedMemory | None = None,
    ) -> None:
        self.repository = repository
        # Clients' CUDA shared-memory regions: here, since this process holds CUDA.
        self.cuda_shared_memory = cuda_shared_memory or CudaSharedMemory(enabled=False)
        self._observer = observer
        self._drain_timeout_s = drain_timeout_s
        self._models: dict[str, LoadedModel] = {}
        self._infos: dict[tuple[str, int | None], ModelInfo] = {}
        self._sources: dict[str, _Source] = {}
        self._unloaded: dict[str, set[int]] = {}  # versions no longer served: "unloaded"
        # Guards the maps above and every ModelVersion.users; waited on while draining.
        self._lock = threading.Condition(threading.Lock())
        self._control = threading.Lock()  # one load / unload at a time

    def load_all(self, parallelism: int = 4) -> None:
        """Load every model in the repository (blocking: call it off the event loop)."""
        self._check_repository()
        directories = model_directories(self.repository)
        stamps = {directory.name: directory_stamp(directory) for directory in directories}
        with ThreadPoolExecutor(max_workers=parallelism, thread_name_prefix="inferd-load") as pool:
            loads = pool.map(lambda directory: load_model(directory, self._observer), directories)
            for directory, loaded in zip(directories, loads, strict=True):
                with self._lock:
                    self._models[loaded.name] = loaded
                    self._sources[loaded.name] = _Source(directory, stamps[loaded.name])

    def load_named(self, names: tuple[str, ...]) -> None:
        """Load these repository models at start (explicit model control); a model that
        is missing or fails is logged, never fatal, as for ``load_all``."""
        self._check_repository()
        for name in names:
            directory = self.repository / name
            if not directory.is_dir():
                logger.error("failed to load '%s': not found in %s", name, self.repository)
                continue
            try:
                self.load(name, directory)
            except EngineError as exc:
                logger.error("%s", exc.message.strip())

    def _check_repository(self) -> None:
        if not self.repository.is_dir():
            raise EngineError(
                ErrorCode.INVALID_ARGUMENT,
                f"model repository {self.repository} does not exist or is not a directory",
            )

    def load(
        self,
        name: str,
        directory: Path,
        config: model_config_pb2.ModelConfig | None = None,
        cleanup: Path | None = None,
    ) -> None:
        """Load or reload one model from ``directory`` (named ``name``), blocking.

        A reload brings the new versions up while the old serve; only when every new
        version loaded are requests routed to them, and the old versions drain and
        close. If any version fails, whatever serves now keeps serving and the error
        names each failure (Triton's wording). A repository model loaded again without
        overrides and unchanged on disk is left as it is, as Triton does. ``cleanup``
        (uploaded files) is removed when the model is replaced, unloaded or fails."""
        with self._control:
            stamp = (
                None if config is not None or cleanup is not None else directory_stamp(directory)
            )
            current, source = self._models.get(name), self._sources.get(name)
            if (
                stamp is not None
                and current is not None
                and current.versions
                and not current.failures
                and source == _Source(directory, stamp)
            ):
                logger.info("model '%s' is unchanged: not reloading", name)
                return
            loaded = load_model(directory, self._observer, config)
            if loaded.failures:
                for model in loaded.versions.values():
                    model.close()
                if cleanup is not None:
                    shutil.rmtree(cleanup, ignore_errors=True)
                if current is None or not current.versions:  # nothing serves: show why
                    failed = LoadedModel(name, failures=dict(loaded.failures))
                    self._replace(name, failed, _Source(directory, stamp))
                raise EngineError(
                    ErrorCode.INVALID_ARGUMENT,
                    f"load failed for model '{name}': {_failure_reasons(loaded)}\n",
                )
            self._replace(name, loaded, _Source(directory, stamp, cleanup))
            logger.info("successfully loaded '%s'", name)

    def unload(self, name: str) -> None:
        """Stop routing requests to the model, let them finish, then release it (blocking).
        A model that is not loaded is no error (Triton's behaviour)."""
        with self._control:
            if name in self._models:
                self._replace(name, None, None)
                logger.info("successfully unloaded '%s'", name)

    def _replace(self, name: str, new: LoadedModel | None, source: _Source | None) -> None:
        with self._lock:
            old = self._models.pop(name, None)
            old_source = self._sources.pop(name, None)
            if new is not None and source is not None:
                self._models[name] = new
                self._sources[name] = source
            for key in [key for key in self._infos if key[0] == name]:
                del self._infos[key]
            served = set(new.versions) if new is not None else set()
            retired = (self._unloaded.get(name, set()) | set(old.versions if old else ())) - served
            self._unloaded[name] = retired
        if old is not None:
            self._drain(old)
        if old_source is not None and old_source.cleanup is not None:
            shutil.rmtree(old_source.cleanup, ignore_errors=True)

    def _drain(self, old: LoadedModel) -> None:
        deadline = time.monotonic() + self._drain_timeout_s
        for model in old.versions.values():
            with self._lock:
                drained = self._lock.wait_for(
                    lambda model=model: model.users == 0,  # type: ignore[misc]
                    max(0.0, deadline - time.monotonic()),
                )
            if not drained:
                logger.warning(
                    "model '%s' version %d still had %d request(s) after %.0fs: closing it",
                    model.name,
                    model.version,
                    model.users,
                    self._drain_timeout_s,
                )
            model.close()

    def _acquire(self, name: str, version: int | None) -> ModelVersion:
        with self._lock:
            model = self.model(name, version)
            model.users += 1
            return model

    def _release(self, model: ModelVersion) -> None:
        with self._lock:
            model.users -= 1
            if model.users == 0:
                self._lock.notify_all()

    def model(self, name: str, version: int | None) -> ModelVersion:
        """The version asked for, or the newest ready one; NOT_FOUND names what was asked."""
        loaded = self._models.get(name)
        if loaded is None:
            return select_version(name, None, (), version)
        return select_version(name, loaded.versions, loaded.failures, version)

    def model_info(self, name: str, version: int | None) -> ModelInfo:
        # Asked on every request; what it describes does not change once loaded.
        info = self._infos.get((name, version))
        if info is None:
            with self._lock:  # a replaced model drops its entries under the same lock
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

    def catalog(self) -> tuple[CatalogEntry, ...]:
        """Every loaded model's ready versions, for lookups in another process."""
        with self._lock:
            loaded = [
                (name, sorted(model.versions), tuple(model.failures))
                for name, model in self._models.items()
            ]
        entries = []
        for name, versions, failed in loaded:
            infos = []
            for version in versions:
                try:
                    infos.append(self.model_info(name, version))
                except EngineError:  # unloaded since the copy above: no longer servable
                    continue
            entries.append(CatalogEntry(name, tuple(infos), failed))
        return tuple(entries)

    def repository_index(self, ready_only: bool) -> list[ModelIndexEntry]:
        """Every model directory of the repository and every loaded model, as Triton
        lists them: a directory never loaded by its name only, versions no longer
        served as UNAVAILABLE "unloaded"."""
        directories = (
            {path.name for path in model_directories(self.repository)}
            if self.repository.is_dir()
            else set()
        )
        with self._lock:
            models = dict(self._models)
            unloaded = {name: set(versions) for name, versions in self._unloaded.items()}
        entries: list[ModelIndexEntry] = []
        for name in sorted(directories | set(models)):
            loaded = models.get(name)
            listed = loaded.index_entries() if loaded is not None else []
            known = {entry.version for entry in listed}
            listed += [
                ModelIndexEntry(name, str(version), ModelState.UNAVAILABLE, "unloaded")
                for version in sorted(unloaded.get(name, ()))
                if str(version) not in known and name in directories
            ]
            entries += listed or [ModelIndexEntry(name, "", ModelState.NOT_LOADED)]
        if ready_only:
            entries = [entry for entry in entries if entry.state is ModelState.READY]
        return entries

    def statistics(self, name: str, version: int | None) -> list[StatisticsSnapshot]:
        """Statistics per ready version: every model when name is empty, every version
        when version is None."""
        with self._lock:  # the metrics thread asks too, while models may change
            models = dict(self._models)
        if name and (name not in models or not models[name].versions):
            raise EngineError(
                ErrorCode.INVALID_ARGUMENT, f"requested model '{name}' is not available"
            )
        names = [name] if name else sorted(models)
        samples = []
        for model_name in names:
            versions = models[model_name].versions
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
        model = self._acquire(request.model_name, request.model_version)
        try:
            if not request.uses_cuda_shared_memory():
                return await model.infer(request)
            with self.cuda_shared_memory.request() as memory:
                await _read_inputs(memory, request, model)
                response = await model.infer(request)
                await asyncio.to_thread(memory.write_outputs, response)
                return response
        finally:
            self._release(model)

    def submit(self, request: InferRequest) -> Submitted | None:
        """``infer`` from a thread of the caller's own, with no event loop between it and
        the model's instances; None where the request must go through ``infer`` (a
        decoupled, sequence or ordered model, CUDA shared memory)."""
        model = self._acquire(request.model_name, request.model_version)
        try:
            if not model.answers_threads or request.uses_cuda_shared_memory():
                self._release(model)
                return None
            return model.submit(request, lambda: self._release(model))
        except BaseException:
            self._release(model)
            raise

    async def infer_stream(
        self, request: InferRequest
    ) -> AsyncIterator[InferResponse | ErrorResponse]:
        model = self._acquire(request.model_name, request.model_version)
        try:
            if not request.uses_cuda_shared_memory():
                async for item in model.infer_stream(request):
                    yield item
                return
            # Held until the stream ends: every response writes into the same regions.
            with self.cuda_shared_memory.request() as memory:
                await _read_inputs(memory, request, model)
                async for item in model.infer_stream(request):
                    if isinstance(item, InferResponse):
                        await asyncio.to_thread(memory.write_outputs, item)
                    yield item
        finally:
            self._release(model)

    def close(self) -> None:
        """Stop every model's instances (blocking): the server has already drained."""
        with self._control, self._lock:
            models, sources = list(self._models.values()), list(self._sources.values())
            self._models.clear()
            self._sources.clear()
            self._infos.clear()
        for loaded in models:
            for model in loaded.versions.values():
                model.close()
        for source in sources:
            if source.cleanup is not None:
                shutil.rmtree(source.cleanup, ignore_errors=True)
        self.cuda_shared_memory.close()


async def _read_inputs(
    memory: CudaRequestMemory, request: InferRequest, model: ModelVersion
) -> None:
    """Resolve the request's CUDA shared-memory inputs: device views are cheap enough for
    the event loop, copies to the host are not."""
    on_device = model.takes_device_tensors
    if memory.copies_inputs(request, on_device):
        await asyncio.to_thread(memory.read_inputs, request, on_device)
    else:
        memory.read_inputs(request, on_device)


def _failure_reasons(loaded: LoadedModel) -> str:
    """Triton's wording: "version 1 is at UNAVAILABLE state: <reason>;" per version."""
    return "".join(
        f"{reason};" if not version else f"version {version} is at UNAVAILABLE state: {reason};"
        for version, reason in sorted(loaded.failures.items())
    )
