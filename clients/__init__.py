"""Clients for inferd's gRPC endpoint, which speaks Triton's KServe v2 protocol.

``Client`` blocks; ``AsyncClient`` has the same methods as coroutines::

    with Client("127.0.0.1:8001") as client:
        outputs = client.infer("simple", {"INPUT0": a, "INPUT1": b})

``AsyncClient.stream_infer`` also speaks ``ModelStreamInfer``: ``StreamRequest`` objects
in, ``StreamResponse`` objects out, as many per request as a decoupled model sends::

    async for response in client.stream_infer(requests):
        print(response.request_id, response.final, response.outputs)

Tensors go in and come out as numpy arrays keyed by name (BYTES tensors as object
arrays of ``bytes``). Every failed call raises a subclass of ``InferdError`` named
after its gRPC status, e.g. ``NotFoundError`` for an unknown model. Both clients work
against Triton itself as well.
"""

from ._async_client import AsyncClient
from ._client import Client
from ._codec import (
    ModelMetadata,
    ParameterValue,
    RepositoryModel,
    ServerMetadata,
    StreamRequest,
    StreamResponse,
    TensorMetadata,
)
from ._errors import (
    DeadlineExceededError,
    InferdError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    RequestCancelledError,
    ResourceExhaustedError,
    UnavailableError,
    UnexpectedStatusError,
    UnimplementedError,
)

__all__ = [
    "AsyncClient",
    "Client",
    "DeadlineExceededError",
    "InferdError",
    "InternalError",
    "InvalidArgumentError",
    "ModelMetadata",
    "NotFoundError",
    "ParameterValue",
    "RepositoryModel",
    "RequestCancelledError",
    "ResourceExhaustedError",
    "ServerMetadata",
    "StreamRequest",
    "StreamResponse",
    "TensorMetadata",
    "UnavailableError",
    "UnexpectedStatusError",
    "UnimplementedError",
]
