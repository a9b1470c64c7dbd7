"""OpenTelemetry tracing: spans per ModelInfer, a span per batch, propagation, sampling,
the TraceSetting RPC, and export over OTLP (gRPC and http/protobuf) to a real receiver.

Most tests run the server in this process (``InferenceServer`` on its own event loop in
a thread, so tests can use blocking clients) with an ``InMemorySpanExporter``. Each
server has its own ``TracerProvider``; nothing sets OpenTelemetry's global one.

No verdict depends on timing. Requests that must share a batch go to ``gathered``, whose
preferred batch size is 4 rows and whose queue delay (60 s) outlasts any test: the
scheduler holds the first rows until the fourth arrives, then runs them together.
Checks that a request was *not* traced first wait for a later request that is traced
(a sampled ``traceparent``), sent after it on the same model.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from tritonclient.utils import InferenceServerException

from inferd.clients import AsyncClient, Client
from inferd.engines import Engine, InferRequest, InferResponse
from inferd.engines.model import Submitted
from inferd.protos import grpc_service_pb2 as pb
from inferd.protos import grpc_service_pb2_grpc as pb_grpc
from inferd.server.app import InferenceServer
from inferd.server.config import ServerConfig
from inferd.server.tracing import Tracing, TracingConfig, tracing_config
from tests.support.model_builders import BATCHING_WIDTH, _affine_config, _affine_graph, _write
from tests.support.otlp_receiver import OtlpGrpcReceiver, OtlpHttpReceiver, ReceivedSpan
from tests.support.server_process import ServerProcess
from tests.support.waiting import wait_until

WAIT_S = 60.0  # bound on every wait; a healthy server needs a small fraction of it
PHASES = ("decode", "queue", "gather", "compute", "scatter", "encode")  # in time order
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
SAMPLED = f"00-{TRACE_ID}-{PARENT_ID}-01"
NOT_SAMPLED = f"00-{TRACE_ID}-{PARENT_ID}-00"

MODELS = {
    # Dynamic batching without delay: a lone request runs at once.
    "quick": "",
    "other": "",
    # Rows wait (up to 60 s) until 4 of them can run together.
    "gathered": "preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 60000000",
}


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tracing") / "models"
    for name, batching in MODELS.items():
        _write(root, name, _affine_config(name, 8, batching), {1: _affine_graph()})
    return root


@pytest.fixture(autouse=True)
def _no_otel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own OTEL_* variables must not steer these tests."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


# --- helpers ----------------------------------------------------------------------------


def _rows(count: int, marker: float = 0.0) -> np.ndarray:
    data = np.arange(count * BATCHING_WIDTH, dtype=np.float32).reshape(count, BATCHING_WIDTH)
    data[:, 0] = marker
    return data


def _inputs(rows: int) -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput("INPUT0", [rows, BATCHING_WIDTH], "FP32")
    tensor.set_data_from_numpy(_rows(rows))
    return [tensor]


def _hex(number: int, digits: int) -> str:
    return f"{number:0{digits}x}"


def _trace_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return _hex(span.context.trace_id, 32)


def _span_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return _hex(span.context.span_id, 16)


def _interval(span: ReadableSpan) -> tuple[int, int]:
    assert span.start_time is not None and span.end_time is not None, span.name
    return span.start_time, span.end_time


def _parent_id(span: ReadableSpan) -> str:
    return _hex(span.parent.span_id, 16) if span.parent is not None else ""


def _requests(spans: Sequence[ReadableSpan]) -> dict[str, ReadableSpan]:
    """The ModelInfer spans by request id."""
    return {
        str(span.attributes["inferd.request.id"]): span
        for span in spans
        if span.name == "ModelInfer" and span.attributes
    }


def _children(spans: Sequence[ReadableSpan], parent: ReadableSpan) -> dict[str, ReadableSpan]:
    children: dict[str, ReadableSpan] = {}
    for span in spans:
        if span.parent is not None and span.parent.span_id == parent.context.span_id:
            assert span.name not in children, f"two '{span.name}' spans under one request"
            children[span.name] = span
    return children


def _batches_linking(spans: Sequence[ReadableSpan], request: ReadableSpan) -> list[ReadableSpan]:
    return [
        span
        for span in spans
        if span.name == "batch"
        and any(link.context.span_id == request.context.span_id for link in span.links)
    ]


def _complete(*request_ids: str) -> Callable[[Sequence[ReadableSpan]], bool]:
    """True once each request's span, its six phases and its batch span are exported."""

    def check(spans: Sequence[ReadableSpan]) -> bool:
        requests = _requests(spans)
        return all(
            rid in requests
            and set(_children(spans, requests[rid])) >= set(PHASES)
            and _batches_linking(spans, requests[rid])
            for rid in request_ids
        )

    return check


