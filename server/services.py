"""The server as every front door sees it, whatever its protocol.

In one process these are the engine host's own objects; in a front process, their
counterparts that reach the engine process. A front door (gRPC now) is a codec and
routes over this: the request path for inferences, and the protocol-neutral answers
for readiness, metadata, statistics, trace settings, shared memory and model control.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from inferd.engines import EngineClient, EngineError, ErrorCode, ModelInfo, ModelState
from inferd.engines.client_memory.system import SystemSharedMemoryRegistry
from inferd.engines.statistics import StatisticsSnapshot
from inferd.server.model_control import ModelControl
from inferd.server.request_path import RequestPath, parse_version

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


@dataclass(frozen=True, slots=True)
class ServerMetadata:
    name: str
    version: str
    extensions: tuple[str, ...]


class FrontServices:
    def __init__(
        self,
        engine: EngineClient,
        shared_memory: SystemSharedMemoryRegistry,
        tracing: Tracing | None,
        model_control: ModelControl,
    ) -> None:
        self.engine = engine
        self.shared_memory = shared_memory
        self.tracing = tracing  # None: tracing off
        # RepositoryModelLoad/Unload; mode "none" refuses them.
        self.model_control = model_control
        self.requests = RequestPath(engine, shared_memory, tracing)
        self._version = _version()
        self._serving = True

    def stop_serving(self) -> None:
        """Shutdown has begun: report not ready so load balancers drain this server."""
        self._serving = False

    def server_ready(self) -> bool:
        return self._serving and self.engine.is_ready()

    def model_ready(self, name: str, version: str) -> bool:
        """Triton answers ready=false for unknown or unready models and versions; a
        version that is not a number is an error (INVALID_ARGUMENT)."""
        number = parse_version(version)
        try:
            self.engine.model_info(name, number)
        except EngineError:
            return False
        return self._serving

    def metadata(self) -> ServerMetadata:
        extensions: tuple[str, ...] = SUPPORTED_EXTENSIONS
        if self.shared_memory.enabled:
            extensions += ("system_shared_memory",)
        return ServerMetadata(SERVER_NAME, self._version, extensions)

    def model(self, name: str, version: str) -> ModelInfo:
        """NOT_FOUND names what was asked; a version that is not a number is invalid."""
        return self.engine.model_info(name, parse_version(version))

    async def statistics(self, name: str, version: str) -> list[StatisticsSnapshot]:
        return await self.engine.statistics(name, parse_version(version))

    async def model_counts(self) -> tuple[int, int]:
        """(model versions serving, versions that failed to load)."""
        index = await self.engine.repository_index(ready_only=False)
        return (
            sum(entry.state is ModelState.READY for entry in index),
            sum(entry.state is ModelState.UNAVAILABLE for entry in index),
        )

    def trace_settings(self, model: str, changes: Mapping[str, list[str]]) -> dict[str, str]:
        """Triton's TraceSetting: apply ``changes`` (none: only read) globally or for
        ``model``, and return the settings in effect there."""
        if model:
            self.model(model, "")  # unknown model: NOT_FOUND
        if "trace_file" in changes:  # a path on the server: never settable over the network
            raise EngineError(
                ErrorCode.INVALID_ARGUMENT,
                "trace_file cannot be set over the network: inferd exports spans with "
                "OpenTelemetry (--trace-exporter, OTEL_EXPORTER_OTLP_ENDPOINT)",
            )
        if self.tracing is None:
            if changes:
                raise EngineError(
                    ErrorCode.UNAVAILABLE,
                    "tracing is off: start inferd with --trace-exporter otlp|console (or "
                    "OTEL_TRACES_EXPORTER) to trace requests",
                )
            return {"trace_level": "OFF", "trace_mode": "opentelemetry"}
        if changes:
            return self.tracing.settings.update(model, changes)
        return self.tracing.settings.effective(model)
