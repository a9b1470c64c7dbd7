"""Prometheus metrics served over real HTTP from statistics snapshots; no inferd running."""

from __future__ import annotations

import socket
import threading
import urllib.request
from collections.abc import Iterator
from urllib.error import HTTPError

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from inferd.engines.statistics import FailureReason, ModelStatistics, StatisticsSnapshot
from inferd.server.metrics import (
    METRIC_NAMES,
    MetricsServer,
    batch_size_buckets,
    build_registry,
)


class Models:
    """The statistics of two model versions, as the engine would hold them."""

    def __init__(self) -> None:
        self.batched = ModelStatistics("batched", 2, max_batch_size=6)
        self.plain = ModelStatistics("plain", 1)

    def snapshots(self) -> list[StatisticsSnapshot]:
        return [self.batched.snapshot(), self.plain.snapshot()]


@pytest.fixture
def models() -> Models:
    models = Models()
    batched = models.batched
    for rows, execution in ((1, 1), (3, 3), (3, 3), (6, 6), (5, 5)):
        batched.record_success(rows, 2_500, 1_000, 40_000, 1_999, 50_001)
        batched.record_execution(execution, 1_000, 40_000, 1_999, now_ms=1_700_000_000_000)
    batched.record_failure(7_000, FailureReason.BACKEND)
    batched.record_failure(3_000, FailureReason.REJECTED)
    batched.request_queued()
    batched.request_queued()
    batched.request_queued()
    batched.request_dequeued()
    models.plain.record_success(1, 100, 200, 300, 400, 1_500)
    models.plain.record_execution(1, 200, 300, 400)
    return models


@pytest.fixture
def server(models: Models) -> Iterator[MetricsServer]:
    with MetricsServer(models.snapshots, host="127.0.0.1", port=0) as server:
        yield server