@dataclass
class Answer:
    """One async_infer's answer, filled from tritonclient's callback thread."""

    result: grpcclient.InferResult | None = None
    error: InferenceServerException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def set(self, result: grpcclient.InferResult | None, error: Any) -> None:
        self.result, self.error = result, error
        self.done.set()

    def wait(self) -> grpcclient.InferResult:
        assert self.done.wait(WAIT_S), "no answer within the bound"
        assert self.error is None, self.error
        assert self.result is not None
        return self.result


class InProcessServer:
    """An InferenceServer on its own event loop in a thread."""

    def __init__(self, repository: Path, tracing: Tracing | None) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        config = ServerConfig(model_repository=repository, grpc_port=0, metrics_port=None)
        self.server = InferenceServer(config, tracing=tracing)
        self._call(self.server.start())
        self.address = self.server.addresses[0]
        self.client = grpcclient.InferenceServerClient(self.address)

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(WAIT_S)

    def close(self) -> None:
        self.client.close()
        try:
            self._call(self.server.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(WAIT_S)
            self._loop.close()


class TracedServer(InProcessServer):
    def __init__(self, repository: Path, tracing: Tracing, exporter: InMemorySpanExporter):
        super().__init__(repository, tracing)
        self.tracing = tracing
        self.exporter = exporter

    def infer(
        self, model: str, request_id: str, rows: int = 1, traceparent: str | None = None, **kw: Any
    ) -> grpcclient.InferResult:
        headers = {"traceparent": traceparent} if traceparent else None
        return self.client.infer(model, _inputs(rows), request_id=request_id, headers=headers, **kw)

    def spans(self) -> list[ReadableSpan]:
        self.tracing.force_flush()
        return list(self.exporter.get_finished_spans())

    def wait_for(self, predicate: Callable[[Sequence[ReadableSpan]], bool]) -> list[ReadableSpan]:
        """The spans once ``predicate`` holds (bounded)."""
        wait_until(lambda: predicate(self.spans()), "the spans the test expects", timeout_s=WAIT_S)
        return self.spans()

    def traced_marker(self, model: str, request_id: str) -> list[ReadableSpan]:
        """Send a request that is traced whatever the settings (a sampled client span) and
        wait for its spans: every request sent before it on ``model`` is exported by then."""
        self.infer(model, request_id, traceparent=SAMPLED)
        spans = self.wait_for(_complete(request_id))
        assert _complete(request_id)(spans), f"the marker {request_id} was not traced"
        return spans


@pytest.fixture
def traced(repository: Path) -> Iterator[Callable[..., TracedServer]]:
    """Start in-process servers tracing into memory (``rate``: fraction traced)."""
    started: list[TracedServer] = []

    def start(rate: float = 1.0, tracing_class: type[Tracing] = Tracing) -> TracedServer:
        config = tracing_config("console", rate, {})
        assert config is not None
        exporter = InMemorySpanExporter()
        server = TracedServer(repository, tracing_class(config, exporter=exporter), exporter)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


# --- span tree --------------------------------------------------------------------------


def test_request_span_tree_names_attributes_and_order(
    traced: Callable[..., TracedServer],
) -> None:
    server = traced()
    server.infer("quick", "req-tree", rows=2)

    spans = server.wait_for(_complete("req-tree"))
    request = _requests(spans)["req-tree"]
    assert request.kind == SpanKind.SERVER
    assert request.parent is None  # no client span: a new trace
    attributes = dict(request.attributes or {})
    assert attributes["inferd.model.name"] == "quick"
    assert attributes["inferd.model.version"] == "1"  # the version that served it
    assert attributes["inferd.request.id"] == "req-tree"
    assert attributes["inferd.batch.size"] == 2
    assert attributes["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]

    children = _children(spans, request)
    assert set(children) == set(PHASES)
    for child in children.values():
        assert _trace_id(child) == _trace_id(request)
    compute = children["compute"].attributes or {}
    assert compute["inferd.instance"] == 0
    assert compute["inferd.device"] == "cpu"
    # The phases follow each other inside the request (one monotonic clock).
    times = [_interval(request)[0]]
    for phase in PHASES:
        times += _interval(children[phase])
    times.append(_interval(request)[1])
    assert times == sorted(times), {name: _interval(c) for name, c in children.items()}

    (batch,) = _batches_linking(spans, request)
    assert batch.attributes is not None
    assert batch.attributes["inferd.batch.rows"] == 2
    assert batch.attributes["inferd.batch.requests"] == 1


def test_concurrent_requests_in_one_batch_are_linked_from_its_batch_span(
    traced: Callable[..., TracedServer],
) -> None:
    server = traced()
    rows = {"req-a": 1, "req-b": 2, "req-c": 1}  # 4 rows: the preferred batch size
    answers = {rid: Answer() for rid in rows}
    for rid, count in rows.items():
        server.client.async_infer(
            "gathered", _inputs(count), callback=answers[rid].set, request_id=rid
        )
    for answer in answers.values():
        answer.wait()

    spans = server.wait_for(_complete(*rows))
    requests = _requests(spans)
    (batch,) = _batches_linking(spans, requests["req-a"])
    assert batch.attributes is not None
    assert batch.attributes["inferd.batch.rows"] == 4
    assert batch.attributes["inferd.batch.requests"] == 3
    linked = {(link.context.trace_id, link.context.span_id) for link in batch.links}
    assert linked == {(s.context.trace_id, s.context.span_id) for s in requests.values()}
    for rid in rows:
        request = requests[rid]
        assert (request.attributes or {})["inferd.batch.size"] == 4, rid
        assert _batches_linking(spans, request) == [batch]
        compute = _children(spans, request)["compute"]
        # One execution: every member's compute span is that execution's.
        assert _interval(compute) == _interval(_children(spans, requests["req-a"])["compute"])
    # Three separate client requests without client spans: three traces.
    assert len({_trace_id(s) for s in requests.values()}) == 3


class _LateObserver(Tracing):
    """Observes each batch only once its requests have their answers, the order a busy
    instance thread can produce. Where the engine observes before it answers, the answer
    cannot come first: the wait runs out its bound (3 s) and the batch is observed then."""

    answered = threading.Event()

    def on_batch(self, record: Any) -> None:
        self.answered.wait(3)
        super().on_batch(record)


def test_request_span_is_complete_even_if_the_batch_is_observed_after_the_answer(
    traced: Callable[..., TracedServer],
) -> None:
    """The request span must carry its batch size and phases whatever the order in which
    the answer and the batch observation happen."""
    _LateObserver.answered = threading.Event()
    server = traced(tracing_class=_LateObserver)
    answer = Answer()
    server.client.async_infer("quick", _inputs(3), callback=answer.set, request_id="req-late")
    if answer.done.wait(WAIT_S):
        _LateObserver.answered.set()  # lets the observer (if it still waits) go on
    answer.wait()

    spans = server.wait_for(_complete("req-late"))
    request = _requests(spans)["req-late"]
    assert (request.attributes or {})["inferd.batch.size"] == 3
    assert set(_children(spans, request)) == set(PHASES)
    for child in _children(spans, request).values():
        assert _interval(child)[1] <= _interval(request)[1], child.name


def test_failed_request_records_its_grpc_status(traced: Callable[..., TracedServer]) -> None:
    server = traced()
    wrong = grpcclient.InferInput("INPUT0", [1, BATCHING_WIDTH + 1], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, BATCHING_WIDTH + 1), np.float32))
    with pytest.raises(InferenceServerException):
        server.client.infer("quick", [wrong], request_id="req-bad")

    spans = server.traced_marker("quick", "req-after-bad")
    request = _requests(spans)["req-bad"]
    assert (request.attributes or {})["rpc.grpc.status_code"] == (
        grpc.StatusCode.INVALID_ARGUMENT.value[0]
    )
    assert request.status.status_code == trace.StatusCode.ERROR
    assert not _batches_linking(spans, request)  # it never reached a batch


