"""One process's load: a closed or open loop of inference requests over a few channels,
measured in windows.

Closed loop (``LoadMode.CONCURRENCY``): ``N`` tasks each keep one request outstanding;
latency runs from the send to the answer.

Open loop (``LoadMode.RATE``): sends follow a schedule fixed from the window's start
(every ``1/rate`` seconds, or Poisson arrivals), each as its own task whatever earlier
requests are doing, so a slow server cannot slow the load down (no coordinated omission).
Latency runs from the *scheduled* send time, not the actual one: when the loop itself
falls behind, that delay is part of what a user would have waited and shows up in the
latencies, as in wrk2 and other coordinated-omission-free tools; ``late_sends`` counts
the sends that started more than a millisecond behind schedule. (A timer that fires
early, as uvloop's millisecond timers do, sends early and is timed from the actual send.)

With ``streaming``, requests go over ``ModelStreamInfer`` (one stream per channel, see
``streams.py``) instead of unary ``ModelInfer``, in either loop. A request to a
decoupled model completes at its final response; its latency runs to that response, and
the window also records the time to its first response and the gaps between responses.

A window counts what *completes* inside it. Requests still outstanding at its end are
awaited (up to ``drain_timeout_s``) so that the next window starts clean, but they count
only in ``LoadSession.totals``, the session's exact lifetime tally, which is what to
compare with the server's own statistics.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import TracebackType

import numpy as np

from inferd.clients import AsyncClient, InferdError

from .measure import stream_timing
from .results import Distribution, LoadLevel, LoadMode, WindowResult
from .streams import RequestStream, StreamedRequest

LATE_SEND_S = 1e-3
BACKLOG_ERROR = "CLIENT_BACKLOG"
"""The error name of an open-loop send refused because ``max_outstanding`` were in flight."""


@dataclass(slots=True)
class LoadTotals:
    """Every request a session issued over its life, drains included: exact counts."""

    issued: int = 0
    succeeded: int = 0
    failed: int = 0
    abandoned: int = 0  # still outstanding after a drain, cancelled: the server may have run it
    refused: int = 0  # open-loop sends never issued because of ``max_outstanding``

    def __add__(self, other: LoadTotals) -> LoadTotals:
        return LoadTotals(
            self.issued + other.issued,
            self.succeeded + other.succeeded,
            self.failed + other.failed,
            self.abandoned + other.abandoned,
            self.refused + other.refused,
        )


@dataclass(slots=True)
class _Window:
    """One window's tally while it runs."""

    end: float
    latencies_us: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    sent: int = 0
    late_sends: int = 0
    first_response_us: list[float] = field(default_factory=list)
    inter_response_us: list[float] = field(default_factory=list)
    responses: int = 0

    def error(self, name: str) -> None:
        self.errors[name] = self.errors.get(name, 0) + 1


def send_offsets(
    rate: float,
    distribution: Distribution,
    duration_s: float,
    rng: random.Random,
    phase: float = 0.0,
) -> Iterator[float]:
    """Seconds from a window's start at which to send, up to ``duration_s``.

    Constant: every ``1/rate`` seconds from ``phase/rate`` (``phase`` in [0, 1) lets
    several processes at the same rate interleave instead of sending together).
    Poisson: exponential gaps of mean ``1/rate`` drawn from ``rng``.
    """
    if not rate > 0 or math.isinf(rate):
        raise ValueError(f"an open loop needs a finite rate above 0 requests/s, got {rate}")
    if distribution is Distribution.CONSTANT:
        count = 0
        while (offset := (count + phase) / rate) < duration_s:
            yield offset
            count += 1
        return
    offset = rng.expovariate(rate)
    while offset < duration_s:
        yield offset
        offset += rng.expovariate(rate)


