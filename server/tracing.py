"""OpenTelemetry traces: a server span per ModelInfer, children for each phase, one span
per executed batch linked to every request it served.

Off by default, and then nothing here runs: the servicer holds ``None`` and the engine
sees no trace handles. On, it is configured by ``--trace-exporter``/``--trace-rate`` or
the standard ``OTEL_*`` variables, and steered at runtime by the TraceSetting RPC.
opentelemetry-sdk is the optional ``tracing`` extra, imported only when tracing is on.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from inferd.engines import BatchRecord, EngineError, ErrorCode
from inferd.server.grpc.status import STATUS_BY_ERROR_CODE

EXPORTERS = ("none", "console", "otlp")
_LEVELS = ("OFF", "TIMESTAMPS")
# perf_counter_ns (the engine's clock) to nanoseconds since the epoch (OpenTelemetry's).
_EPOCH_OFFSET_NS = time.time_ns() - time.perf_counter_ns()


def _epoch(perf_ns: int) -> int:
    return perf_ns + _EPOCH_OFFSET_NS


@dataclass(frozen=True, slots=True)
class TracingConfig:
    exporter: str  # "console" or "otlp"
    protocol: str  # OTLP: "grpc" or "http/protobuf"
    rate: int  # trace one request in `rate`; 0: none until TraceSetting turns it on


def tracing_config(
    exporter: str | None, rate: float | None, environ: Mapping[str, str] = os.environ
) -> TracingConfig | None:
    """The configuration from the CLI flags, else the OTEL_* variables; None: tracing off.

    ``rate`` is the fraction of requests traced (1.0 all, 0.01 one in a hundred). Without
    it, OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG decide, always parent-based: a
    request whose client's span was sampled is always traced.
    """
    chosen = exporter or environ.get("OTEL_TRACES_EXPORTER", "none").split(",")[0].strip()
    if chosen not in EXPORTERS:
        raise ValueError(f"unknown trace exporter '{chosen}' (choose from {', '.join(EXPORTERS)})")
    if chosen == "none":
        return None
    protocol = environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    )
    if protocol not in ("grpc", "http/protobuf"):
        raise ValueError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL must be grpc or http/protobuf, got '{protocol}'"
        )
    fraction = rate if rate is not None else _sampler_fraction(environ)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"the trace rate is a fraction between 0 and 1, got {fraction}")
    return TracingConfig(chosen, protocol, round(1 / fraction) if fraction > 0 else 0)


def _sampler_fraction(environ: Mapping[str, str]) -> float:
    sampler = environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on")
    if sampler.endswith("always_off"):
        return 0.0
    if sampler.endswith("traceidratio"):
        return float(environ.get("OTEL_TRACES_SAMPLER_ARG", "1.0"))
    return 1.0


class TraceSettings:
    """Triton's trace settings, global and per model, as the TraceSetting RPC sees them."""

    def __init__(self, rate: int) -> None:
        self._lock = threading.Lock()
        self._global: dict[str, str] = {
            "trace_level": "TIMESTAMPS" if rate > 0 else "OFF",
            "trace_rate": str(max(rate, 1)),
            "trace_count": "-1",
            "log_frequency": "0",
            "trace_mode": "opentelemetry",
        }
        self._models: dict[str, dict[str, str]] = {}
        self._seen: dict[str, itertools.count[int]] = {}

    def effective(self, model: str) -> dict[str, str]:
        with self._lock:
            return {**self._global, **self._models.get(model, {})}

    def update(self, model: str, changes: Mapping[str, Sequence[str]]) -> dict[str, str]:
        """Apply a TraceSetting request; an empty value clears a model's override."""
        for key, values in changes.items():
            self._check(key, values)
        with self._lock:
            target = self._models.setdefault(model, {}) if model else self._global
            for key, values in changes.items():
                if values:
                    target[key] = values[0]
                elif model:
                    target.pop(key, None)
            if model and not target:
                self._models.pop(model, None)
        return self.effective(model)

    @staticmethod
    def _check(key: str, values: Sequence[str]) -> None:
        if key not in ("trace_level", "trace_rate", "trace_count", "log_frequency", "trace_mode"):
            raise EngineError(ErrorCode.INVALID_ARGUMENT, f"unknown trace setting '{key}'")
        if not values:
            return
        value = values[0]
        if key == "trace_level" and any(level not in _LEVELS for level in values):
            raise EngineError(
                ErrorCode.INVALID_ARGUMENT,
                f"trace_level must be OFF or TIMESTAMPS, got {list(values)}",
            )
        if key in ("trace_rate", "trace_count", "log_frequency"):
            try:
                number = int(value)
            except ValueError:
                raise EngineError(
                    ErrorCode.INVALID_ARGUMENT, f"{key} must be an integer, got '{value}'"
                ) from None
            if (key == "trace_rate" and number < 1) or (key == "trace_count" and number < -1):
                raise EngineError(ErrorCode.INVALID_ARGUMENT, f"invalid {key} '{value}'")
        if key == "trace_mode" and value != "opentelemetry":
            raise EngineError(ErrorCode.INVALID_ARGUMENT, "inferd traces with opentelemetry only")

    def should_trace(self, model: str) -> bool:
        """Triton's rate: every Nth request of a model; trace_count, if set, runs down."""
        with self._lock:
            override = self._models.get(model, {})
            settings = {**self._global, **override}
            count = int(settings["trace_count"])
            if settings["trace_level"] == "OFF" or count == 0:
                return False
            if next(self._seen.setdefault(model, itertools.count())) % int(settings["trace_rate"]):
                return False
            if count > 0:
                holder = override if "trace_count" in override else self._global
                holder["trace_count"] = str(count - 1)
            return True


