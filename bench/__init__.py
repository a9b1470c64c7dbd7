"""Load generation and benchmarks against any v2 gRPC server (``inferd bench`` is planned).

Depends only on ``inferd.clients`` and the protocol, never on the server or engines.
"""