# --- propagation ------------------------------------------------------------------------


def test_traceparent_header_continues_the_client_trace(
    traced: Callable[..., TracedServer],
) -> None:
    server = traced()
    headers = {"traceparent": SAMPLED, "tracestate": "vendor=opaque"}
    server.client.infer("quick", _inputs(1), request_id="req-child", headers=headers)

    spans = server.wait_for(_complete("req-child"))
    request = _requests(spans)["req-child"]
    assert _trace_id(request) == TRACE_ID
    assert _parent_id(request) == PARENT_ID
    assert request.parent is not None and request.parent.is_remote
    assert request.context.trace_state.get("vendor") == "opaque"
    for child in _children(spans, request).values():
        assert _trace_id(child) == TRACE_ID


def test_inferd_clients_send_the_current_span(traced: Callable[..., TracedServer]) -> None:
    server = traced()
    provider = TracerProvider()  # the application's own; OpenTelemetry's global is untouched
    tracer = provider.get_tracer("test-application")
    data = {"INPUT0": _rows(1)}

    with (
        tracer.start_as_current_span("application-sync") as sync_span,
        Client(server.address) as client,
    ):
        client.infer("quick", data, request_id="req-sync")

    async def call_async() -> trace.Span:
        with tracer.start_as_current_span("application-async") as span:
            async with AsyncClient(server.address) as client:
                await client.infer("quick", data, request_id="req-async")
        return span

    async_span = asyncio.run(call_async())
    with Client(server.address) as client:  # no current span: no header, a new trace
        client.infer("quick", data, request_id="req-none")

    spans = server.wait_for(_complete("req-sync", "req-async", "req-none"))
    requests = _requests(spans)
    for rid, client_span in (("req-sync", sync_span), ("req-async", async_span)):
        context = client_span.get_span_context()
        assert _trace_id(requests[rid]) == _hex(context.trace_id, 32), rid
        assert _parent_id(requests[rid]) == _hex(context.span_id, 16), rid
    assert requests["req-none"].parent is None
    provider.shutdown()