def _exporter(config: TracingConfig) -> SpanExporter:
    if config.exporter == "console":
        return ConsoleSpanExporter()
    if config.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
            OTLPSpanExporter,
        )
    return OTLPSpanExporter()  # endpoint, headers and timeout from the OTEL_* variables


class RequestTrace:
    """One traced ModelInfer: its server span, and when the RPC began."""

    __slots__ = ("_tracer", "batch_rows", "span", "started_ns")

    def __init__(self, tracer: trace.Tracer, span: trace.Span, started_ns: int) -> None:
        self._tracer = tracer
        self.span = span
        self.started_ns = started_ns
        self.batch_rows = 0

    def child(self, name: str, start_ns: int, end_ns: int, **attributes: Any) -> None:
        span = self._tracer.start_span(
            name,
            context=trace.set_span_in_context(self.span),
            start_time=_epoch(start_ns),
            attributes=attributes or None,
        )
        span.end(end_time=_epoch(end_ns))

    def reference(self) -> tuple[str, str, bool, int]:
        """What another process needs to continue this request's trace: the trace and
        span ids (hex), whether it is sampled, and when the RPC began."""
        context = self.span.get_span_context()
        return (
            trace.format_trace_id(context.trace_id),
            trace.format_span_id(context.span_id),
            context.trace_flags.sampled,
            self.started_ns,
        )

    def end(self, error: BaseException | None, encode_start_ns: int | None) -> None:
        now = time.perf_counter_ns()
        if encode_start_ns is not None:
            self.child("encode", encode_start_ns, now)
        self.span.set_attribute("inferd.batch.size", self.batch_rows)
        status = grpc.StatusCode.OK
        if isinstance(error, EngineError):
            status = STATUS_BY_ERROR_CODE[error.code]
        elif isinstance(error, asyncio.CancelledError):
            status = grpc.StatusCode.CANCELLED
        elif error is not None:
            status = grpc.StatusCode.INTERNAL
        self.span.set_attribute("rpc.grpc.status_code", status.value[0])
        if status is not grpc.StatusCode.OK:
            message = error.message if isinstance(error, EngineError) else repr(error)
            self.span.set_status(Status(StatusCode.ERROR, message))
        self.span.end(end_time=_epoch(now))


