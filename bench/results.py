"""Typed values the load harness passes between its parts: what load to offer, what one
measurement window saw, and what one load level came to."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np


class LoadMode(enum.Enum):
    CONCURRENCY = "concurrency"  # closed loop: N requests always outstanding
    RATE = "rate"  # open loop: requests sent on a schedule, answered or not


class Distribution(enum.Enum):
    CONSTANT = "constant"
    POISSON = "poisson"


@dataclass(frozen=True, slots=True)
class LoadLevel:
    """One point of a sweep: a concurrency (closed loop) or a request rate (open loop)."""

    mode: LoadMode
    value: float  # requests outstanding, or requests per second
    distribution: Distribution = Distribution.CONSTANT

    def label(self) -> str:
        if self.mode is LoadMode.CONCURRENCY:
            return f"concurrency {int(self.value)}"
        return f"{self.value:g} req/s ({self.distribution.value})"


def _no_samples() -> np.ndarray:
    return np.empty(0, dtype=np.float64)


@dataclass(slots=True)
class WindowResult:
    """What one measurement window saw, summed over every worker process.

    The response fields are filled only when streaming to a decoupled model, where a
    request may have many responses: the time from the send to its first response, the
    gaps between its consecutive responses, and how many responses carried outputs.
    """

    duration_s: float
    latencies_us: np.ndarray  # successful requests completed in the window
    errors: dict[str, int] = field(default_factory=dict)  # gRPC status name -> count
    sent: int = 0
    late_sends: int = 0  # open loop: sends more than a millisecond behind schedule
    client_cpu_s: float = 0.0  # CPU time of the load processes over the window
    first_response_us: np.ndarray = field(default_factory=_no_samples)
    inter_response_us: np.ndarray = field(default_factory=_no_samples)
    responses: int = 0

    @property
    def completed(self) -> int:
        return len(self.latencies_us) + sum(self.errors.values())

    @property
    def throughput(self) -> float:
        return len(self.latencies_us) / self.duration_s if self.duration_s > 0 else 0.0


@dataclass(frozen=True, slots=True)
class StreamTiming:
    """One streamed request's times, in microseconds, from its send."""

    latency_us: float  # to its final response
    first_response_us: float | None  # to its first response with outputs; None: there was none
    inter_response_us: tuple[float, ...]  # between its consecutive responses with outputs


@dataclass(frozen=True, slots=True)
class ServerBreakdown:
    """Average microseconds per successful request, from ModelStatistics deltas."""

    requests: int
    executions: int
    request_us: float
    queue_us: float
    compute_input_us: float
    compute_infer_us: float
    compute_output_us: float

    @property
    def overhead_us(self) -> float:
        """What the server spent outside the queue and the model: total minus the parts."""
        parts = self.queue_us + self.compute_input_us + self.compute_infer_us
        return max(0.0, self.request_us - parts - self.compute_output_us)


@dataclass(frozen=True, slots=True)
class LatencySummary:
    count: int
    avg_us: float
    p50_us: float
    p90_us: float
    p95_us: float
    p99_us: float
    max_us: float


@dataclass(frozen=True, slots=True)
class LevelResult:
    """One load level, measured until stable (or out of trials)."""

    level: LoadLevel
    stable: bool
    windows: int  # measurement windows run, the last three of which are reported
    throughput: float  # successful requests per second over the reported windows
    latency: LatencySummary
    errors: dict[str, int]
    sent: int
    late_sends: int
    client_cpu: float  # load processes' CPU as a fraction of one core
    server: ServerBreakdown | None  # None: the server has no statistics
    warnings: tuple[str, ...] = ()
    # Streaming to a decoupled model only (else None): latency runs to the final
    # response; these time the responses themselves.
    first_response: LatencySummary | None = None
    inter_response: LatencySummary | None = None
    response_throughput: float | None = None  # responses with outputs per second