def test_client_metadata_carries_trace_context_and_baggage() -> None:
    from opentelemetry import baggage, context

    from inferd.clients._propagation import trace_metadata

    assert trace_metadata() is None  # nothing current: no headers at all
    provider = TracerProvider()
    token = context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        with provider.get_tracer("test-application").start_as_current_span("call") as span:
            metadata = dict(trace_metadata() or ())
    finally:
        context.detach(token)
        provider.shutdown()
    span_context = span.get_span_context()
    assert set(metadata) == {"traceparent", "baggage"}
    assert metadata["baggage"] == "tenant=acme"
    version, trace_id, span_id, flags = metadata["traceparent"].split("-")
    assert (version, trace_id, span_id) == (
        "00",
        _hex(span_context.trace_id, 32),
        _hex(span_context.span_id, 16),
    )
    assert int(flags, 16) & 0x01  # sampled (newer SDKs also set 0x02, random trace id)


# --- sampling ---------------------------------------------------------------------------


def test_rate_zero_traces_nothing_but_a_sampled_client_span(
    traced: Callable[..., TracedServer],
) -> None:
    server = traced(rate=0.0)
    server.infer("quick", "req-plain")
    server.infer("quick", "req-unsampled", traceparent=NOT_SAMPLED)
    # A malformed header is no client span (W3C: start a new trace), so the rate decides.
    server.infer("quick", "req-malformed", traceparent="00-not-a-trace-01")

    spans = server.traced_marker("quick", "req-sampled")
    assert set(_requests(spans)) == {"req-sampled"}
    assert _trace_id(_requests(spans)["req-sampled"]) == TRACE_ID
    assert len([span for span in spans if span.name == "batch"]) == 1


