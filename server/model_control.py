"""Triton's model control: ``--model-control-mode none|explicit|poll``, the
RepositoryModelLoad / RepositoryModelUnload parameters, and the repository poll loop.

Everything a request names is checked here before it reaches the file system: model
names stay one plain directory inside the repository, and uploaded ``file:`` models
are written only into a fresh private directory per load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from google.protobuf import json_format

from inferd.engines import EngineClient, EngineError, ErrorCode
from inferd.engines.repository.loader import directory_stamp, model_directories
from inferd.protos import model_config_pb2

logger = logging.getLogger(__name__)

MAX_MODEL_NAME_LENGTH = 255
MAX_FILE_NAME_LENGTH = 255  # one path component, as most file systems allow
MAX_UPLOAD_FILES = 256
MAX_UPLOAD_BYTES = 2 * 1024**3  # the largest gRPC message is INT32_MAX bytes anyway
FILE_PREFIX = "file:"
# <version>/<file>: a version without leading zeros (Triton ignores those directories)
# and one plain file name.
_UPLOAD_PATH = re.compile(r"(0|[1-9][0-9]{0,18})/([^/\\]+)")
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")

NOT_ALLOWED = "explicit model load / unload is not allowed if polling is enabled"


class ModelControlMode(Enum):
    NONE = "none"  # load everything at start; no changes afterwards
    EXPLICIT = "explicit"  # load what --load-model names; then RepositoryModelLoad/Unload
    POLL = "poll"  # load everything, then follow the repository every poll period


def _invalid(message: str) -> EngineError:
    return EngineError(ErrorCode.INVALID_ARGUMENT, message)


def validate_model_name(name: str) -> None:
    """A model name from a request is one plain directory name inside the repository."""
    if not name:
        raise _invalid("model name must not be empty")
    if not name.strip(" \t\n\v\f\r"):
        raise _invalid("model name must not contain only whitespace characters")
    if len(name) > MAX_MODEL_NAME_LENGTH:
        raise _invalid(
            f"invalid model name ({len(name)} characters), model name must be at most "
            f"{MAX_MODEL_NAME_LENGTH} characters"
        )
    if _CONTROL_CHARACTERS.search(name):
        raise _invalid("invalid model name, model name must not contain control characters")
    if ".." in name or "/" in name or "\\" in name:
        raise _invalid(
            f"invalid model name '{name}', model name must not contain path traversal characters"
        )
    if name.startswith("."):
        raise _invalid(f"invalid model name '{name}', model name must not start with '.'")


def startup_models(mode: ModelControlMode, names: tuple[str, ...]) -> tuple[str, ...] | None:
    """What to load at start: None for every model, else these names (explicit mode)."""
    if names and mode is not ModelControlMode.EXPLICIT:
        raise ValueError("--load-model is only allowed with --model-control-mode explicit")
    if mode is not ModelControlMode.EXPLICIT:
        return None
    if "*" in names:
        if len(names) > 1:
            raise ValueError(
                "Wildcard model name '*' must be the ONLY startup model if specified at all."
            )
        return None
    for name in names:
        try:
            validate_model_name(name)
        except EngineError as exc:
            raise ValueError(f"--load-model: {exc.message}") from None
    return names


@dataclass(frozen=True, slots=True)
class LoadRequest:
    """A RepositoryModelLoad request, checked: the config override and uploaded files."""

    name: str
    config: model_config_pb2.ModelConfig | None
    files: dict[str, bytes]  # "<version>/<file>" -> content


def load_request(name: str, config_text: str | None, files: dict[str, bytes]) -> LoadRequest:
    """A load's parameters, of the right wire types (``files`` keyed by ``upload_path``),
    checked against inferd's limits; the config override parsed."""
    if len(files) > MAX_UPLOAD_FILES:
        raise _invalid(
            f"too many file parameters: {len(files)}, at most {MAX_UPLOAD_FILES} per load"
        )
    total = sum(len(content) for content in files.values())
    if total > MAX_UPLOAD_BYTES:
        raise _invalid(f"file parameters hold {total} bytes, at most {MAX_UPLOAD_BYTES} per load")
    if files and config_text is None:
        raise _invalid("Load parameter 'config' must be specified for model file override")
    config = None
    if config_text is not None:
        config = model_config_pb2.ModelConfig()
        try:
            json_format.Parse(config_text, config)
        except json_format.ParseError as exc:
            raise _invalid(f"Invalid config override: {exc}") from None
    return LoadRequest(name, config, files)


def shown(key: str) -> str:
    """A parameter key for an error message: never more than 300 characters of it."""
    return key if len(key) <= 300 else f"{key[:300]}..."


def upload_path(key: str) -> str:
    """The ``<version>/<file>`` a ``file:`` load parameter names; refused unless it is
    one version directory and one plain file name."""
    path = key[len(FILE_PREFIX) :]
    match = _UPLOAD_PATH.fullmatch(path)
    problem = None
    if match is None:
        problem = "expected file:<version>/<file name> with a numeric version"
    else:
        file_name = match.group(2)
        if file_name in (".", "..") or file_name.startswith("."):
            problem = "the file name must not start with '.'"
        elif _CONTROL_CHARACTERS.search(file_name):
            problem = "the file name must not contain control characters"
        elif len(file_name.encode()) > MAX_FILE_NAME_LENGTH:
            problem = f"the file name must be at most {MAX_FILE_NAME_LENGTH} bytes"
    if problem is not None:
        raise _invalid(f"Invalid file parameter '{shown(key)}': {problem}")
    return path


