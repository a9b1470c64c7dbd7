"""inferd.bench.load and .workers: the schedule and the merging on their own, then closed
and open loops against a real server, checked against the server's own statistics.

Windows are short and nothing asserts a speed: counts that the schedule or the server
decide are exact, and only those are compared.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from inferd.bench.load import LoadSession, LoadTotals, send_offsets
from inferd.bench.results import Distribution, LoadLevel, LoadMode, WindowResult
from inferd.bench.workers import SessionConfig, WorkerPool, merge_windows, split_level
from inferd.protos import grpc_service_pb2 as pb
from inferd.protos.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from tests.support.server_process import ServerProcess
from tests.support.waiting import wait_until

MODEL = "identity_fp32"
INPUTS = {"INPUT0": np.arange(4, dtype=np.float32).reshape(1, 4)}  # one row per request
SETTLE_S = 10.0  # how long the server may take to count answers it has already sent


def _closed(concurrency: int) -> LoadLevel:
    return LoadLevel(LoadMode.CONCURRENCY, concurrency)


def _rate(rate: float, distribution: Distribution = Distribution.CONSTANT) -> LoadLevel:
    return LoadLevel(LoadMode.RATE, rate, distribution)


@dataclass(frozen=True, slots=True)
class _ServerCounts:
    requests: int  # successful requests
    rows: int  # inference_count: rows, one per request here


def _server_counts(address: str, model: str = MODEL) -> _ServerCounts:
    with grpc.insecure_channel(address) as channel:
        response = GRPCInferenceServiceStub(channel).ModelStatistics(
            pb.ModelStatisticsRequest(name=model), timeout=10
        )
    stats = response.model_stats[0]
    return _ServerCounts(stats.inference_stats.success.count, stats.inference_count)


def _settled_counts(address: str, before: _ServerCounts, succeeded: int) -> _ServerCounts:
    """The server's counts once they include ``succeeded`` more requests: statistics may
    be recorded just after the answer goes out."""
    wait_until(
        lambda: _server_counts(address).requests - before.requests >= succeeded,
        f"the server's statistics counting {succeeded} more requests",
        timeout_s=SETTLE_S,
    )
    return _server_counts(address)


def _assert_consistent(totals: LoadTotals) -> None:
    assert totals.issued == totals.succeeded + totals.failed + totals.abandoned


# --- without a server ------------------------------------------------------------------


def test_constant_schedule_sends_rate_times_duration() -> None:
    offsets = list(send_offsets(100, Distribution.CONSTANT, 1.0, random.Random(0)))
    assert len(offsets) == 100
    assert offsets[0] == 0 and offsets[-1] == pytest.approx(0.99)


def test_constant_schedules_with_phases_interleave() -> None:
    first = list(send_offsets(50, Distribution.CONSTANT, 1.0, random.Random(0), phase=0.0))
    second = list(send_offsets(50, Distribution.CONSTANT, 1.0, random.Random(0), phase=0.5))
    merged = sorted(first + second)
    assert len(merged) == 100
    assert np.allclose(np.diff(merged), 0.01)


def test_poisson_schedule_is_seeded_and_has_the_rate() -> None:
    def offsets(seed: int) -> list[float]:
        return list(send_offsets(100, Distribution.POISSON, 100.0, random.Random(seed)))

    assert offsets(7) == offsets(7)
    assert offsets(7) != offsets(8)
    assert len(offsets(7)) == pytest.approx(10_000, rel=0.05)


def test_schedule_rejects_a_rate_that_is_not_positive() -> None:
    with pytest.raises(ValueError, match="rate above 0"):
        next(send_offsets(0, Distribution.CONSTANT, 1.0, random.Random(0)))


def test_split_level_shares_concurrency_evenly_and_rate_equally() -> None:
    assert [level.value for level in split_level(_closed(5), 3)] == [2, 2, 1]
    assert [level.value for level in split_level(_closed(1), 3)] == [1, 0, 0]
    shares = split_level(_rate(90, Distribution.POISSON), 3)
    assert [level.value for level in shares] == [30, 30, 30]
    assert {level.distribution for level in shares} == {Distribution.POISSON}


def test_merge_windows_adds_counts_and_overlaps_durations() -> None:
    one = WindowResult(1.0, np.array([1.0, 2.0]), {"NOT_FOUND": 1}, 4, 1, 0.25)
    two = WindowResult(1.1, np.array([3.0]), {"NOT_FOUND": 2, "UNAVAILABLE": 1}, 5, 2, 0.5)
    merged = merge_windows([one, two])
    assert merged.duration_s == 1.1
    assert list(merged.latencies_us) == [1.0, 2.0, 3.0]
    assert merged.errors == {"NOT_FOUND": 3, "UNAVAILABLE": 1}
    assert (merged.sent, merged.late_sends, merged.client_cpu_s) == (9, 3, 0.75)


def test_merge_windows_joins_response_samples() -> None:
    one = WindowResult(1.0, np.array([5.0]), first_response_us=np.array([1.0]), responses=2)
    two = WindowResult(
        1.0, np.array([6.0]), first_response_us=np.array([2.0]),
        inter_response_us=np.array([0.5]), responses=3,
    )  # fmt: skip
    merged = merge_windows([one, two])
    assert merged.first_response_us.tolist() == [1.0, 2.0]
    assert merged.inter_response_us.tolist() == [0.5]
    assert merged.responses == 5


# --- against the demo server -----------------------------------------------------------


def test_closed_loop_counts_match_the_server(demo_server: ServerProcess) -> None:
    address = demo_server.address
    before = _server_counts(address)

    async def measure() -> tuple[WindowResult, LoadTotals]:
        async with LoadSession(address, MODEL, INPUTS, channels=2, timeout=10) as session:
            return await session.window(_closed(4), 1.0), session.totals

    window, totals = asyncio.run(measure())
    after = _settled_counts(address, before, totals.succeeded)

    assert window.errors == {}
    assert 0 < len(window.latencies_us) <= totals.succeeded
    assert np.all(window.latencies_us > 0)
    # At most one request per task was still outstanding when the window ended.
    assert 0 <= window.sent - window.completed <= 4
    assert window.duration_s == 1.0
    _assert_consistent(totals)
    assert totals.failed == totals.abandoned == 0
    assert after.requests - before.requests == totals.succeeded
    assert after.rows - before.rows == totals.succeeded


@pytest.mark.parametrize("workers", [1, 2])
def test_open_loop_sends_what_the_schedule_says(demo_server: ServerProcess, workers: int) -> None:
    config = SessionConfig(demo_server.address, MODEL, INPUTS, timeout=10)
    with WorkerPool(config, workers=workers) as pool:
        window = pool.run_window(_rate(100), 1.0)
        totals = pool.totals()
    assert 95 <= window.sent <= 105
    assert window.errors == {}
    assert window.completed <= window.sent
    _assert_consistent(totals)
    assert totals.issued >= window.sent


def test_poisson_open_loop_runs(demo_server: ServerProcess) -> None:
    address = demo_server.address

    async def measure() -> tuple[WindowResult, LoadTotals]:
        async with LoadSession(address, MODEL, INPUTS, timeout=10) as session:
            return await session.window(_rate(200, Distribution.POISSON), 0.5), session.totals

    window, totals = asyncio.run(measure())
    assert window.sent > 0 and window.errors == {}
    assert totals.succeeded == totals.issued == window.sent


def test_an_unknown_model_counts_every_request_as_not_found(demo_server: ServerProcess) -> None:
    address = demo_server.address

    async def measure() -> tuple[list[WindowResult], LoadTotals]:
        async with LoadSession(address, "no_such_model", INPUTS, timeout=10) as s:
            windows = [await s.window(_closed(2), 0.5), await s.window(_rate(100), 0.5)]
            return windows, s.totals

    windows, totals = asyncio.run(measure())
    for window in windows:
        assert len(window.latencies_us) == 0
        assert set(window.errors) == {"NOT_FOUND"}
        assert window.errors["NOT_FOUND"] == window.completed > 0
        assert 0 <= window.sent - window.completed <= 2
    assert totals.succeeded == totals.abandoned == 0
    assert totals.failed == totals.issued > 0


@pytest.mark.parametrize("level", [_closed(4), _rate(200)], ids=["closed", "open"])
def test_a_server_that_dies_mid_window_turns_into_errors(
    start_server: Callable[..., ServerProcess], demo_repository: Path, level: LoadLevel
) -> None:
    server = start_server(demo_repository)
    address = server.address
    duration_s, drain_s = 1.5, 2.0

    async def measure() -> tuple[WindowResult, LoadTotals]:
        async with LoadSession(
            address, MODEL, INPUTS, timeout=5, drain_timeout_s=drain_s
        ) as session:
            asyncio.get_running_loop().call_later(0.5, server.process.kill)
            return await session.window(level, duration_s), session.totals

    began = time.monotonic()
    window, totals = asyncio.run(measure())
    elapsed = time.monotonic() - began

    assert elapsed < duration_s + drain_s + 5.0
    assert len(window.latencies_us) > 0  # it answered before it died
    assert "UNAVAILABLE" in window.errors
    assert set(window.errors) <= {"UNAVAILABLE", "CANCELLED", "INTERNAL", "UNKNOWN"}
    _assert_consistent(totals)


def test_worker_pool_closed_loop_counts_match_the_server(demo_server: ServerProcess) -> None:
    address = demo_server.address
    before = _server_counts(address)
    config = SessionConfig(address, MODEL, INPUTS, channels=2, timeout=10)
    with WorkerPool(config, workers=2) as pool:
        window = pool.run_window(_closed(3), 1.0)  # shared 2 + 1
        lone = pool.run_window(_closed(1), 0.3)  # one worker sits out
        totals = pool.totals()
    assert multiprocessing.active_children() == []
    after = _settled_counts(address, before, totals.succeeded)

    assert window.errors == lone.errors == {}
    assert window.duration_s == 1.0  # side by side: the longest, not the sum
    assert 0 <= window.sent - window.completed <= 3
    assert len(lone.latencies_us) > 0 and lone.sent - lone.completed <= 1
    assert len(window.latencies_us) + len(lone.latencies_us) <= totals.succeeded
    _assert_consistent(totals)
    assert totals.failed == totals.abandoned == 0
    assert after.requests - before.requests == totals.succeeded
    assert after.rows - before.rows == totals.succeeded


def test_a_hung_server_turns_into_deadline_errors(
    start_server: Callable[..., ServerProcess], demo_repository: Path
) -> None:
    server = start_server(demo_repository)
    address = server.address

    async def measure() -> tuple[WindowResult, LoadTotals, WindowResult, LoadTotals]:
        async with (
            LoadSession(address, MODEL, INPUTS, timeout=0.2, drain_timeout_s=2) as timed,
            LoadSession(address, MODEL, INPUTS, max_outstanding=4, drain_timeout_s=0.2) as open_,
        ):
            await timed.window(_closed(2), 0.2)  # connected before it hangs
            server.signal(signal.SIGSTOP)
            try:
                deadlines = await timed.window(_closed(2), 1.0)
                backlog = await open_.window(_rate(100), 0.5)
            finally:
                server.signal(signal.SIGCONT)
            return deadlines, timed.totals, backlog, open_.totals

    window, totals, backlog, backlog_totals = asyncio.run(measure())
    assert len(window.latencies_us) == 0
    assert set(window.errors) == {"DEADLINE_EXCEEDED"}
    _assert_consistent(totals)
    assert totals.abandoned == 0  # the deadline, not the drain, ended every request

    # No timeout: the first four sends hang, the rest are refused, nothing queues up.
    assert backlog.sent == 50
    assert backlog.errors == {"CLIENT_BACKLOG": 46}
    assert backlog_totals == LoadTotals(issued=4, abandoned=4, refused=46)


def test_a_worker_that_cannot_start_fails_the_pool_and_leaves_no_process() -> None:
    config = SessionConfig("http://127.0.0.1:1", MODEL, INPUTS)
    with pytest.raises(RuntimeError, match="load worker failed: ValueError"):
        WorkerPool(config, workers=2)
    assert multiprocessing.active_children() == []
