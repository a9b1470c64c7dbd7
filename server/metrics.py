"""Prometheus metrics over HTTP, derived from the engine's statistics at scrape time.

Nothing is counted twice: each scrape reads the same snapshots the ModelStatistics RPC
encodes, so metrics and statistics cannot disagree. Names are Triton's with ``nv_``
replaced by ``inferd_``; labels ``model`` and ``version`` (plus ``reason`` on failures,
with all four reasons always present, as Triton reports them). prometheus-client writes
counter series with the ``_total`` suffix the exposition formats require (the family
``inferd_inference_count`` is served as ``inferd_inference_count_total``); Triton's C++
exporter omits it. Durations are cumulative microseconds, as in Triton, and count
successful requests only.

The HTTP server runs on its own threads; a scrape takes each model's statistics lock
just long enough to copy its numbers and never touches the asyncio event loop.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from inferd.engines.statistics import FailureReason, StatisticsSnapshot

StatisticsSource = Callable[[], Iterable[StatisticsSnapshot]]

METRICS_PATH = "/metrics"
_STOP_POLL_INTERVAL_S = 0.1
_LABELS = ("model", "version")


@dataclass(frozen=True, slots=True)
class _Counter:
    name: str
    help: str
    value: Callable[[StatisticsSnapshot], int]


def _us(ns: int) -> int:
    return ns // 1000


_COUNTERS = (
    _Counter(
        "inferd_inference_request_success",
        "Number of successful inference requests, all batch sizes",
        lambda s: s.success.count,
    ),
    _Counter(
        "inferd_inference_count",
        "Number of inferences performed (a batch of n counts n)",
        lambda s: s.inference_count,
    ),
    _Counter(
        "inferd_inference_exec_count",
        "Number of model executions performed",
        lambda s: s.execution_count,
    ),
    _Counter(
        "inferd_inference_request_duration_us",
        "Cumulative inference request duration in microseconds",
        lambda s: _us(s.success.ns),
    ),
    _Counter(
        "inferd_inference_queue_duration_us",
        "Cumulative inference queuing duration in microseconds",
        lambda s: _us(s.queue.ns),
    ),
    _Counter(
        "inferd_inference_compute_input_duration_us",
        "Cumulative compute input duration in microseconds",
        lambda s: _us(s.compute_input.ns),
    ),
    _Counter(
        "inferd_inference_compute_infer_duration_us",
        "Cumulative compute inference duration in microseconds",
        lambda s: _us(s.compute_infer.ns),
    ),
    _Counter(
        "inferd_inference_compute_output_duration_us",
        "Cumulative inference compute output duration in microseconds",
        lambda s: _us(s.compute_output.ns),
    ),
)
_FAILURE = "inferd_inference_request_failure"
_FAILURE_HELP = "Number of failed inference requests, all batch sizes"
_PENDING = "inferd_inference_pending_request_count"
_PENDING_HELP = "Instantaneous number of pending requests awaiting execution per-model."
_BATCH_SIZE = "inferd_inference_batch_size"
_BATCH_SIZE_HELP = "Batch sizes of model executions"

# Every family served, in order.
METRIC_NAMES = (*(counter.name for counter in _COUNTERS), _FAILURE, _PENDING, _BATCH_SIZE)


def batch_size_buckets(max_batch_size: int) -> tuple[int, ...]:
    """Upper bounds: powers of two below the model's largest batch, then that batch."""
    largest = max(1, max_batch_size)
    bounds = []
    bound = 1
    while bound < largest:
        bounds.append(bound)
        bound *= 2
    bounds.append(largest)
    return tuple(bounds)


@dataclass(slots=True)
class _Families:
    """One scrape's metric families, filled model by model."""

    counters: list[CounterMetricFamily]
    failure: CounterMetricFamily
    pending: GaugeMetricFamily
    batch_size: HistogramMetricFamily

    @classmethod
    def empty(cls) -> _Families:
        return cls(
            [CounterMetricFamily(c.name, c.help, labels=_LABELS) for c in _COUNTERS],
            CounterMetricFamily(_FAILURE, _FAILURE_HELP, labels=(*_LABELS, "reason")),
            GaugeMetricFamily(_PENDING, _PENDING_HELP, labels=_LABELS),
            HistogramMetricFamily(_BATCH_SIZE, _BATCH_SIZE_HELP, labels=_LABELS),
        )

    def add(self, snapshot: StatisticsSnapshot) -> None:
        labels = [snapshot.name, str(snapshot.version)]
        for family, counter in zip(self.counters, _COUNTERS, strict=True):
            family.add_metric(labels, counter.value(snapshot))
        for reason in FailureReason:
            self.failure.add_metric([*labels, reason.value], snapshot.failures.get(reason, 0))
        self.pending.add_metric(labels, snapshot.pending_requests)
        buckets, rows = _batch_histogram(snapshot)
        self.batch_size.add_metric(labels, buckets, rows)

    def all(self) -> list[Metric]:
        return [*self.counters, self.failure, self.pending, self.batch_size]


