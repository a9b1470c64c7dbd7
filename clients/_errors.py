"""The clients' exception tree, and the one place where gRPC errors are translated into it.

Every failure the server reports arrives as a ``grpc.RpcError`` carrying a status code;
callers catch the subclass for the status they care about, or ``InferdError`` for all.
A response that breaks the protocol (outputs that don't match their data) raises
``InternalError``, as gRPC itself does for a response it cannot parse.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import grpc


class InferdError(Exception):
    """Base of every error the inferd clients raise for a failed request.

    ``code`` is the gRPC status and ``message`` the server's own words, so
    ``str(error)`` reads ``[StatusCode.NOT_FOUND] Request for unknown model: ...``.
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"


class InvalidArgumentError(InferdError):
    """The request was malformed: a wrong shape, datatype, input name or parameter."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(InferdError):
    """The model, or the requested version of it, is unknown to the server."""

    code = grpc.StatusCode.NOT_FOUND


class UnavailableError(InferdError):
    """The server can't be reached, is shutting down, or the model isn't ready."""

    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhaustedError(InferdError):
    """The server is overloaded (queue full) or a message exceeds the size limit."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceededError(InferdError):
    """The request's timeout expired before the response arrived."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class UnimplementedError(InferdError):
    """The server doesn't implement this RPC."""

    code = grpc.StatusCode.UNIMPLEMENTED


class InternalError(InferdError):
    """The server failed while handling the request, or its response broke the protocol."""

    code = grpc.StatusCode.INTERNAL


class RequestCancelledError(InferdError):
    """The request was cancelled before it completed (by the server or the channel)."""

    code = grpc.StatusCode.CANCELLED


class UnexpectedStatusError(InferdError):
    """A status without a dedicated class above (e.g. UNKNOWN, PERMISSION_DENIED)."""

    def __init__(self, message: str, code: grpc.StatusCode) -> None:
        super().__init__(message)
        self.code = code


_ERROR_BY_CODE: dict[grpc.StatusCode, type[InferdError]] = {
    cls.code: cls
    for cls in (
        InvalidArgumentError,
        NotFoundError,
        UnavailableError,
        ResourceExhaustedError,
        DeadlineExceededError,
        UnimplementedError,
        InternalError,
        RequestCancelledError,
    )
}


def error_from_rpc(error: grpc.RpcError) -> InferdError:
    """The ``InferdError`` subclass matching a failed call's status code."""
    # Failed sync calls are grpc.Call and aio ones AioRpcError; both carry
    # code()/details(). A bare RpcError (user code, interceptors) carries neither.
    if isinstance(error, grpc.Call | grpc.aio.AioRpcError):
        code, message = error.code(), error.details() or ""
    else:
        code, message = grpc.StatusCode.UNKNOWN, str(error)
    cls = _ERROR_BY_CODE.get(code)
    if cls is None:
        return UnexpectedStatusError(message, code)
    return cls(message)


def error_from_stream(message: str) -> InferdError:
    """An ``error_message`` read from a ``ModelStreamInfer`` stream, as an error.

    A stream carries the server's message without its status code, so the error is an
    ``UnexpectedStatusError`` with code UNKNOWN. A client that needs the code sends the
    ``triton_grpc_error`` header instead, which makes the first error end the call with
    its status.
    """
    return UnexpectedStatusError(message, grpc.StatusCode.UNKNOWN)


@contextmanager
def translated_rpc_errors() -> Iterator[None]:
    """Re-raise a ``grpc.RpcError`` from the block as its ``InferdError``.

    A plain (sync) context manager so that the async client can wrap its ``await``
    in the same boundary.
    """
    try:
        yield
    except grpc.RpcError as error:
        raise error_from_rpc(error) from error
