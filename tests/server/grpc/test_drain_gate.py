"""The drain's bookkeeping, driven directly (no server): how many of the calls taken
after the drain began run, and when the drain may stop the server. Channelz's counts
stand in for gRPC core's; the load test (tests/server/test_drain_under_load.py) drives
the real thing."""

from __future__ import annotations

import asyncio

import pytest

from inferd.server.grpc import drain
from inferd.server.grpc.drain import DrainGate, FrontListeners

WAIT_S = 30.0


def test_the_calls_core_held_run_and_later_ones_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Core started 10 calls and finished 3; 2 run here: 5 wait in core, and run.
    monkeypatch.setattr(drain, "_call_counts", lambda server_id: drain._CallCounts(10, 3))
    gate = DrainGate(FrontListeners())
    gate.begin(in_progress=2)
    assert gate.draining
    assert [gate.admits() for _ in range(7)] == [True] * 5 + [False] * 2


def test_without_channelz_no_call_not_yet_taken_runs() -> None:
    gate = DrainGate(FrontListeners())  # no server id: channelz cannot tell
    gate.begin(in_progress=0)
    assert not gate.admits()


def test_the_drain_waits_for_what_runs_then_for_a_quiet_moment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(drain, "QUIET_S", 0.05)
    running = [1]
    gate = DrainGate(FrontListeners())
    gate.begin(in_progress=1)

    async def main() -> bool:
        waiting = asyncio.ensure_future(gate.wait(lambda: running[0], float("inf")))
        await asyncio.sleep(0.2)  # only ever makes the check weaker, never fails it
        still_waiting = not waiting.done()
        running[0] = 0
        await asyncio.wait_for(waiting, WAIT_S)
        return still_waiting

    assert asyncio.run(main())
