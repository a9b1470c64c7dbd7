"""``inferd serve --frontends N`` (N >= 2): the supervisor process.

It holds no models, no CUDA and no gRPC server. It starts one engine process and N
front processes (``spawn``: nothing inherited but arguments), holds the gRPC port for
the server's whole life (so a restarted front gets it back, and ``--grpc-port 0``
resolves once), restarts whatever dies, and owns the shutdown order: front processes
drain first, then the engine, then every shared-memory segment is unlinked. Children
die with it (PR_SET_PDEATHSIG), and segments a crashed run left behind are removed at
start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import msgspec

from inferd.server.config import ServerConfig
from inferd.server.engine_host import check_switch_interval, resolve_repository, tracing_from_config
from inferd.server.ipc.engine_process import EngineRuntime, engine_main
from inferd.server.ipc.events import FrontReady, receive_event
from inferd.server.ipc.front_process import FrontRuntime, front_main
from inferd.server.ipc.ring import SHM_DIRECTORY, remove_segments, remove_stale_segments
from inferd.server.model_control import ModelControlMode, startup_models

logger = logging.getLogger("inferd.supervisor")

# A child that dies sooner than this after its start is restarted after a growing delay.
_STABLE_AFTER_S = 10.0
_MAX_BACKOFF_S = 10.0
_ENGINE_STOP_S = 40.0  # the engine's own drain (30 s for replaced models) and then some


@dataclass
class _Child:
    role: str  # "engine" or "front N"
    process: BaseProcess | None = None
    events: Connection | None = None
    started_at: float = 0.0
    incarnation: int = 0  # the engine's generation, a front's epoch
    backoff_s: float = 0.0
    restart_at: float | None = None  # when a dead child is due to start again
    ready: bool = False


def check_config(config: ServerConfig) -> ServerConfig:
    """Refuse, before starting anything, what the front processes cannot do; returns the
    config the children get (the repository resolved)."""
    if config.frontends < 2:
        raise ValueError("the supervisor runs 2 or more front processes")
    if config.grpc_port is None or config.unix_socket is not None:
        raise ValueError(
            "--unix-socket serves from one process: a Unix socket cannot be shared between "
            "front processes (use --frontends 1)"
        )
    if config.grpc_front == "threads":
        raise ValueError(
            "--grpc-front threads serves from one process (its handler threads run requests "
            "on the engine in that process): with --frontends N use --grpc-front asyncio"
        )
    check_switch_interval(config)
    _check_shm_room(config.frontends * 2 * config.ring_bytes)
    startup_models(ModelControlMode(config.model_control_mode), config.load_models)
    tracing = tracing_from_config(config)  # a missing extra fails here, not in a restart loop
    if tracing is not None:
        tracing.shutdown()
    return _with_repository(config)


def _check_shm_room(needed: int) -> None:
    """Fail at start, not in a loop of fronts the engine cannot give rings to."""
    stats = os.statvfs(SHM_DIRECTORY)
    free = stats.f_bavail * stats.f_frsize
    if needed > free:
        raise ValueError(
            f"the front processes' rings need {needed // 2**20} MiB in {SHM_DIRECTORY}, "
            f"which has {free // 2**20} MiB free: lower --frontend-ring-mib or --frontends, "
            "or give it more room (in a container: docker run --shm-size=...)"
        )


def _with_repository(config: ServerConfig) -> ServerConfig:
    return dataclasses.replace(config, model_repository=resolve_repository(config))


def _reserve_port(host: str, port: int) -> socket.socket:
    """Bind (never listen on) the port with SO_REUSEPORT: front processes join it, no
    other program can take it between their restarts, and port 0 picks one for all.

    First a plain bind: SO_REUSEPORT alone would let this server quietly share a port
    another server (of the same user) already serves, as single-process mode refuses to."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as probe:
        try:
            probe.bind(address)
        except OSError as exc:
            raise OSError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        address = probe.getsockname()  # port 0: the one the system chose
    reservation = socket.socket(family, kind, proto)
    reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        reservation.bind(address)
    except OSError as exc:
        reservation.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return reservation


