"""Draining the gRPC front door without losing a request.

gRPC core holds the calls it has received and the Python server has not taken yet,
and when a server stops, core cancels exactly those: their clients read CANCELLED,
which no retry policy retries, for requests inferd never saw. Under load most calls
in flight wait there (measured: 59 of 64 on one core). So the drain runs in steps,
and gRPC's own stop comes last:

1. The server keeps taking calls. Those core had received when the drain began run as
   usual: channelz says how many calls core had started and not finished; less those
   this process runs, that is how many core holds, and core hands calls over in the
   order they arrived, so they are the next that many taken. Inference and
   model-control calls taken after those are refused with UNAVAILABLE, with no work
   done: a retry policy or load balancer sends them elsewhere. Health, readiness and
   metadata keep answering (NOT_SERVING, not ready).
2. Once nothing runs (or the grace period is over) and no call has reached core for a
   moment, gRPC's stop: GOAWAY, listeners closed; what still runs (an open stream)
   gets what is left of the grace period.

A refused call is held until no front of the server listens any more (at most
``PARK_S``), then answered. Answered at once, its client would send the next call
straight away, and a call that reaches core in the instant before the stop is
cancelled by core (it kills pending calls before it sends GOAWAY): with the refusals
held, a closed loop of clients has nothing in flight toward core when it stops. Several
front processes share one port (``--frontends N``): a refusal answered while another
front still listened would send its retry there, into that front's stop, so each
waits for all (``FrontListeners``). A retry then finds no listener: UNAVAILABLE again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from multiprocessing.sharedctypes import SynchronizedArray
from typing import NoReturn

import grpc
from grpc._cython import cygrpc  # type: ignore[attr-defined]  # channelz has no public API

logger = logging.getLogger("inferd.server")

DRAINING_MESSAGE = "inferd is shutting down and takes no new requests: retry on another server"

_TICK_S = 0.01  # how often the drain looks
# How long no call may reach core, with nothing running, before the server stops: a
# client answered just now sends its next call within this (a Python client on a busy
# machine took over 10 ms), and that call is then held as a refusal, not cancelled.
QUIET_S = 0.1
# How long the server waits for such a pause once nothing runs: clients that send at a
# fixed rate never pause, and some of their calls are cancelled by core's stop.
SETTLE_S = 2.0
# The longest a refused call is held before its answer (see the module's docstring).
PARK_S = 1.0


class FrontListeners:
    """Which fronts of this server listen on its port: this process alone, or one slot
    each in shared memory when several share the port (``--frontends N``; the
    supervisor clears the slot of a front that died)."""

    def __init__(self, slots: SynchronizedArray[int] | None = None, index: int = 0) -> None:
        self._slots = slots
        self._index = index
        self._listening = False  # this process alone

    def set(self, listening: bool) -> None:
        if self._slots is None:
            self._listening = listening
        else:
            self._slots[self._index] = int(listening)

    def any(self) -> bool:
        if self._slots is None:
            return self._listening
        return any(self._slots[:])


class DrainGate:
    """Which calls a draining front still runs. Before a drain it costs one attribute
    read per call (``draining``); no interceptor, which would cost ~5% of a small
    request's throughput."""

    def __init__(self, listeners: FrontListeners) -> None:
        self.listeners = listeners
        self.draining = False
        self.server_id: int | None = None  # the server's channelz id
        self._admit = 0  # calls core held, not yet taken, when the drain began
        self._taken = 0  # refusable calls taken while draining
        self._lock = threading.Lock()  # the threads front admits from handler threads
        # No front of this server listens any more: answer the held refusals (held on the
        # loop, or on handler threads for the threads front).
        self._stopping = asyncio.Event()
        self._stopping_threads = threading.Event()

    def admits(self) -> bool:
        """For a refusable call taken while draining: does it run? Core hands calls
        over in the order they arrived, so the first ones taken are those it held."""
        with self._lock:
            self._taken += 1
            if self._admit > 0:
                self._admit -= 1
                return True
            return False

    async def refuse(self, context: grpc.aio.ServicerContext) -> NoReturn:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), PARK_S)
        await context.abort(grpc.StatusCode.UNAVAILABLE, DRAINING_MESSAGE)
        raise AssertionError("abort raises")  # for type checkers: abort never returns

    def refuse_blocking(self, context: grpc.ServicerContext) -> NoReturn:
        """``refuse`` on a handler thread of grpc's synchronous server."""
        self._stopping_threads.wait(PARK_S)
        context.abort(grpc.StatusCode.UNAVAILABLE, DRAINING_MESSAGE)
        raise AssertionError("abort raises")

    def begin(self, in_progress: int) -> None:
        """The drain begins, with ``in_progress`` requests running."""
        self.draining = True
        counts = _call_counts(self.server_id)
        if counts is None:  # no channelz: refuse all that has not been taken yet
            logger.warning("channelz unavailable: calls not yet taken are refused")
            return
        # Calls core started and has not finished, less those this process runs: what
        # core holds for it. Calls taken but not yet counted as running (a health watch,
        # a stream between requests) make this larger: a few more run, none is refused.
        self._admit = max(0, counts.started - counts.finished - in_progress)
        logger.info("draining: %d call(s) received and not yet taken will run", self._admit)

    async def wait(self, in_progress: Callable[[], int], deadline: float) -> None:
        """Until nothing runs and no call has reached core for ``QUIET_S``, or nothing
        has run for ``SETTLE_S`` while calls keep coming (clients that never pause), or
        the deadline (``time.monotonic()``)."""
        last: int | None = None
        quiet_since = idle_since = time.monotonic()
        while (now := time.monotonic()) < deadline:
            counts = _call_counts(self.server_id)
            # Without channelz, the calls taken here stand in for those core received.
            started = counts.started if counts is not None else self._taken
            if started != last:
                last, quiet_since = started, now
            if in_progress():
                idle_since = now
            elif now - quiet_since >= QUIET_S or now - idle_since >= SETTLE_S:
                return
            await asyncio.sleep(_TICK_S)

    async def stop(self, stop: Callable[[float], Awaitable[None]], grace_s: float) -> None:
        """gRPC's stop (``stop(grace_s)``: GOAWAY first); the held refusals are
        answered once no front of this server listens."""
        stopping = asyncio.ensure_future(stop(grace_s))
        await asyncio.sleep(_TICK_S)  # core has begun its shutdown: GOAWAY is on its way
        self.listeners.set(False)
        release_by = time.monotonic() + PARK_S
        while self.listeners.any() and time.monotonic() < release_by:
            await asyncio.sleep(_TICK_S)
        self._stopping.set()
        self._stopping_threads.set()
        await stopping


