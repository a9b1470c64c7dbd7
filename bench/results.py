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


@dataclass(slots=True)
class WindowResult:
    """What one measurement window saw, summed over every worker process."""

    duration_s: float
    latencies_us: np.ndarray  # successful requests completed in the window
    errors: dict[str, int] = field(default_factory=dict)  # gRPC status name -> count
    sent: int = 0
    late_sends: int = 0  # open loop: sends more than a millisecond behind schedule
    client_cpu_s: float = 0.0  # CPU time of the load processes over the window

    @property
    def completed(self) -> int:
        return len(self.latencies_us) + sum(self.errors.values())

    @property
    def throughput(self) -> float:
        return len(self.latencies_us) / self.duration_s if self.duration_s > 0 else 0.0


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
