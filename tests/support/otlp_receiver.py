"""A minimal OTLP trace receiver for the tests: what a collector would see.

``OtlpGrpcReceiver`` serves the real ``opentelemetry.proto.collector.trace.v1.TraceService``
over gRPC; ``OtlpHttpReceiver`` answers ``POST /v1/traces`` with protobuf bodies
(``http/protobuf``). Both listen on 127.0.0.1 on a free port, keep every
``ExportTraceServiceRequest`` they receive, and flatten them into ``ReceivedSpan``s.
"""

from __future__ import annotations

import gzip
import http.server
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2


def attribute_value(value: common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [attribute_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return {item.key: attribute_value(item.value) for item in value.kvlist_value.values}
    return getattr(value, kind)


def attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: attribute_value(pair.value) for pair in pairs}


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as exported, with its resource's attributes; ids are hex like W3C's."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str  # "" for a root span
    kind: int  # trace_pb2.Span.SpanKind
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str
    links: tuple[tuple[str, str], ...]  # (trace id, span id) of each link
    status_code: int  # trace_pb2.Status.StatusCode

    @property
    def is_server(self) -> bool:
        return self.kind == trace_pb2.Span.SPAN_KIND_SERVER


class _Collected:
    """The requests received, shared by the receiver and its transport's threads."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.headers: list[Mapping[str, str | bytes]] = []

    def add(
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        headers: Mapping[str, str | bytes],
    ) -> None:
        with self._lock:
            self.requests.append(request)
            self.headers.append(headers)
            self._lock.notify_all()

    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            requests = list(self.requests)
        received = []
        for request in requests:
            for resource_spans in request.resource_spans:
                resource = attributes(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        received.append(
                            ReceivedSpan(
                                name=span.name,
                                trace_id=span.trace_id.hex(),
                                span_id=span.span_id.hex(),
                                parent_span_id=span.parent_span_id.hex(),
                                kind=span.kind,
                                attributes=attributes(span.attributes),
                                resource=resource,
                                scope=scope_spans.scope.name,
                                links=tuple(
                                    (link.trace_id.hex(), link.span_id.hex()) for link in span.links
                                ),
                                status_code=span.status.code,
                            )
                        )
        return received

    def wait_for(
        self, predicate: Callable[[list[ReceivedSpan]], bool], timeout: float
    ) -> list[ReceivedSpan]:
        """Wait (bounded) until ``predicate(spans)`` holds; return the spans either way."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                spans = self.spans()
                if predicate(spans):
                    return spans
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return spans
                self._lock.wait(remaining)


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, collected: _Collected) -> None:
        self._collected = collected

    def Export(
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: grpc.ServicerContext,
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self._collected.add(request, dict(context.invocation_metadata()))
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpGrpcReceiver:
    """``with OtlpGrpcReceiver() as receiver:`` export to ``receiver.endpoint``."""

    def __init__(self) -> None:
        self._collected = _Collected()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(
            _TraceService(self._collected), self._server
        )
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[trace_service_pb2.ExportTraceServiceRequest]:
        return self._collected.requests

    @property
    def headers(self) -> list[Mapping[str, str | bytes]]:
        return self._collected.headers

    def spans(self) -> list[ReceivedSpan]:
        return self._collected.spans()

    def wait_for(
        self, predicate: Callable[[list[ReceivedSpan]], bool], timeout: float = 30
    ) -> list[ReceivedSpan]:
        return self._collected.wait_for(predicate, timeout)

    def __enter__(self) -> OtlpGrpcReceiver:
        self._server.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.stop(grace=None).wait()


class _Handler(http.server.BaseHTTPRequestHandler):
    collected: _Collected  # set on the subclass each receiver makes

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        encoding = self.headers.get("Content-Encoding", "")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        if self.path != "/v1/traces":
            self.send_error(404)
            return
        request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
        self.collected.add(request, {key.lower(): value for key, value in self.headers.items()})
        answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass


class OtlpHttpReceiver:
    """``with OtlpHttpReceiver() as receiver:`` export (http/protobuf) to ``receiver.endpoint``."""

    def __init__(self) -> None:
        self._collected = _Collected()
        handler = type("Handler", (_Handler,), {"collected": self._collected})
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def headers(self) -> list[Mapping[str, str | bytes]]:
        return self._collected.headers

    def spans(self) -> list[ReceivedSpan]:
        return self._collected.spans()

    def wait_for(
        self, predicate: Callable[[list[ReceivedSpan]], bool], timeout: float = 30
    ) -> list[ReceivedSpan]:
        return self._collected.wait_for(predicate, timeout)

    def __enter__(self) -> OtlpHttpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