@dataclass(frozen=True, slots=True)
class _CallCounts:
    started: int
    finished: int  # succeeded or failed


def newest_server_id() -> int | None:
    """The channelz id of the gRPC server created last in this process: call it right
    after creating one (channelz names listeners by the address asked for, port 0
    included, so the id is what finds a server again)."""
    try:
        newest, start = None, 0
        while True:
            page = json.loads(cygrpc.channelz_get_servers(start))
            for server in page.get("server", []):
                newest = max(newest or 0, int(server["ref"]["serverId"]))
            if page.get("end", True) or newest is None:
                return newest
            start = newest + 1
    except Exception:  # channelz off, or its format changed: the drain falls back
        logger.debug("channelz lookup failed", exc_info=True)
        return None


def _call_counts(server_id: int | None) -> _CallCounts | None:
    """Calls gRPC core has started and finished on that server, or None when channelz
    cannot tell."""
    if server_id is None:
        return None
    try:
        data = json.loads(cygrpc.channelz_get_server(server_id))["server"].get("data", {})
        return _CallCounts(
            int(data.get("callsStarted", 0)),
            int(data.get("callsSucceeded", 0)) + int(data.get("callsFailed", 0)),
        )
    except Exception:
        logger.debug("channelz lookup failed", exc_info=True)
        return None
