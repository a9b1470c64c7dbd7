"""What requests can reach: each model's servable versions, and the one rule that picks
the version a request names (or the newest). The engine answers lookups from its live
models; a front process answers them from a catalog the engine process sends it, so
both give the same answer with the same wording."""

from __future__ import annotations

import dataclasses
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from inferd.engines.errors import EngineError, ErrorCode
from inferd.engines.validation import TensorSpec
from inferd.protos import model_config_pb2

T = TypeVar("T")


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


def select_version(
    name: str, versions: Mapping[int, T] | None, failed: Container[str], version: int | None
) -> T:
    """The version asked for, or the newest ready one; NOT_FOUND names what was asked.
    ``versions`` is None for a model that is not loaded at all."""
    if versions is None:
        raise EngineError(ErrorCode.NOT_FOUND, f"Request for unknown model: '{name}' is not found")
    if version is None:
        if not versions:
            raise EngineError(
                ErrorCode.NOT_FOUND,
                f"Request for unknown model: '{name}' has no available versions",
            )
        return versions[max(versions)]
    found = versions.get(version)
    if found is None:
        if str(version) in failed:
            raise EngineError(
                ErrorCode.UNAVAILABLE,
                f"Request for unknown model: '{name}' version {version} is not at ready state",
            )
        raise EngineError(
            ErrorCode.NOT_FOUND,
            f"Request for unknown model: '{name}' version {version} is not found",
        )
    return found


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One loaded model: each ready version's info (``ready_versions`` is that version
    alone) and the versions that failed to load."""

    name: str
    versions: tuple[ModelInfo, ...]
    failed_versions: tuple[str, ...] = ()


class ModelCatalog:
    """Lookups over a snapshot of the engine's models, for a process without them."""

    def __init__(self, entries: Iterable[CatalogEntry] = ()) -> None:
        self._entries = {entry.name: entry for entry in entries}
        self._versions = {
            entry.name: {info.version: info for info in entry.versions}
            for entry in self._entries.values()
        }
        self._newest: dict[str, ModelInfo] = {}

    def model_info(self, name: str, version: int | None) -> ModelInfo:
        entry = self._entries.get(name)
        found = select_version(
            name,
            self._versions.get(name),
            entry.failed_versions if entry is not None else (),
            version,
        )
        if version is not None:
            return found
        # Unversioned lookups describe the model: every ready version, as the engine's do.
        newest = self._newest.get(name)
        if newest is None:
            ready = tuple(sorted(self._versions[name]))
            newest = self._newest[name] = dataclasses.replace(found, ready_versions=ready)
        return newest