def test_trace_setting_turns_tracing_on_and_off_at_runtime(
    traced: Callable[..., TracedServer],
) -> None:
    server = traced(rate=0.0)
    client = server.client
    assert client.get_trace_settings().settings["trace_level"].value == ["OFF"]

    client.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"]})
    server.infer("quick", "req-on")
    server.infer("other", "req-on-other")
    client.update_trace_settings(model_name="quick", settings={"trace_level": ["OFF"]})
    server.infer("quick", "req-model-off")
    server.infer("other", "req-other-on")
    client.update_trace_settings(settings={"trace_level": ["OFF"]})
    server.infer("other", "req-global-off")
    # OFF still continues a sampled client trace (parent-based), like rate 0.
    server.infer("quick", "req-off-but-parent", traceparent=SAMPLED)

    server.traced_marker("quick", "req-marker-quick")
    spans = server.traced_marker("other", "req-marker-other")
    assert set(_requests(spans)) == {
        "req-on",
        "req-on-other",
        "req-other-on",
        "req-off-but-parent",
        "req-marker-quick",
        "req-marker-other",
    }


def test_trace_rate_traces_one_request_in_n(traced: Callable[..., TracedServer]) -> None:
    server = traced()
    response = server.client.update_trace_settings(settings={"trace_rate": ["3"]})
    assert response.settings["trace_rate"].value == ["3"]
    for index in range(6):
        server.infer("quick", f"req-{index}")

    spans = server.traced_marker("quick", "req-marker")
    traced_ids = set(_requests(spans)) - {"req-marker"}
    assert len(traced_ids) == 2, sorted(traced_ids)


def test_trace_count_runs_down(traced: Callable[..., TracedServer]) -> None:
    server = traced()
    response = server.client.update_trace_settings(settings={"trace_count": ["2"]})
    assert response.settings["trace_count"].value == ["2"]
    for index in range(4):
        server.infer("quick", f"req-{index}")

    spans = server.traced_marker("quick", "req-marker")
    assert set(_requests(spans)) - {"req-marker"} == {"req-0", "req-1"}
    assert server.client.get_trace_settings().settings["trace_count"].value == ["0"]


