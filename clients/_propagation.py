"""W3C trace context for outgoing calls, when the application uses OpenTelemetry.

opentelemetry is not a dependency of the clients: without it, calls carry no trace
headers; with it, the caller's current span and baggage travel as gRPC metadata
(``traceparent``, ``tracestate``, ``baggage``) so the server's spans join its trace.
"""

from __future__ import annotations

try:
    from opentelemetry import propagate
except ImportError:  # tracing is optional
    propagate = None  # type: ignore[assignment]


def trace_metadata() -> tuple[tuple[str, str], ...] | None:
    """The current context's propagation headers, or None when there is nothing to send."""
    if propagate is None:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return tuple(carrier.items()) or None