def write_upload(name: str, files: Mapping[str, bytes]) -> tuple[Path, Path]:
    """Write uploaded files into a fresh private directory (blocking).

    Returns the model directory (``<private>/<name>``, so the directory still names
    the model) and the private directory to remove with the model."""
    private = Path(tempfile.mkdtemp(prefix="inferd-model-"))  # mode 0700, unique
    try:
        model_dir = private / name
        model_dir.mkdir()
        for path, content in files.items():
            version, file_name = path.split("/")
            (model_dir / version).mkdir(exist_ok=True)
            # O_EXCL | O_NOFOLLOW: a fresh file in a directory only this process made.
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
            descriptor = os.open(model_dir / version / file_name, flags, 0o600)
            with os.fdopen(descriptor, "wb") as output:
                output.write(content)
    except BaseException:
        shutil.rmtree(private, ignore_errors=True)
        raise
    return model_dir, private


class ModelControl:
    """The RPCs' side of model control, and the poll loop in poll mode."""

    def __init__(
        self,
        engine: EngineClient,
        repository: Path | None,
        mode: ModelControlMode = ModelControlMode.NONE,
        poll_interval_s: float = 15.0,
    ) -> None:
        if mode is ModelControlMode.POLL and not poll_interval_s > 0:
            raise ValueError(f"--repository-poll-secs must be > 0, got {poll_interval_s}")
        self._engine = engine
        self._repository = repository
        self.mode = mode
        self._poll_interval_s = poll_interval_s
        self._stamps: dict[str, int] = {}  # poll mode: each directory as last loaded
        self._stop = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None

    async def load(self, parsed: LoadRequest) -> None:
        """A RepositoryModelLoad, its parameters checked by the front door that got it."""
        if self.mode is not ModelControlMode.EXPLICIT:
            raise EngineError(ErrorCode.UNAVAILABLE, NOT_ALLOWED)
        validate_model_name(parsed.name)
        if parsed.files:
            model_dir, private = await asyncio.to_thread(write_upload, parsed.name, parsed.files)
            await self._engine.load_model(parsed.name, model_dir, parsed.config, private)
            return
        directory = self._repository_directory(parsed.name)
        await self._engine.load_model(parsed.name, directory, parsed.config)

    async def unload(self, name: str) -> None:
        """A RepositoryModelUnload, its parameters checked by the front door that got it."""
        if self.mode is not ModelControlMode.EXPLICIT:
            raise EngineError(ErrorCode.UNAVAILABLE, NOT_ALLOWED)
        validate_model_name(name)
        # inferd has no ensembles yet, so no model has dependents to unload with it.
        await self._engine.unload_model(name)

    def _repository_directory(self, name: str) -> Path:
        not_found = EngineError(
            ErrorCode.INTERNAL, f"failed to load '{name}', failed to poll from model repository"
        )
        if self._repository is None:
            raise not_found
        directory = self._repository / name
        root = self._repository.resolve()
        resolved = directory.resolve()
        if not resolved.is_relative_to(root) or resolved == root or not resolved.is_dir():
            logger.error("failed to poll model '%s': model not found in %s", name, root)
            raise not_found
        return directory

    # --- poll mode ---------------------------------------------------------------------

    async def start(self) -> None:
        """Before the engine loads the repository: remember each directory as it is, so a
        change made while the models load is seen by the first poll."""
        if self.mode is ModelControlMode.POLL and self._repository is not None:
            self._stamps = await asyncio.to_thread(self._scan)

    def start_polling(self) -> None:
        if self.mode is ModelControlMode.POLL and self._repository is not None:
            self._poller = asyncio.create_task(self._poll_loop(), name="inferd-repository-poll")

    async def stop(self) -> None:
        self._stop.set()
        if self._poller is not None:
            await self._poller
            self._poller = None

    def _scan(self) -> dict[str, int]:
        assert self._repository is not None
        if not self._repository.is_dir():
            return {}
        return {path.name: directory_stamp(path) for path in model_directories(self._repository)}

    async def _poll_loop(self) -> None:
        while True:
            # asyncio.TimeoutError: on Python 3.10 it is not yet the builtin TimeoutError.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._poll_interval_s)
                return
            try:
                await self.poll_once()
            except Exception:  # a bad poll must not end polling
                logger.exception("polling the model repository failed")

    async def poll_once(self) -> None:
        """Unload models whose directory went away; load new and changed ones."""
        assert self._repository is not None
        current = await asyncio.to_thread(self._scan)
        for name in sorted(set(self._stamps) - set(current)):
            logger.info("model '%s' left the repository: unloading it", name)
            del self._stamps[name]
            await self._engine.unload_model(name)
        for name, stamp in sorted(current.items()):
            if self._stamps.get(name) == stamp:
                continue
            self._stamps[name] = stamp  # a failed load is retried once the files change
            try:
                await self._engine.load_model(name, self._repository / name)
            except EngineError as exc:
                logger.error("%s", exc.message.strip())
