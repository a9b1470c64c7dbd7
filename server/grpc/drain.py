"""Draining the gRPC front door without losing a request.

gRPC core holds the calls it has received and the Python server has not taken yet,
and when a server stops, core cancels exactly those: their clients read CANCELLED,
which no retry policy retries, for requests inferd never saw. Under load most calls
in flight wait there (measured: 59 of 64 on one core). So the drain runs in steps,
and gRPC's own stop comes last:

1. The server keeps taking calls. Those core had received when the drain began run as
   usual: channelz says how many calls core had started, and calls are taken in the
   order they arrived, so they are the first that many taken since the server started.
   Inference and model-control calls taken after those are refused with UNAVAILABLE,
   with no work done: a retry policy or load balancer sends them elsewhere. Health,
   readiness and metadata keep answering (NOT_SERVING, not ready).
2. Once the admitted calls are answered (or the grace period is over) and no call has
   come for a moment, gRPC's stop: GOAWAY, listeners closed; what still runs (an open
   stream) gets what is left of the grace period.

A refused call is held until that stop has begun (at most ``PARK_S``), then answered.
Answered at once, its client would send the next call straight away, and a call that
reaches core in the instant before the stop is cancelled by core (it kills pending
calls before it sends GOAWAY): with the refusals held, a closed loop of clients has
nothing in flight toward core when it stops. The refusal comes after the GOAWAY, so a
client's retry opens a new connection, which finds no listener: UNAVAILABLE again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc._cython import cygrpc  # type: ignore[attr-defined]  # channelz has no public API

logger = logging.getLogger("inferd.server")

_SERVICE = "/inference.GRPCInferenceService/"
# What a draining server refuses: work on a model, and changes to what it holds.
REFUSED_WHILE_DRAINING = frozenset(
    _SERVICE + name
    for name in (
        "ModelInfer",
        "ModelStreamInfer",
        "RepositoryModelLoad",
        "RepositoryModelUnload",
        "SystemSharedMemoryRegister",
        "CudaSharedMemoryRegister",
    )
)
DRAINING_MESSAGE = "inferd is shutting down and takes no new requests: retry on another server"

# A poll's length: the loop takes a waiting call within microseconds when it is idle,
# so a tick in which no call was taken means core holds none.
_TICK_S = 0.01
# The longest a refused call is held before its answer (see the module's docstring).
PARK_S = 1.0


class DrainGate(grpc.aio.ServerInterceptor):
    """Sees every call the server takes from core, in order; once a drain has begun,
    refuses what arrived after it."""

    def __init__(self) -> None:
        self.taken = 0  # calls taken since the server started, of every method
        self._admit_through: int | None = None  # draining: calls up to this one run
        self._stopping = asyncio.Event()  # the server's stop has begun: answer refusals
        # No deserializer: a refused call's request stays bytes, never parsed.
        self._refuse_unary: grpc.RpcMethodHandler[Any, Any] = grpc.unary_unary_rpc_method_handler(
            self._refuse
        )
        self._refuse_stream: grpc.RpcMethodHandler[Any, Any] = (
            grpc.stream_stream_rpc_method_handler(self._refuse)
        )

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        self.taken += 1
        admit_through = self._admit_through
        if admit_through is not None and self.taken > admit_through:
            method = handler_call_details.method  # type: ignore[attr-defined]
            if method in REFUSED_WHILE_DRAINING:
                return self._refuse_stream if method.endswith("StreamInfer") else self._refuse_unary
        return await continuation(handler_call_details)

    async def _refuse(self, request: object, context: grpc.aio.ServicerContext) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), PARK_S)
        await context.abort(grpc.StatusCode.UNAVAILABLE, DRAINING_MESSAGE)

    def begin(self, addresses: list[str]) -> None:
        """The drain begins: admit the calls core has received so far on the server
        listening on ``addresses`` (as bound: "host:port", "unix:path")."""
        received = _calls_received(addresses)
        if received is None:  # no channelz: refuse all that has not been taken yet
            logger.warning("channelz unavailable: calls not yet taken are refused")
            received = self.taken
        self._admit_through = max(received, self.taken)
        logger.info(
            "draining: %d call(s) received and not yet taken will run",
            self._admit_through - self.taken,
        )

    async def wait(self, in_progress: Callable[[], int], deadline: float) -> None:
        """Until every admitted call is answered and no call came for a tick (then core
        holds none), or the deadline (``time.monotonic()``)."""
        assert self._admit_through is not None, "begin() first"
        last = -1
        while time.monotonic() < deadline:
            quiet = self.taken == last
            last = self.taken
            if quiet and in_progress() == 0:
                return
            await asyncio.sleep(_TICK_S)

    async def stop(self, server: grpc.aio.Server, grace_s: float) -> None:
        """gRPC's stop (GOAWAY first), then the held refusals are answered."""
        stopping = asyncio.ensure_future(server.stop(grace_s))
        await asyncio.sleep(_TICK_S)  # core has begun its shutdown: GOAWAY is on its way
        self._stopping.set()
        await stopping


def _calls_received(addresses: list[str]) -> int | None:
    """Calls gRPC core has started on the server listening on ``addresses``
    (channelz), or None when channelz cannot tell."""
    # Channelz names a listener "chttp2 listener ipv4:127.0.0.1:8001" or "... unix:/path".
    suffixes = tuple(
        address if address.startswith("unix:") else ":" + address.rsplit(":", 1)[1]
        for address in addresses
    )
    try:
        start = 0
        while True:
            page = json.loads(cygrpc.channelz_get_servers(start))
            for server in page.get("server", []):
                names = [socket.get("name", "") for socket in server.get("listenSocket", [])]
                if any(name.endswith(suffixes) for name in names):
                    return int(server.get("data", {}).get("callsStarted", 0))
                start = max(start, int(server["ref"]["serverId"]) + 1)
            if page.get("end", True):
                return None
    except Exception:  # channelz off, or its format changed: the caller falls back
        logger.debug("channelz lookup failed", exc_info=True)
        return None
