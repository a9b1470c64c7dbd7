"""bench/engine_hop.py end to end with tiny windows: it feeds a real engine process
through RemoteEngineClient (no gRPC), so the bench cannot rot unnoticed. No timing is
asserted: only that requests completed and CPU was counted."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from inferd.bench.engine_hop import WORKLOADS, engine_process, in_process, render


@pytest.fixture
def args() -> Iterator[argparse.Namespace]:
    cores = os.sched_getaffinity(0)
    yield argparse.Namespace(
        seconds=0.3, warmup=0.1, concurrency=4, engine_core=min(cores), driver_core=max(cores)
    )
    os.sched_setaffinity(0, cores)  # the bench pins this process


def test_both_feeds_complete_requests(demo_repository: Path, args: argparse.Namespace) -> None:
    simple, large = WORKLOADS
    samples = [
        in_process(demo_repository, simple, args),
        engine_process(demo_repository, simple, args, generation=1),
        engine_process(demo_repository, large, args, generation=2),  # through the rings
    ]
    for sample in samples:
        assert sample.rate > 0 and sample.engine_cpu_us > 0, sample
    assert samples[0].driver_cpu_us is None
    assert samples[1].driver_cpu_us is not None
    table = render(samples)
    assert "| simple 2x 1x16 INT32 | engine process |" in table