class Tracing:
    """Creates the spans; the engine calls ``on_batch`` (its BatchObserver) per batch."""

    def __init__(self, config: TracingConfig, exporter: SpanExporter | None = None) -> None:
        self.settings = TraceSettings(config.rate)
        # Parent-based: a client's sampled span is always continued, an unsampled one
        # never. Requests without one are decided in start_request, by the TraceSetting
        # rules, before any span exists: an untraced request costs a counter, not a span.
        self._provider = TracerProvider(
            sampler=ParentBased(root=ALWAYS_ON), resource=Resource.create()
        )
        self._provider.add_span_processor(BatchSpanProcessor(exporter or _exporter(config)))
        self._tracer = self._provider.get_tracer("inferd")

    def start_request(
        self,
        metadata: Iterable[tuple[str, str | bytes]] | None,
        model: str,
        version: str,
        request_id: str,
    ) -> RequestTrace | None:
        """The request's server span, continuing the client's trace; None when not sampled."""
        started_ns = time.perf_counter_ns()
        carrier = {key: value for key, value in metadata or () if isinstance(value, str)}
        parent = propagate.extract(carrier) if carrier else Context()
        # A valid client span decides (parent-based); otherwise, a malformed traceparent
        # included, the TraceSetting rules do.
        has_parent = "traceparent" in carrier and (
            trace.get_current_span(parent).get_span_context().is_valid
        )
        if not has_parent and not self.settings.should_trace(model):
            return None
        span = self._tracer.start_span(
            "ModelInfer",
            context=parent,
            kind=SpanKind.SERVER,
            start_time=_epoch(started_ns),
            attributes={
                "rpc.system": "grpc",
                "rpc.service": "inference.GRPCInferenceService",
                "rpc.method": "ModelInfer",
                "inferd.model.name": model,
                "inferd.model.version": version,
                "inferd.request.id": request_id,
            },
        )
        if not span.is_recording():
            return None
        return RequestTrace(self._tracer, span, started_ns)

    def remote_request(
        self, trace_id: str, span_id: str, sampled: bool, started_ns: int
    ) -> RequestTrace:
        """A request traced by a front process (``RequestTrace.reference`` there): this
        process's phase spans become children of that process's request span."""
        context = trace.SpanContext(
            int(trace_id, 16),
            int(span_id, 16),
            is_remote=True,
            trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED if sampled else 0),
        )
        return RequestTrace(self._tracer, trace.NonRecordingSpan(context), started_ns)

    def on_batch(self, record: BatchRecord) -> None:
        links = []
        for member in record.members:
            request = member.trace
            if not isinstance(request, RequestTrace):
                continue
            request.batch_rows = record.rows
            request.span.set_attribute("inferd.model.version", str(record.version))
            request.child("decode", request.started_ns, member.queued_ns)
            request.child("queue", member.queued_ns, record.start_ns)
            request.child("gather", record.start_ns, record.infer_start_ns)
            request.child(
                "compute",
                record.infer_start_ns,
                record.infer_end_ns,
                **{"inferd.instance": record.instance, "inferd.device": record.device},
            )
            request.child("scatter", record.infer_end_ns, record.done_ns)
            links.append(Link(request.span.get_span_context()))
        batch = self._tracer.start_span(
            "batch",
            context=Context(),
            links=links,
            start_time=_epoch(record.start_ns),
            attributes={
                "inferd.model.name": record.model,
                "inferd.model.version": str(record.version),
                "inferd.instance": record.instance,
                "inferd.device": record.device,
                "inferd.batch.rows": record.rows,
                "inferd.batch.requests": record.requests,
            },
        )
        if record.error is not None:
            batch.set_status(Status(StatusCode.ERROR, record.error))
        batch.end(end_time=_epoch(record.done_ns))

    def force_flush(self) -> None:
        self._provider.force_flush()

    def shutdown(self) -> None:
        self._provider.shutdown()
