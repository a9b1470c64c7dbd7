"""The front-process comparison's arithmetic: rounds merged, ratios to echo, scaling."""

from __future__ import annotations

import pytest

from inferd.bench.frontends import Sample, Server, render, scaling_summary, summarize


def sample(server: Server, processes: int, rate: float, workload: str = "small") -> Sample:
    return Sample(workload, server, processes, rate, 1.0, 2.0, 0, 1.0, 0.5)


SAMPLES = [
    sample(Server.INFERD, 1, 1000.0),
    sample(Server.ECHO, 1, 4000.0),
    sample(Server.INFERD, 2, 1500.0),
    sample(Server.ECHO, 2, 6000.0),
    sample(Server.INFERD, 1, 3000.0),  # second round
    sample(Server.ECHO, 1, 4000.0),
    sample(Server.INFERD, 2, 4500.0),
    sample(Server.ECHO, 2, 10000.0),
]


def test_rounds_merge_into_one_row_per_scenario_in_first_seen_order() -> None:
    rows = summarize(SAMPLES)
    assert [(row.server, row.processes) for row in rows] == [
        (Server.INFERD, 1), (Server.ECHO, 1), (Server.INFERD, 2), (Server.ECHO, 2),
    ]  # fmt: skip
    assert rows[0].rates == (1000.0, 3000.0)
    assert rows[0].rate == 2000.0


def test_ratios_compare_means_at_the_same_process_count_and_to_one_process() -> None:
    inferd_1, echo_1, inferd_2, echo_2 = summarize(SAMPLES)
    assert inferd_1.to_echo == pytest.approx(0.5)
    assert inferd_2.to_echo == pytest.approx(3000 / 8000)
    assert echo_2.to_echo == pytest.approx(1.0)
    assert inferd_1.scaling == pytest.approx(1.0)
    assert inferd_2.scaling == pytest.approx(1.5)
    assert echo_2.scaling == pytest.approx(2.0)
    assert scaling_summary([inferd_1, echo_1, inferd_2, echo_2]) == [
        "small: 2 processes / 1 process: inferd 1.50x, echo servicer 2.00x"
    ]


def test_missing_peers_leave_ratios_empty() -> None:
    (row,) = summarize([sample(Server.INFERD, 2, 1000.0, workload="large")])
    assert row.to_echo is None and row.scaling is None
    assert "| large | inferd | 2 | 1,000 (1,000) | 1.00 | 2.00 | - | - |" in render([row])
    assert scaling_summary([row]) == []