def test_tracing_config_from_flags_and_environment() -> None:
    assert tracing_config(None, None, {}) is None
    assert tracing_config("none", None, {"OTEL_TRACES_EXPORTER": "otlp"}) is None  # flag wins
    assert tracing_config(None, None, {"OTEL_TRACES_EXPORTER": "none"}) is None

    from_env = tracing_config(None, None, {"OTEL_TRACES_EXPORTER": "otlp"})
    assert from_env == TracingConfig("otlp", "grpc", 1)
    http = tracing_config("otlp", None, {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"})
    assert http is not None and http.protocol == "http/protobuf"

    ratio = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"}
    assert tracing_config("otlp", None, ratio) == TracingConfig("otlp", "grpc", 4)
    off = {"OTEL_TRACES_SAMPLER": "always_off"}
    assert tracing_config("otlp", None, off) == TracingConfig("otlp", "grpc", 0)
    assert tracing_config("otlp", 0.1, ratio) == TracingConfig("otlp", "grpc", 10)  # flag wins

    for exporter, rate, environ in (
        ("zipkin", None, {}),
        ("otlp", 1.5, {}),
        ("otlp", -0.1, {}),
        ("otlp", None, {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}),
    ):
        with pytest.raises(ValueError):
            tracing_config(exporter, rate, environ)


# --- TraceSetting -----------------------------------------------------------------------


def _settings(response: pb.TraceSettingResponse | Any) -> dict[str, list[str]]:
    return {key: list(value.value) for key, value in response.settings.items()}


def test_trace_setting_round_trip_global_and_per_model(
    traced: Callable[..., TracedServer],
) -> None:
    client = traced().client
    initial = _settings(client.get_trace_settings())
    assert initial["trace_level"] == ["TIMESTAMPS"]
    assert initial["trace_rate"] == ["1"]
    assert initial["trace_count"] == ["-1"]
    assert "log_frequency" in initial
    assert "trace_file" not in initial

    updated = _settings(client.update_trace_settings(settings={"trace_rate": ["10"]}))
    assert updated == {**initial, "trace_rate": ["10"]}
    assert _settings(client.get_trace_settings()) == updated

    model = _settings(
        client.update_trace_settings(
            model_name="quick", settings={"trace_level": ["OFF"], "trace_count": ["5"]}
        )
    )
    assert model == {**updated, "trace_level": ["OFF"], "trace_count": ["5"]}
    assert _settings(client.get_trace_settings(model_name="quick")) == model
    assert _settings(client.get_trace_settings(model_name="other")) == updated
    assert _settings(client.get_trace_settings()) == updated  # global untouched

    # A global change shows through where the model has no override of its own.
    client.update_trace_settings(settings={"trace_rate": ["7"]})
    assert _settings(client.get_trace_settings(model_name="quick"))["trace_rate"] == ["7"]

    # An empty value (tritonclient: None) clears the model's override.
    cleared = _settings(
        client.update_trace_settings(model_name="quick", settings={"trace_level": None})
    )
    assert cleared["trace_level"] == ["TIMESTAMPS"]
    assert cleared["trace_count"] == ["5"]
    cleared = _settings(
        client.update_trace_settings(model_name="quick", settings={"trace_count": None})
    )
    assert cleared == _settings(client.get_trace_settings())


@pytest.mark.parametrize(
    ("model", "settings", "code"),
    [
        ("", {"trace_file": ["/tmp/trace.json"]}, grpc.StatusCode.INVALID_ARGUMENT),
        ("quick", {"trace_file": ["/tmp/trace.json"]}, grpc.StatusCode.INVALID_ARGUMENT),
        ("", {"trace_level": ["LOUD"]}, grpc.StatusCode.INVALID_ARGUMENT),
        ("", {"trace_rate": ["zero"]}, grpc.StatusCode.INVALID_ARGUMENT),
        ("", {"trace_rate": ["0"]}, grpc.StatusCode.INVALID_ARGUMENT),
        ("", {"trace_count": ["-2"]}, grpc.StatusCode.INVALID_ARGUMENT),
        ("", {"no_such_setting": ["1"]}, grpc.StatusCode.INVALID_ARGUMENT),
        ("no_such_model", {"trace_level": ["OFF"]}, grpc.StatusCode.NOT_FOUND),
    ],
)
def test_trace_setting_refuses(
    traced: Callable[..., TracedServer],
    model: str,
    settings: dict[str, list[str]],
    code: grpc.StatusCode,
) -> None:
    server = traced()
    before = _settings(server.client.get_trace_settings(model_name="quick"))
    request = pb.TraceSettingRequest(model_name=model)
    for key, values in settings.items():
        request.settings[key].value.extend(values)
    with grpc.insecure_channel(server.address) as channel, pytest.raises(grpc.RpcError) as failed:
        pb_grpc.GRPCInferenceServiceStub(channel).TraceSetting(request, timeout=WAIT_S)
    assert failed.value.code() == code, failed.value.details()
    # Nothing changed, not even a setting listed beside the refused one.
    assert _settings(server.client.get_trace_settings(model_name="quick")) == before


def test_refused_trace_setting_changes_nothing_beside_it(
    traced: Callable[..., TracedServer],
) -> None:
    server = traced()
    before = _settings(server.client.get_trace_settings())
    with pytest.raises(InferenceServerException) as failed:
        server.client.update_trace_settings(
            settings={"trace_rate": ["5"], "trace_file": ["/etc/passwd"]}
        )
    assert "INVALID_ARGUMENT" in str(failed.value.status())
    assert _settings(server.client.get_trace_settings()) == before


# --- tracing off (the default) ----------------------------------------------------------


def test_tracing_off_answers_trace_setting_off_and_hands_the_engine_no_trace(
    repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    given: list[InferRequest] = []  # what the engine was handed (the server runs here)
    infer, submit = Engine.infer, Engine.submit

    async def recording(self: Engine, request: InferRequest) -> InferResponse:
        given.append(request)
        return await infer(self, request)

    def recording_submit(self: Engine, request: InferRequest) -> Submitted | None:
        given.append(request)  # the threads front's way in
        return submit(self, request)

    monkeypatch.setattr(Engine, "infer", recording)
    monkeypatch.setattr(Engine, "submit", recording_submit)
    server = InProcessServer(repository, tracing=None)
    try:
        server.client.infer(
            "quick", _inputs(1), request_id="req-off", headers={"traceparent": SAMPLED}
        )
        assert [request.trace for request in given] == [None]
        for model in ("", "quick"):
            settings = _settings(server.client.get_trace_settings(model_name=model))
            assert settings["trace_level"] == ["OFF"], model
        with pytest.raises(InferenceServerException) as failed:
            server.client.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"]})
        assert "UNAVAILABLE" in str(failed.value.status())
        assert "--trace-exporter" in failed.value.message()
        with pytest.raises(InferenceServerException) as failed:
            server.client.update_trace_settings(settings={"trace_file": ["/tmp/t.json"]})
        assert "INVALID_ARGUMENT" in str(failed.value.status())
    finally:
        server.close()


# The server without tracing, in a fresh interpreter: OpenTelemetry is never imported.
_OFF_SCRIPT = """
import asyncio, sys
from pathlib import Path
import grpc
from inferd.protos import grpc_service_pb2 as pb, grpc_service_pb2_grpc as pb_grpc
from inferd.server.app import InferenceServer
from inferd.server.config import ServerConfig

async def main():
    config = ServerConfig(model_repository=Path(sys.argv[1]), grpc_port=0, metrics_port=None)
    async with InferenceServer(config) as server:
        async with grpc.aio.insecure_channel(server.addresses[0]) as channel:
            request = pb.ModelInferRequest(model_name="quick")
            request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 4])
            request.raw_input_contents.append(bytes(16))
            metadata = (("traceparent", sys.argv[2]),)
            await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, metadata=metadata)
    print(sorted(name for name in sys.modules if name.startswith("opentelemetry")))

asyncio.run(main())
"""


def test_tracing_off_never_imports_opentelemetry(repository: Path) -> None:
    environ = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", _OFF_SCRIPT, str(repository), SAMPLED],
        capture_output=True,
        text=True,
        env=environ,
        timeout=WAIT_S,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# --- end to end: inferd serve exporting OTLP to a receiver ------------------------------


def _received_requests(spans: Sequence[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    return {
        str(span.attributes["inferd.request.id"]): span
        for span in spans
        if span.name == "ModelInfer"
    }


def _send_through(server: ServerProcess) -> None:
    """Three requests batched together, and one continuing a client trace."""
    client = grpcclient.InferenceServerClient(server.address)
    try:
        answers = {rid: Answer() for rid in ("e2e-a", "e2e-b", "e2e-c")}
        for count, (rid, answer) in zip((1, 2, 1), answers.items(), strict=True):
            client.async_infer("gathered", _inputs(count), callback=answer.set, request_id=rid)
        for answer in answers.values():
            answer.wait()
        client.infer("quick", _inputs(1), request_id="e2e-child", headers={"traceparent": SAMPLED})
    finally:
        client.close()


def _check_exported(spans: Sequence[ReceivedSpan]) -> None:
    requests = _received_requests(spans)
    assert set(requests) == {"e2e-a", "e2e-b", "e2e-c", "e2e-child"}
    assert {span.resource.get("service.name") for span in spans} == {"inferd-test"}
    for rid, request in requests.items():
        assert request.is_server, rid
        children = {s.name for s in spans if s.parent_span_id == request.span_id}
        assert children == set(PHASES), rid
    assert requests["e2e-child"].trace_id == TRACE_ID
    assert requests["e2e-child"].parent_span_id == PARENT_ID
    batches = [span for span in spans if span.name == "batch"]
    shared = [
        batch
        for batch in batches
        if {(r.trace_id, r.span_id) for rid, r in requests.items() if rid != "e2e-child"}
        <= set(batch.links)
    ]
    assert len(shared) == 1, batches
    assert shared[0].attributes["inferd.batch.rows"] == 4
    assert shared[0].attributes["inferd.batch.requests"] == 3


@pytest.mark.parametrize("frontends", ["1", "2"])
def test_serve_exports_spans_over_otlp_grpc(repository: Path, frontends: str) -> None:
    """With several front processes the engine's phase and batch spans are exported by
    the engine process, joined to the front process's request span."""
    with OtlpGrpcReceiver() as receiver:
        server = ServerProcess(
            repository,
            "--frontends",
            frontends,
            env={
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_HEADERS": "x-inferd-test=grpc-header",
                "OTEL_SERVICE_NAME": "inferd-test",
                "OTEL_BSP_SCHEDULE_DELAY": "100",
            },
        )
        try:
            server.wait_ready()
            _send_through(server)
        finally:
            code = server.stop()  # SIGTERM: drains, then flushes the spans
        assert code == 0, server.log_text()
        spans = receiver.spans()  # the exporter's calls completed before the process exited
        _check_exported(spans)
        assert all(h.get("x-inferd-test") == "grpc-header" for h in receiver.headers)


def test_serve_exports_spans_over_otlp_http_with_the_cli_flags(repository: Path) -> None:
    with OtlpHttpReceiver() as receiver:
        server = ServerProcess(
            repository,
            "--trace-exporter",
            "otlp",
            "--trace-rate",
            "1",
            env={
                "OTEL_TRACES_EXPORTER": "none",  # the flag turns tracing on regardless
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_HEADERS": "x-inferd-test=http-header",
                "OTEL_SERVICE_NAME": "inferd-test",
                "OTEL_BSP_SCHEDULE_DELAY": "100",
            },
        )
        try:
            server.wait_ready()
            _send_through(server)
        finally:
            code = server.stop()
        assert code == 0, server.log_text()
        _check_exported(receiver.spans())
        assert receiver.headers
        assert all(h.get("x-inferd-test") == "http-header" for h in receiver.headers)


def test_serve_refuses_a_bad_trace_rate(repository: Path) -> None:
    server = ServerProcess(repository, "--trace-exporter", "otlp", "--trace-rate", "2")
    assert server.wait() == 1
    assert "trace rate" in server.log_text()


def test_serve_without_tracing_answers_trace_level_off(
    start_server: Callable[..., ServerProcess], repository: Path
) -> None:
    server = start_server(repository)
    with grpc.insecure_channel(server.address) as channel:
        response = pb_grpc.GRPCInferenceServiceStub(channel).TraceSetting(
            pb.TraceSettingRequest(), timeout=WAIT_S
        )
    assert _settings(response)["trace_level"] == ["OFF"]


def test_a_streamed_request_is_traced_like_a_unary_one(
    traced: Callable[..., TracedServer],
) -> None:
    server = traced()
    answers: list[Any] = []
    server.client.start_stream(callback=lambda result, error: answers.append(error or result))
    try:
        server.client.async_stream_infer("quick", _inputs(2), request_id="req-stream")
        spans = server.wait_for(_complete("req-stream"))
    finally:
        server.client.stop_stream()
    assert len(answers) == 1 and not isinstance(answers[0], InferenceServerException)
    request = _requests(spans)["req-stream"]
    assert set(_children(spans, request)) == set(PHASES)
    (batch,) = _batches_linking(spans, request)
    assert batch.attributes is not None and batch.attributes["inferd.batch.rows"] == 2
