"""An OTLP/gRPC trace receiver that counts spans and drops them: the cheapest collector,
so a tracing benchmark measures inferd's tracing, not a collector.

    python -m inferd.bench.peers.otlp_sink
"""

from __future__ import annotations

import signal
import sys
import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class _Sink(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans = 0

    def Export(self, request, context):  # type: ignore[no-untyped-def]
        self.spans += sum(
            len(scope.spans)
            for resource in request.resource_spans
            for scope in resource.scope_spans
        )
        return trace_service_pb2.ExportTraceServiceResponse()


def main() -> None:
    sink = _Sink()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"listening on 127.0.0.1:{port}", file=sys.stderr)
    print("ready: otlp sink", file=sys.stderr, flush=True)
    stop.wait()
    print(f"received {sink.spans} spans", file=sys.stderr, flush=True)
    server.stop(1).wait()


if __name__ == "__main__":
    main()