class LoadSession:
    """Requests for one model over ``channels`` connections, measured in windows.

    ``timeout`` (seconds) bounds each request, so a hung server turns into
    DEADLINE_EXCEEDED errors rather than a hang. ``max_outstanding`` bounds the open
    loop's requests in flight; a send beyond it is not made and counts as a
    ``CLIENT_BACKLOG`` error. ``seed`` drives Poisson arrivals, continuing across windows.
    ``streaming`` sends over ``ModelStreamInfer``; ``decoupled`` (which needs it) also
    records the times of each request's responses.

    A window's ``sent`` counts every send its loop made, refused ones included, so
    ``sent - completed`` is what was still outstanding when it ended.
    """

    def __init__(
        self,
        address: str,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        version: str = "",
        channels: int = 1,
        timeout: float | None = None,
        max_outstanding: int = 16384,
        drain_timeout_s: float = 5.0,
        seed: int = 0,
        streaming: bool = False,
        decoupled: bool = False,
    ) -> None:
        if channels < 1:
            raise ValueError(f"channels must be at least 1, got {channels}")
        if max_outstanding < 1:
            raise ValueError(f"max_outstanding must be at least 1, got {max_outstanding}")
        if decoupled and not streaming:
            raise ValueError(f"model '{model}' is decoupled: it answers only over a stream")
        self.model = model
        self.version = version
        self.inputs = dict(inputs)
        self.max_outstanding = max_outstanding
        self.drain_timeout_s = drain_timeout_s
        self.timeout = timeout
        self.decoupled = decoupled
        # gRPC shares one connection between channels with equal target and arguments;
        # a local subchannel pool gives each client a TCP connection of its own.
        own_connection = [("grpc.use_local_subchannel_pool", 1)]
        self._clients = [
            AsyncClient(address, timeout=timeout, channel_options=own_connection)
            for _ in range(channels)
        ]
        self._streams = [
            RequestStream(client, model, self.inputs, version=version, decoupled=decoupled)
            for client in self._clients
            if streaming
        ]
        self._rng = random.Random(seed)
        self._totals = LoadTotals()

    @property
    def totals(self) -> LoadTotals:
        """A copy of the lifetime tally: after a window every request issued is settled."""
        return replace(self._totals)

    async def __aenter__(self) -> LoadSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        for stream in self._streams:
            await stream.close()
        for client in self._clients:
            await client.close()

    async def window(
        self, level: LoadLevel, duration_s: float, *, phase: float = 0.0
    ) -> WindowResult:
        """Offer ``level`` for ``duration_s`` seconds and report what completed.

        ``phase`` shifts a constant-rate schedule by that fraction of its interval.
        """
        if duration_s <= 0:
            raise ValueError(f"a window needs a duration above 0 s, got {duration_s}")
        cpu_before = time.process_time()
        start = time.perf_counter()
        tally = _Window(end=start + duration_s)
        tasks: set[asyncio.Task[None]] = set()
        try:
            if level.mode is LoadMode.CONCURRENCY:
                self._closed_loop(int(level.value), tally, tasks)
            else:
                offsets = send_offsets(
                    level.value, level.distribution, duration_s, self._rng, phase
                )
                await self._open_loop(start, offsets, tally, tasks)
            await asyncio.sleep(max(0.0, tally.end - time.perf_counter()))
            client_cpu_s = time.process_time() - cpu_before
            await self._drain(tasks)
        finally:
            for task in tasks:  # only when the window itself was cancelled
                task.cancel()
        return WindowResult(
            duration_s=duration_s,
            latencies_us=np.array(tally.latencies_us, dtype=np.float64),
            errors=tally.errors,
            sent=tally.sent,
            late_sends=tally.late_sends,
            client_cpu_s=client_cpu_s,
            first_response_us=np.array(tally.first_response_us, dtype=np.float64),
            inter_response_us=np.array(tally.inter_response_us, dtype=np.float64),
            responses=tally.responses,
        )

    def _closed_loop(
        self, concurrency: int, tally: _Window, tasks: set[asyncio.Task[None]]
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"a closed loop needs a concurrency of at least 1, got {concurrency}")

        async def keep_one_outstanding(channel: int) -> None:
            while (sent_at := time.perf_counter()) < tally.end:
                tally.sent += 1
                await self._request(channel, sent_at, tally)

        for index in range(concurrency):
            tasks.add(asyncio.ensure_future(keep_one_outstanding(index)))

    async def _open_loop(
        self,
        start: float,
        offsets: Iterator[float],
        tally: _Window,
        outstanding: set[asyncio.Task[None]],
    ) -> None:
        for index, offset in enumerate(offsets):
            scheduled = start + offset
            # Sleep even when due (sleep(0)) so that sends behind schedule still let
            # answers in between them.
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            now = time.perf_counter()
            if now - scheduled > LATE_SEND_S:
                tally.late_sends += 1
            tally.sent += 1
            if len(outstanding) >= self.max_outstanding:
                tally.error(BACKLOG_ERROR)
                self._totals.refused += 1
                continue
            # Timers may fire early (uvloop's have millisecond resolution): such a send
            # is timed from when it went, so that its latency is never shortened.
            began = max(scheduled, now)
            task = asyncio.ensure_future(self._request(index, began, tally))
            outstanding.add(task)
            task.add_done_callback(outstanding.discard)

    async def _request(self, channel: int, began: float, tally: _Window) -> None:
        """One request on ``channel``; counted in ``tally`` if it completes before the
        window ends."""
        self._totals.issued += 1
        failure: str | None = None
        streamed: StreamedRequest | None = None
        try:
            if self._streams:
                streamed = await self._streams[channel % len(self._streams)].infer(self.timeout)
            else:
                await self._client(channel).infer(self.model, self.inputs, version=self.version)
        except InferdError as error:
            failure = error.code.name
        except Exception as error:  # a client-side failure is a result too, never a crash
            failure = type(error).__name__
        # A streamed request ends when its final response was read, not when this task
        # next runs.
        finished = streamed.finished if streamed is not None else time.perf_counter()
        if failure is not None:
            self._totals.failed += 1
            if finished <= tally.end:
                tally.error(failure)
            return
        self._totals.succeeded += 1
        if finished > tally.end:
            return
        if streamed is None or not self.decoupled:
            tally.latencies_us.append((finished - began) * 1e6)
            return
        timing = stream_timing(began, streamed.response_times, streamed.finished)
        tally.latencies_us.append(timing.latency_us)
        if timing.first_response_us is not None:
            tally.first_response_us.append(timing.first_response_us)
        tally.inter_response_us.extend(timing.inter_response_us)
        tally.responses += len(streamed.response_times)

    async def _drain(self, tasks: set[asyncio.Task[None]]) -> None:
        """Await the window's requests still in flight; cancel those past the timeout."""
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=self.drain_timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        self._totals.abandoned += len(pending)

    def _client(self, index: int) -> AsyncClient:
        return self._clients[index % len(self._clients)]