def _get(port: int, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return response.read().decode()


def _scrape(port: int) -> dict[str, tuple[str, list[Sample]]]:
    return {
        family.name: (family.type, family.samples)
        for family in text_string_to_metric_families(_get(port))
    }


def _value(samples: list[Sample], name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(found) == 1, f"{name}{labels} in {samples}"
    return found[0]


def test_every_family_is_served_with_its_type(server: MetricsServer) -> None:
    families = _scrape(server.port)
    assert list(families) == list(METRIC_NAMES)
    types = {name: kind for name, (kind, _) in families.items()}
    assert types.pop("inferd_inference_pending_request_count") == "gauge"
    assert types.pop("inferd_inference_batch_size") == "histogram"
    assert set(types.values()) == {"counter"}


def test_counters_agree_with_the_statistics(server: MetricsServer, models: Models) -> None:
    families = _scrape(server.port)
    for snapshot in models.snapshots():
        labels = {"model": snapshot.name, "version": str(snapshot.version)}
        expected = {
            "inferd_inference_request_success": snapshot.success.count,
            "inferd_inference_count": snapshot.inference_count,
            "inferd_inference_exec_count": snapshot.execution_count,
            "inferd_inference_request_duration_us": snapshot.success.ns // 1000,
            "inferd_inference_queue_duration_us": snapshot.queue.ns // 1000,
            "inferd_inference_compute_input_duration_us": snapshot.compute_input.ns // 1000,
            "inferd_inference_compute_infer_duration_us": snapshot.compute_infer.ns // 1000,
            "inferd_inference_compute_output_duration_us": snapshot.compute_output.ns // 1000,
        }
        for name, value in expected.items():
            assert _value(families[name][1], name + "_total", **labels) == value, name
        failures = families["inferd_inference_request_failure"][1]
        for reason in FailureReason:
            assert (
                _value(
                    failures,
                    "inferd_inference_request_failure_total",
                    reason=reason.value,
                    **labels,
                )
                == snapshot.failures[reason]
            )
        pending = families["inferd_inference_pending_request_count"][1]
        assert _value(pending, "inferd_inference_pending_request_count", **labels) == (
            snapshot.pending_requests
        )

    batched = {"model": "batched", "version": "2"}
    success = families["inferd_inference_request_success"][1]
    assert _value(success, "inferd_inference_request_success_total", **batched) == 5
    count = families["inferd_inference_count"][1]
    assert _value(count, "inferd_inference_count_total", **batched) == 18
    duration = families["inferd_inference_request_duration_us"][1]
    assert _value(duration, "inferd_inference_request_duration_us_total", **batched) == 250
    failures = families["inferd_inference_request_failure"][1]
    assert (
        _value(failures, "inferd_inference_request_failure_total", reason="BACKEND", **batched) == 1
    )
    pending = families["inferd_inference_pending_request_count"][1]
    assert _value(pending, "inferd_inference_pending_request_count", **batched) == 2


def test_batch_size_histogram_comes_from_batch_stats(server: MetricsServer) -> None:
    samples = _scrape(server.port)["inferd_inference_batch_size"][1]
    name = "inferd_inference_batch_size"
    labels = {"model": "batched", "version": "2"}
    # Executions of sizes 1, 3, 3, 6, 5 against buckets 1, 2, 4, 6 (max_batch_size 6).
    buckets = {
        s.labels["le"]: s.value
        for s in samples
        if s.name == name + "_bucket" and s.labels["model"] == "batched"
    }
    assert buckets == {"1.0": 1, "2.0": 1, "4.0": 3, "6.0": 5, "+Inf": 5}
    assert _value(samples, name + "_count", **labels) == 5
    assert _value(samples, name + "_sum", **labels) == 18
    plain = {"model": "plain", "version": "1"}
    assert _value(samples, name + "_bucket", le="1.0", **plain) == 1
    assert _value(samples, name + "_sum", **plain) == 1


def test_each_scrape_reads_the_statistics_afresh(server: MetricsServer, models: Models) -> None:
    name = "inferd_inference_exec_count"
    labels = {"model": "plain", "version": "1"}
    assert _value(_scrape(server.port)[name][1], name + "_total", **labels) == 1
    models.plain.record_execution(1, 0, 0, 0)
    assert _value(_scrape(server.port)[name][1], name + "_total", **labels) == 2


def test_only_the_metrics_path_is_served(server: MetricsServer) -> None:
    with pytest.raises(HTTPError) as caught:
        _get(server.port, "/")
    caught.value.close()
    assert caught.value.code == 404


def test_statistics_are_read_per_scrape_not_at_registration(models: Models) -> None:
    reads: list[int] = []

    def source() -> list[StatisticsSnapshot]:
        reads.append(1)
        return models.snapshots()

    registry = build_registry(source)  # the engine may not be up yet
    assert reads == []
    labels = {"model": "batched", "version": "2"}
    assert registry.get_sample_value("inferd_inference_count_total", labels) == 18
    assert reads == [1]


def test_no_models_still_serve_the_families() -> None:
    with MetricsServer(list, host="127.0.0.1", port=0) as server:
        families = _scrape(server.port)
    assert list(families) == list(METRIC_NAMES)
    assert all(samples == [] for _, samples in families.values())


def test_stop_releases_the_port_and_the_threads() -> None:
    threads_before = set(threading.enumerate())
    server = MetricsServer(list, host="127.0.0.1", port=0)
    port = server.start()
    assert port > 0 and server.port == port
    _get(port)
    server.stop()
    server.stop()  # idempotent

    assert set(threading.enumerate()) <= threads_before
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass
    # The same port can be bound again at once.
    with MetricsServer(list, host="127.0.0.1", port=port) as again:
        assert again.port == port
        _get(port)


def test_start_twice_or_port_before_start_is_an_error() -> None:
    server = MetricsServer(list, host="127.0.0.1", port=0)
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.port
    server.start()
    try:
        with pytest.raises(RuntimeError, match="already started"):
            server.start()
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("max_batch_size", "bounds"),
    [(0, (1,)), (1, (1,)), (2, (1, 2)), (6, (1, 2, 4, 6)), (8, (1, 2, 4, 8))],
)
def test_batch_size_buckets_are_powers_of_two_up_to_the_max(
    max_batch_size: int, bounds: tuple[int, ...]
) -> None:
    assert batch_size_buckets(max_batch_size) == bounds
