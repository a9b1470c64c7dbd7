"""Load from several processes, behind one interface whether there are one or many.

A single Python process tops out at a few thousand requests a second (the GIL, protobuf
and the event loop), less than a fast server can answer. ``WorkerPool`` splits a load
level across ``workers`` processes, each with its own event loop and ``LoadSession``,
runs their windows together and merges what they saw. With ``workers=1`` the session
runs in the calling process instead, with the same interface.

Processes are started with ``spawn``, before the parent touches gRPC in them, and talk
over a ``Pipe`` in the typed messages below and ``results`` values; nothing else is
pickled.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import signal
from collections.abc import Mapping
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from types import TracebackType
from typing import TypeVar

import numpy as np

from .load import LoadSession, LoadTotals
from .results import LoadLevel, LoadMode, WindowResult

_START_TIMEOUT_S = 60.0
_EXIT_TIMEOUT_S = 10.0
_RESULT_GRACE_S = 30.0  # beyond a window's duration and drain, before a worker counts as hung

MessageT = TypeVar("MessageT")


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """What each worker needs to build its ``LoadSession``."""

    address: str
    model: str
    inputs: Mapping[str, np.ndarray]
    version: str = ""
    channels: int = 1
    timeout: float | None = None
    max_outstanding: int = 16384
    drain_timeout_s: float = 5.0
    seed: int = 0
    streaming: bool = False
    decoupled: bool = False

    def session(self) -> LoadSession:
        return LoadSession(
            self.address,
            self.model,
            self.inputs,
            version=self.version,
            channels=self.channels,
            timeout=self.timeout,
            max_outstanding=self.max_outstanding,
            drain_timeout_s=self.drain_timeout_s,
            seed=self.seed,
            streaming=self.streaming,
            decoupled=self.decoupled,
        )


# Messages between the pool and its worker processes.


@dataclass(frozen=True, slots=True)
class _RunWindow:
    level: LoadLevel
    duration_s: float
    phase: float


@dataclass(frozen=True, slots=True)
class _GetTotals:
    pass


@dataclass(frozen=True, slots=True)
class _Close:
    pass


@dataclass(frozen=True, slots=True)
class _Ready:
    pass


@dataclass(frozen=True, slots=True)
class _Failed:
    """A worker's command raised: the error as text, since exceptions aren't pickled."""

    error: str


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop where it is installed, asyncio's otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def split_level(level: LoadLevel, workers: int) -> list[LoadLevel]:
    """``level`` shared by ``workers``: concurrency as evenly as whole numbers allow
    (some may get 0), a rate in equal parts."""
    if level.mode is LoadMode.CONCURRENCY:
        base, extra = divmod(int(level.value), workers)
        return [replace(level, value=base + (index < extra)) for index in range(workers)]
    return [replace(level, value=level.value / workers) for _ in range(workers)]


def merge_windows(results: list[WindowResult]) -> WindowResult:
    """Windows that ran side by side: counts add up, durations overlap (the longest)."""
    errors: dict[str, int] = {}
    for result in results:
        for name, count in result.errors.items():
            errors[name] = errors.get(name, 0) + count

    def joined(arrays: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(arrays) if arrays else np.empty(0, dtype=np.float64)

    return WindowResult(
        duration_s=max((result.duration_s for result in results), default=0.0),
        latencies_us=joined([result.latencies_us for result in results]),
        errors=errors,
        sent=sum(result.sent for result in results),
        late_sends=sum(result.late_sends for result in results),
        client_cpu_s=sum(result.client_cpu_s for result in results),
        first_response_us=joined([result.first_response_us for result in results]),
        inter_response_us=joined([result.inter_response_us for result in results]),
        responses=sum(result.responses for result in results),
    )


class _InProcessWorker:
    """The session on a private event loop in this process, driven one window at a time."""

    def __init__(self, config: SessionConfig) -> None:
        self._loop = new_event_loop()
        self._session = config.session()
        self._pending: _RunWindow | None = None

    def start_window(self, command: _RunWindow) -> None:
        self._pending = command

    def result(self, timeout: float) -> WindowResult:
        assert self._pending is not None, "start_window() first"
        command, self._pending = self._pending, None
        return self._loop.run_until_complete(
            self._session.window(command.level, command.duration_s, phase=command.phase)
        )

    def totals(self) -> LoadTotals:
        return self._session.totals

    def close(self) -> None:
        try:
            self._loop.run_until_complete(self._session.close())
        finally:
            self._loop.close()


class _ProcessWorker:
    """The session in a process of its own, driven over a pipe."""

    def __init__(self, context: multiprocessing.context.SpawnContext, config: SessionConfig):
        self._connection, child = context.Pipe()
        self._process: BaseProcess = context.Process(
            target=_serve, args=(child, config), name="inferd-bench-load", daemon=True
        )
        self._process.start()
        child.close()

    def wait_ready(self) -> None:
        self._receive(_Ready, _START_TIMEOUT_S)

    def start_window(self, command: _RunWindow) -> None:
        self._connection.send(command)

    def result(self, timeout: float) -> WindowResult:
        return self._receive(WindowResult, timeout)

    def totals(self) -> LoadTotals:
        self._connection.send(_GetTotals())
        return self._receive(LoadTotals, _RESULT_GRACE_S)

    def close(self) -> None:
        try:
            # A broken pipe means the worker has exited already.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                if self._process.is_alive():
                    self._connection.send(_Close())
        finally:
            self._connection.close()
            self._process.join(_EXIT_TIMEOUT_S)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
            self._process.close()

    def _receive(self, kind: type[MessageT], timeout: float) -> MessageT:
        # A worker that dies leaves EOF on the pipe; the timeout catches one that hangs.
        if not self._connection.poll(timeout):
            raise RuntimeError(f"a load worker sent no {kind.__name__} within {timeout:g} s")
        try:
            message = self._connection.recv()
        except EOFError:
            raise RuntimeError(
                f"a load worker exited unexpectedly (exit code {self._process.exitcode})"
            ) from None
        if isinstance(message, _Failed):
            raise RuntimeError(f"a load worker failed: {message.error}")
        if not isinstance(message, kind):
            raise RuntimeError(f"a load worker sent {type(message).__name__}, not {kind.__name__}")
        return message


def _serve(connection: Connection, config: SessionConfig) -> None:
    """A worker process: one session, commands in and results out until ``_Close``."""
    # Ctrl-C reaches the whole process group: the pool, not each worker, handles it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    loop = new_event_loop()
    try:
        session = config.session()
    except Exception as error:  # a configuration error, e.g. a malformed address
        connection.send(_Failed(f"{type(error).__name__}: {error}"))
        loop.close()
        connection.close()
        return
    try:
        connection.send(_Ready())
        while True:
            try:
                command = connection.recv()
            except EOFError:  # the pool has gone
                return
            if isinstance(command, _Close):
                return
            try:
                if isinstance(command, _RunWindow):
                    window = session.window(command.level, command.duration_s, phase=command.phase)
                    connection.send(loop.run_until_complete(window))
                elif isinstance(command, _GetTotals):
                    connection.send(session.totals)
                else:
                    connection.send(_Failed(f"unknown command {type(command).__name__}"))
            except Exception as error:
                connection.send(_Failed(f"{type(error).__name__}: {error}"))
    finally:
        loop.run_until_complete(session.close())
        loop.close()
        connection.close()


class WorkerPool:
    """``workers`` load processes (or this one, for ``workers=1``) on one model.

    Use as a context manager; ``close()`` stops every worker and waits for it.
    """

    def __init__(self, config: SessionConfig, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.config = config
        self._workers: list[_InProcessWorker | _ProcessWorker] = []
        if workers == 1:
            self._workers.append(_InProcessWorker(config))
            return
        context = multiprocessing.get_context("spawn")
        try:
            for index in range(workers):
                # Distinct seeds, so that Poisson arrivals are independent per worker.
                seeded = replace(config, seed=config.seed + index)
                self._workers.append(_ProcessWorker(context, seeded))
            for worker in self._workers:
                assert isinstance(worker, _ProcessWorker)
                worker.wait_ready()
        except BaseException:
            self.close()
            raise

    @property
    def workers(self) -> int:
        return len(self._workers)

    def run_window(self, level: LoadLevel, duration_s: float) -> WindowResult:
        """Offer ``level``, split across the workers, for ``duration_s`` seconds."""
        shares = split_level(level, len(self._workers))
        running = []
        for index, (worker, share) in enumerate(zip(self._workers, shares, strict=True)):
            if share.value <= 0:
                continue  # fewer requests outstanding than workers
            # Constant-rate workers take turns, rather than all sending at once.
            worker.start_window(_RunWindow(share, duration_s, phase=index / len(shares)))
            running.append(worker)
        timeout = duration_s + self.config.drain_timeout_s + _RESULT_GRACE_S
        results, failures = [], []
        for worker in running:  # every result is read, so that no pipe is left behind
            try:
                results.append(worker.result(timeout))
            except RuntimeError as error:
                failures.append(error)
        if failures:
            raise failures[0]
        return merge_windows(results)

    def totals(self) -> LoadTotals:
        """Every request the workers issued so far, settled after each window."""
        total = LoadTotals()
        for worker in self._workers:
            total = total + worker.totals()
        return total

    def close(self) -> None:
        workers, self._workers = self._workers, []
        for worker in workers:
            worker.close()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
