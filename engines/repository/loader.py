"""A model repository in Triton's layout: ``<repo>/<model>/config.pbtxt`` and
``<repo>/<model>/<version>/<model file>``.

Loading never raises for one bad model: its failure becomes an UNAVAILABLE entry with
the reason, and every other model still loads.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from inferd.engines.backends import (
    Backend,
    BackendInstance,
    InstanceSpec,
    RequestInstance,
    resolve_backend,
)
from inferd.engines.classification import read_labels
from inferd.engines.errors import EngineError, ErrorCode
from inferd.engines.execution.executor import BatchingExecutor
from inferd.engines.execution.sequence_executor import SequenceBatchingExecutor
from inferd.engines.execution.sequence_state import load_states
from inferd.engines.model import ModelVersion
from inferd.engines.repository.config import (
    read_config,
    select_versions,
    validate_config,
    version_directories,
)
from inferd.engines.repository.policies import batching_policy, sequence_policy
from inferd.engines.repository.warmup import warm_up
from inferd.engines.statistics import ModelStatistics
from inferd.engines.types import BatchObserver, ModelIndexEntry, ModelState
from inferd.protos import model_config_pb2

logger = logging.getLogger(__name__)

# Triton's default when a config names no instance_group: two CPU instances.
DEFAULT_CPU_INSTANCE_COUNT = 2
# Requests waiting per model version when the config sets no max_queue_size (Triton's
# "unbounded"): inferd still bounds memory; full -> UNAVAILABLE at once.
DEFAULT_QUEUE_CAPACITY = 1024


@dataclass(slots=True)
class LoadedModel:
    """Everything known about one model directory, whether or not it loaded."""

    name: str
    config: model_config_pb2.ModelConfig | None = None
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # version ("" = whole model) -> why

    def index_entries(self) -> list[ModelIndexEntry]:
        entries = [
            ModelIndexEntry(self.name, str(version), ModelState.READY)
            for version in sorted(self.versions)
        ]
        entries += [
            ModelIndexEntry(self.name, version, ModelState.UNAVAILABLE, reason)
            for version, reason in sorted(self.failures.items())
        ]
        return entries


def _instance_specs(config: model_config_pb2.ModelConfig, gpu_count: int) -> list[InstanceSpec]:
    """Triton's placement: no instance_group means one instance per GPU when the backend
    has GPUs, else two CPU instances; KIND_AUTO means GPU when there is one; KIND_GPU
    without `gpus` means every GPU; `count` instances go on each listed GPU."""
    groups = list(config.instance_group)
    if not groups:
        group = config.instance_group.add()
        if gpu_count:
            group.kind = model_config_pb2.ModelInstanceGroup.KIND_GPU
            group.count = 1
        else:
            group.kind = model_config_pb2.ModelInstanceGroup.KIND_CPU
            group.count = DEFAULT_CPU_INSTANCE_COUNT
        groups = [group]
    specs: list[InstanceSpec] = []
    for position, group in enumerate(groups):
        if not group.name:
            group.name = config.name if len(groups) == 1 else f"{config.name}_{position}"
        if group.kind == model_config_pb2.ModelInstanceGroup.KIND_AUTO:
            group.kind = (
                model_config_pb2.ModelInstanceGroup.KIND_GPU
                if gpu_count
                else model_config_pb2.ModelInstanceGroup.KIND_CPU
            )
        kind = model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind).removeprefix("KIND_")
        if group.count < 1:
            group.count = 1
        devices: list[int | None] = [None]
        if kind == "GPU":
            if not group.gpus:
                group.gpus.extend(range(gpu_count))
            missing = [gpu for gpu in group.gpus if not 0 <= gpu < gpu_count]
            if missing or not group.gpus:
                raise EngineError(
                    ErrorCode.INVALID_ARGUMENT,
                    f"instance group '{group.name}' of model '{config.name}' asks for GPU(s) "
                    f"{missing or 'of any kind'}, but its backend sees {gpu_count} GPU(s) here",
                )
            devices = list(group.gpus)
        for device in devices:
            for _ in range(group.count):
                specs.append(InstanceSpec(index=len(specs), kind=kind, device=device))
    return specs


def _load_version(
    backend: Backend,
    model_dir: Path,
    config: model_config_pb2.ModelConfig,
    version: int,
    observer: BatchObserver | None,
) -> ModelVersion:
    model_path = model_dir / str(version) / config.default_model_filename
    if not model_path.exists():
        raise FileNotFoundError(f"model file {model_path} does not exist")
    states = load_states(config, model_dir)  # before instances: a bad state loads nothing
    labels = {
        output.name: read_labels(model_dir / output.label_filename)
        for output in config.output
        if output.label_filename
    }
    specs = _instance_specs(config, backend.gpu_count())
    instances: list[BackendInstance | RequestInstance] = []
    try:
        for spec in specs:
            instances.append(backend.load(model_path, config, spec))
        warm_up(config, model_dir, instances)  # ready only once every instance has run
    except BaseException:
        # Instances hold device memory and threads: a failed version releases its own.
        for instance in instances:
            instance.close()
        raise
    statistics = ModelStatistics(config.name, version, config.max_batch_size)
    devices = ["cpu" if spec.kind == "CPU" else f"cuda:{spec.device or 0}" for spec in specs]
    executor: BatchingExecutor
    if config.HasField("sequence_batching"):
        executor = SequenceBatchingExecutor(
            f"{config.name}:{version}",
            instances,
            sequence_policy(config, len(instances)),
            DEFAULT_QUEUE_CAPACITY,
            statistics,
            observer=observer,
            devices=devices,
            states=states,
        )
    else:
        executor = BatchingExecutor(
            f"{config.name}:{version}",
            instances,
            batching_policy(config),
            DEFAULT_QUEUE_CAPACITY,
            statistics,
            observer=observer,
            devices=devices,
        )
    return ModelVersion(config, version, executor, statistics, labels)


def load_model(
    model_dir: Path,
    observer: BatchObserver | None = None,
    config_override: model_config_pb2.ModelConfig | None = None,
) -> LoadedModel:
    """Read, complete and validate one model's config, then load the versions it selects.

    ``config_override`` replaces ``config.pbtxt`` (model control's ``config`` load
    parameter), as Triton does; the directory still names the model."""
    loaded = LoadedModel(model_dir.name)
    try:
        if config_override is None:
            config = read_config(model_dir)
        else:
            config = _overridden_config(config_override, model_dir.name)
        available = version_directories(model_dir)
        if not available:
            raise EngineError(
                ErrorCode.INVALID_ARGUMENT,
                f"model '{model_dir.name}' has no version directories (expected {model_dir}/1/...)",
            )
        backend = resolve_backend(config, model_dir / str(available[-1]))
        if not config.default_model_filename:
            config.default_model_filename = backend.default_model_filename
        backend.complete_config(
            model_dir / str(available[-1]) / config.default_model_filename, config
        )
        if not config.HasField("version_policy"):
            config.version_policy.latest.num_versions = 1
        validate_config(config)
        _instance_specs(
            config, backend.gpu_count()
        )  # fills the default instance_group into the reported config
        selected = select_versions(config, available)
    except Exception as exc:  # one broken model must not stop the others
        reason = _reason(exc)
        logger.error("failed to load model '%s': %s", model_dir.name, reason)
        loaded.failures[""] = reason
        return loaded
    loaded.config = config
    for version in selected:
        try:
            loaded.versions[version] = _load_version(backend, model_dir, config, version, observer)
            logger.info("loaded model '%s' version %d", config.name, version)
        except Exception as exc:
            reason = _reason(exc)
            logger.error("failed to load model '%s' version %d: %s", config.name, version, reason)
            loaded.failures[str(version)] = reason
    return loaded


def _overridden_config(
    override: model_config_pb2.ModelConfig, name: str
) -> model_config_pb2.ModelConfig:
    config = model_config_pb2.ModelConfig()
    config.CopyFrom(override)  # completion fills the config in: leave the caller's alone
    if not config.name:
        config.name = name
    elif config.name != name:
        raise EngineError(
            ErrorCode.INVALID_ARGUMENT,
            f"unexpected directory name '{name}' for model '{config.name}', directory name "
            "must equal model name",
        )
    return config


# Triton prefixes a load failure's reason with its status in words.
_REASON_PREFIX = {
    ErrorCode.INVALID_ARGUMENT: "Invalid argument",
    ErrorCode.NOT_FOUND: "Not found",
    ErrorCode.UNAVAILABLE: "Unavailable",
    ErrorCode.UNSUPPORTED: "Unsupported",
}


def _reason(exc: Exception) -> str:
    if isinstance(exc, EngineError):
        return f"{_REASON_PREFIX.get(exc.code, 'Internal')}: {exc.message}"
    return f"Internal: {type(exc).__name__}: {exc}"


def model_directories(repository: Path) -> list[Path]:
    """The model directories of a repository, by name; hidden entries are skipped."""
    return sorted(
        (
            Path(entry.path)
            for entry in os.scandir(repository)
            if entry.is_dir() and not entry.name.startswith(".")
        ),
        key=lambda path: path.name,
    )


def directory_stamp(model_dir: Path) -> int:
    """A fingerprint of a model directory's tree (names, sizes, modification times):
    it changes when any file or version directory is added, removed or rewritten, so
    polling and repeated loads can tell an unchanged model from a changed one."""
    entries = []
    for root, directories, files in os.walk(model_dir):
        directories.sort()
        for name in sorted([*directories, *files]):
            path = os.path.join(root, name)
            try:
                status = os.stat(path, follow_symlinks=False)
            except OSError:  # removed while walking: the next look sees the change
                continue
            entries.append((os.path.relpath(path, model_dir), status.st_mtime_ns, status.st_size))
    return hash(tuple(entries))