class Supervisor:
    def __init__(self, config: ServerConfig) -> None:
        self.config = check_config(config)
        self._context = multiprocessing.get_context("spawn")
        self._pid = os.getpid()
        self._stopping = False
        self._signals = 0
        self._engine = _Child("engine")
        self._fronts = [_Child(f"front {index}") for index in range(config.frontends)]
        # Which fronts listen on the shared port, one slot each: a draining front
        # answers its held refusals only once none does (inferd.server.grpc.drain).
        self._listening = self._context.Array("b", config.frontends)
        self._announced = False
        self._engine_ever_ready = False
        self._exit_code = 0

    def run(self) -> int:
        removed = remove_stale_segments()
        if removed:
            logger.info("removed %d shared-memory segment(s) left by a crashed run", len(removed))
        reservation = _reserve_port(self.config.host, self.config.grpc_port or 0)
        self._port = reservation.getsockname()[1]
        self._runtime_dir = Path(tempfile.mkdtemp(prefix="inferd-"))
        self._socket_path = self._runtime_dir / "engine.sock"
        wake_read, wake_write = socket.socketpair()
        wake_write.setblocking(False)
        signal.set_wakeup_fd(wake_write.fileno())
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._on_signal)
        try:
            self._start(self._engine)
            for front in self._fronts:
                self._start(front)
            while not self._stopping:
                self._watch(wake_read)
            self._shutdown()
        finally:
            signal.set_wakeup_fd(-1)
            wake_read.close()
            wake_write.close()
            self._kill_all()
            remove_segments(self._pid)
            shutil.rmtree(self._runtime_dir, ignore_errors=True)
            reservation.close()
        logger.info("stopped")
        return self._exit_code

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals += 1
        if self._signals > 1:
            logger.warning("second %s: stopping every process now", signal.Signals(signum).name)
            self._kill_all()
            remove_segments(self._pid)
            shutil.rmtree(self._runtime_dir, ignore_errors=True)
            os._exit(1)
        logger.info(
            "%s: draining front processes (up to %.0fs), then the engine",
            signal.Signals(signum).name,
            self.config.grace_period_s,
        )
        self._stopping = True

    # --- children ------------------------------------------------------------------------

    def _start(self, child: _Child) -> None:
        child.incarnation += 1
        receive, send = self._context.Pipe(duplex=False)
        if child is self._engine:
            runtime: object = EngineRuntime(
                self._socket_path, self._pid, child.incarnation, self.config.ring_bytes
            )
            target = engine_main
        else:
            front_id = self._fronts.index(child)
            runtime = FrontRuntime(
                self._socket_path,
                self._pid,
                front_id,
                child.incarnation,
                self._port,
                self._listening,
            )
            target = front_main  # type: ignore[assignment]
        process = self._context.Process(
            target=target,
            args=(self.config, runtime, send),
            name=f"inferd {child.role}",
            daemon=False,
        )
        process.start()
        send.close()
        child.process, child.events = process, receive
        child.started_at, child.restart_at, child.ready = time.monotonic(), None, False

    def _watch(self, wake: socket.socket) -> None:
        handles: dict[Any, _Child] = {}
        for child in (self._engine, *self._fronts):
            if child.process is not None:
                handles[child.process.sentinel] = child
                if child.events is not None:
                    handles[child.events] = child
        due = [c.restart_at for c in (self._engine, *self._fronts) if c.restart_at is not None]
        timeout = max(0.0, min(due) - time.monotonic()) if due else None
        for handle in wait([*handles, wake], timeout):
            if handle is wake:
                wake.recv(64)  # a signal: _on_signal already ran
                continue
            child = handles[handle]
            if isinstance(handle, Connection):
                self._event(child, handle)
            elif child.process is not None and not child.process.is_alive():
                self._exited(child)
        now = time.monotonic()
        for child in (self._engine, *self._fronts):
            if child.restart_at is not None and child.restart_at <= now and not self._stopping:
                self._start(child)

    def _event(self, child: _Child, events: Connection) -> None:
        try:
            event = receive_event(events)
        except (EOFError, OSError):  # it exited: its sentinel reports that
            child.events = None
            return
        except msgspec.DecodeError:  # a bug in the child: its health says the rest
            logger.exception("%s sent an event that does not decode", child.role)
            return
        child.ready = True
        if child is self._engine:
            self._engine_ever_ready = True
            if child.incarnation > 1:
                logger.info("engine process serving again (generation %d)", child.incarnation)
            return
        if self._announced:
            logger.info("%s serving again (epoch %d)", child.role, child.incarnation)
        elif all(front.ready for front in self._fronts) and isinstance(event, FrontReady):
            self._announced = True
            logger.info("listening on %s:%d", self._shown_host(), self._port)
            logger.info(
                "ready: %d front processes, %d model version(s) serving, %d failed to load",
                len(self._fronts),
                event.serving,
                event.failed,
            )

    def _shown_host(self) -> str:
        host = self.config.host
        return f"[{host}]" if ":" in host else host

    def _exited(self, child: _Child) -> None:
        assert child.process is not None
        code = child.process.exitcode
        child.process.join()
        child.process, child.events, child.ready = None, None, False
        if child in self._fronts:
            self._listening[self._fronts.index(child)] = 0  # it may have died listening
        if self._stopping:
            return
        ran_s = time.monotonic() - child.started_at
        child.backoff_s = (
            0.0 if ran_s > _STABLE_AFTER_S else min(max(2 * child.backoff_s, 0.5), _MAX_BACKOFF_S)
        )
        if child is self._engine:
            # Its rings go with it; front processes already failed what was in flight.
            remove_segments(self._pid, f"e{child.incarnation}-")
            if not self._engine_ever_ready or self.config.exit_on_engine_failure:
                logger.error("engine process exited (code %s): stopping the server", code)
                self._exit_code = 1
                self._stopping = True
                return
        logger.error(
            "%s exited (code %s): restarting it in %.1fs", child.role, code, child.backoff_s
        )
        child.restart_at = time.monotonic() + child.backoff_s

    # --- stopping ------------------------------------------------------------------------

    def _shutdown(self) -> None:
        """Front processes drain (health NOT_SERVING, in-flight requests finish), then the
        engine finishes and releases its models."""
        for front in self._fronts:
            if front.process is not None and not front.ready:
                front.process.kill()  # never served (still waiting for the engine): no drain
        fronts = [front.process for front in self._fronts if front.process is not None]
        self._stop(fronts, self.config.grace_period_s + 5.0)
        if self._engine.process is not None:
            self._stop([self._engine.process], _ENGINE_STOP_S)

    @staticmethod
    def _stop(processes: list[BaseProcess], timeout_s: float) -> None:
        for process in processes:
            if process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                logger.warning("%s did not stop in %.0fs: killing it", process.name, timeout_s)
                process.kill()
                process.join()

    def _kill_all(self) -> None:
        for child in (self._engine, *self._fronts):
            if child.process is not None and child.process.is_alive():
                child.process.kill()
