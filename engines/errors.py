"""The engine's error ladder: one exception type, one code per kind of failure.

The server maps each code to a gRPC status in one place (``inferd.server.grpc.status``), so
engine code says what went wrong, never how a transport reports it.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.Enum):
    INVALID_ARGUMENT = "invalid argument"  # the request is wrong; retrying cannot help
    NOT_FOUND = "not found"  # unknown model or version
    ALREADY_EXISTS = "already exists"  # e.g. a shared memory region name that is taken
    UNAVAILABLE = "unavailable"  # overloaded, loading or shutting down; retry later
    DEADLINE_EXCEEDED = "deadline exceeded"
    CANCELLED = "cancelled"
    UNSUPPORTED = "unsupported"  # valid protocol, not implemented by inferd
    INTERNAL = "internal"  # a bug or a backend failure


class EngineError(Exception):
    """A failure with a code and a message meant for the client to read."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"EngineError({self.code.name}, {self.message!r})"