class StatisticsCollector(Collector):
    """Builds every metric family from fresh snapshots on each scrape."""

    def __init__(self, source: StatisticsSource) -> None:
        self._source = source

    def describe(self) -> Iterable[Metric]:
        # Names and types only, so registering never calls the source (the engine may
        # not be up yet).
        return _Families.empty().all()

    def collect(self) -> Iterable[Metric]:
        families = _Families.empty()
        for snapshot in self._source():
            families.add(snapshot)
        return families.all()


def _batch_histogram(snapshot: StatisticsSnapshot) -> tuple[list[tuple[str, float]], float]:
    """Cumulative execution counts per bucket, and the sum of batch sizes (rows executed)."""
    executions = sorted(
        (batch.batch_size, batch.compute_infer.count) for batch in snapshot.batch_stats
    )
    buckets: list[tuple[str, float]] = []
    cumulative = 0
    index = 0
    for bound in batch_size_buckets(snapshot.max_batch_size):
        while index < len(executions) and executions[index][0] <= bound:
            cumulative += executions[index][1]
            index += 1
        buckets.append((floatToGoString(bound), cumulative))
    buckets.append(("+Inf", sum(count for _, count in executions)))
    return buckets, sum(size * count for size, count in executions)


def build_registry(source: StatisticsSource) -> CollectorRegistry:
    """A private registry holding only inferd's statistics (not the process-global one)."""
    registry = CollectorRegistry()
    registry.register(StatisticsCollector(source))
    return registry


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    # Request threads are joined at server_close(), so stop() leaves none behind.
    daemon_threads = False
    block_on_close = True


class _IPv6ThreadingWSGIServer(_ThreadingWSGIServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    # A client that connects and never sends cannot hold a thread (or stop()) for long.
    timeout = 10

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged: one every few seconds is noise."""


def _only_metrics_path(app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    def serve(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != METRICS_PATH:
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [f"not found; metrics are at {METRICS_PATH}\n".encode()]
        return app(environ, start_response)

    return serve


class MetricsServer:
    """Serves ``/metrics`` in Prometheus text format from a daemon thread.

    ``start()`` binds (port 0: any free port) and returns the bound port; ``stop()``
    shuts the HTTP server down, closes its socket and joins its threads.
    """

    def __init__(self, source: StatisticsSource, host: str = "0.0.0.0", port: int = 8002) -> None:
        self.registry = build_registry(source)
        self._host = host
        self._port = port
        self._httpd: _ThreadingWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the metrics server is not started")
        return int(self._httpd.server_address[1])

    def start(self) -> int:
        if self._httpd is not None:
            raise RuntimeError("the metrics server is already started")
        server_class = (
            _IPv6ThreadingWSGIServer
            if _address_family(self._host, self._port) == socket.AF_INET6
            else _ThreadingWSGIServer
        )
        app = _only_metrics_path(make_wsgi_app(self.registry))
        self._httpd = make_server(self._host, self._port, app, server_class, _QuietHandler)
        # socketserver notices shutdown() only between selects: a short interval keeps
        # stop() (and so the server's exit) quick at the cost of 10 idle wakeups a second.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": _STOP_POLL_INTERVAL_S},
            name="inferd-metrics",
            daemon=True,
        )
        self._thread.start()
        return self.port

    def stop(self) -> None:
        """Idempotent; returns once the port is released and the threads have ended."""
        httpd, thread = self._httpd, self._thread
        self._httpd = self._thread = None
        if httpd is None or thread is None:
            return
        httpd.shutdown()
        thread.join()
        httpd.server_close()

    def __enter__(self) -> MetricsServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _address_family(host: str, port: int) -> socket.AddressFamily:
    """IPv6 for an IPv6 host ("::"), else IPv4, as getaddrinfo resolves it."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    return infos[0][0]
