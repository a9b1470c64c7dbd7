"""A sweep: for each load level, a warm-up window, then measurement windows until the
last three agree within the stability percentage (or the trials run out), with the
server's ModelStatistics read around them for the server-side breakdown."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import grpc
import numpy as np

from inferd.bench.measure import is_stable, level_result, server_breakdown
from inferd.bench.results import LevelResult, LoadLevel, WindowResult
from inferd.bench.workers import SessionConfig, WorkerPool
from inferd.protos import grpc_service_pb2 as pb
from inferd.protos import grpc_service_pb2_grpc as pb_grpc

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class SweepSettings:
    url: str
    model: str
    version: str
    levels: tuple[LoadLevel, ...]
    measurement_interval_s: float
    stability_percentage: float
    max_trials: int
    warmup_s: float
    workers: int
    request_timeout_s: float
    channels: int = 1  # connections per load process
    streaming: bool = False  # ModelStreamInfer instead of ModelInfer
    decoupled: bool = False  # the model's transaction policy; needs streaming


class StatisticsReader:
    """The model's ModelStatistics, or None when the server keeps none (not every v2
    server implements the RPC)."""

    def __init__(self, url: str, model: str, version: str) -> None:
        self._channel = grpc.insecure_channel(url)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        self._request = pb.ModelStatisticsRequest(name=model, version=version)
        self.available = True

    def read(self) -> pb.ModelStatistics | None:
        if not self.available:
            return None
        try:
            response = self._stub.ModelStatistics(self._request, timeout=10)
        except grpc.RpcError:
            self.available = False
            return None
        if not response.model_stats:
            return None
        # Several versions: the newest is what an unversioned request reaches.
        return max(response.model_stats, key=lambda stats: int(stats.version or 0))

    def close(self) -> None:
        self._channel.close()


def _window_line(level: LoadLevel, trial: int, window: WindowResult) -> str:
    p99 = np.percentile(window.latencies_us, 99) / 1000 if len(window.latencies_us) else 0.0
    errors = sum(window.errors.values())
    suffix = f", {errors} errors" if errors else ""
    return (
        f"{level.label()}: window {trial}: {window.throughput:,.1f} req/s, p99 {p99:.2f} ms{suffix}"
    )


def run_sweep(
    settings: SweepSettings, inputs: dict[str, np.ndarray], progress: Progress
) -> list[LevelResult]:
    statistics = StatisticsReader(settings.url, settings.model, settings.version)
    results: list[LevelResult] = []
    try:
        session = SessionConfig(
            settings.url,
            settings.model,
            inputs,
            version=settings.version,
            timeout=settings.request_timeout_s,
            streaming=settings.streaming,
            decoupled=settings.decoupled,
            channels=settings.channels,
        )
        with WorkerPool(session, workers=settings.workers) as pool:
            for level in settings.levels:
                results.append(_measure_level(settings, pool, statistics, level, progress))
    finally:
        statistics.close()
    return results


def _measure_level(
    settings: SweepSettings,
    pool: WorkerPool,
    statistics: StatisticsReader,
    level: LoadLevel,
    progress: Progress,
) -> LevelResult:
    if settings.warmup_s > 0:
        pool.run_window(level, settings.warmup_s)
    # A snapshot before each window and after the last: the breakdown then covers the
    # same (last three) windows as the client's figures.
    snapshots = [statistics.read()]
    windows: list[WindowResult] = []
    stable = False
    while len(windows) < settings.max_trials:
        window = pool.run_window(level, settings.measurement_interval_s)
        windows.append(window)
        snapshots.append(statistics.read())
        progress(_window_line(level, len(windows), window))
        if is_stable(windows, settings.stability_percentage):
            stable = True
            break
    reported = min(3, len(windows))
    server = server_breakdown(snapshots[-1 - reported], snapshots[-1])
    return level_result(
        level, windows, stable, server, workers=settings.workers, decoupled=settings.decoupled
    )


def expand_range(text: str, integer: bool) -> list[float]:
    """perf_analyzer's START[:END[:STEP]]; END defaults to START, STEP to 1."""
    parts = text.split(":")
    if not 1 <= len(parts) <= 3 or not all(parts):
        raise ValueError(f"expected START[:END[:STEP]], got '{text}'")
    try:
        numbers = [int(part) if integer else float(part) for part in parts]
    except ValueError:
        kind = "integers" if integer else "numbers"
        raise ValueError(f"expected {kind} in START[:END[:STEP]], got '{text}'") from None
    start = numbers[0]
    end = numbers[1] if len(numbers) > 1 else start
    step = numbers[2] if len(numbers) > 2 else 1
    if start <= 0 or end < start or step <= 0:
        raise ValueError(f"'{text}': need 0 < START <= END and STEP > 0")
    values: list[float] = []
    value = start
    while value <= end + 1e-9:
        values.append(value)
        value += step
    return values
