"""One ``ModelStreamInfer`` call: many requests in, their responses out, as Triton does.

Each request read from the stream runs as its own task, so requests interleave; the
responses of one request keep their order and carry its ``id``. An error goes back in
``error_message`` and the stream stays open, unless the client sent the header
``triton_grpc_error: true``, in which case the first error ends the stream with its gRPC
status. After the client half-closes, the call ends with OK once every response has been
written. When the client cancels, its requests still queued are dropped.

Bounded: at most ``MAX_REQUESTS_IN_FLIGHT`` requests of one stream run at once (reading
pauses beyond that), and at most ``MAX_RESPONSES_WAITING`` responses wait to be written.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import TypeAlias

import grpc

from inferd.engines import EngineError, ErrorCode, ErrorResponse, InferResponse
from inferd.engines.client_memory.system import RequestRegions
from inferd.protos import grpc_service_pb2 as pb
from inferd.server.grpc.codec import (
    decode_infer_request,
    encode_infer_response,
    shared_memory_regions,
)
from inferd.server.grpc.status import STATUS_BY_ERROR_CODE
from inferd.server.request_path import Codec, InferCall, RequestPath

logger = logging.getLogger(__name__)

MAX_REQUESTS_IN_FLIGHT = 1024
MAX_RESPONSES_WAITING = 256
FINAL_RESPONSE = "triton_final_response"
GRPC_ERROR_HEADER = "triton_grpc_error"


@dataclass(frozen=True, slots=True)
class _Abort:
    """End the call with this status (``triton_grpc_error`` mode)."""

    code: grpc.StatusCode
    message: str


_Outgoing: TypeAlias = "pb.ModelStreamInferResponse | _Abort | None"  # None: all done


def _error_response(
    request: pb.ModelInferRequest, message: str, final: bool
) -> pb.ModelStreamInferResponse:
    # The request's id rides along so that a client can tell whose error it is, and the
    # final flag says whether more responses of that request may follow.
    response = pb.ModelInferResponse(
        model_name=request.model_name, model_version=request.model_version, id=request.id
    )
    response.parameters[FINAL_RESPONSE].bool_param = final
    return pb.ModelStreamInferResponse(error_message=message, infer_response=response)


def _stream_response(
    response: InferResponse, regions: RequestRegions | None
) -> pb.ModelStreamInferResponse:
    message = encode_infer_response(response, regions)
    message.parameters[FINAL_RESPONSE].bool_param = response.final
    return pb.ModelStreamInferResponse(infer_response=message)


# ModelStreamInfer's wire format, for the request path: a stream carries no deadline.
_STREAMED = Codec(decode_infer_request, _stream_response)


class StreamCall:
    """The state of one ModelStreamInfer call."""

    def __init__(self, requests: RequestPath, context: grpc.aio.ServicerContext) -> None:
        self._requests = requests
        self._context = context
        metadata = {key: value for key, value in context.invocation_metadata() or ()}
        self._grpc_errors = str(metadata.get(GRPC_ERROR_HEADER, "")).lower() == "true"
        self._outgoing: asyncio.Queue[_Outgoing] = asyncio.Queue(MAX_RESPONSES_WAITING)
        self._slots = asyncio.Semaphore(MAX_REQUESTS_IN_FLIGHT)
        self._tasks: set[asyncio.Task[None]] = set()

    async def responses(
        self, requests: AsyncIterator[pb.ModelInferRequest]
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        reader = asyncio.ensure_future(self._read(requests))
        try:
            while (message := await self._outgoing.get()) is not None:
                if isinstance(message, _Abort):
                    await self._context.abort(message.code, message.message)  # raises
                else:
                    yield message
            await reader
        finally:
            reader.cancel()
            for task in self._tasks:
                task.cancel()

    async def _read(self, requests: AsyncIterator[pb.ModelInferRequest]) -> None:
        try:
            async for request in requests:
                await self._slots.acquire()
                task = asyncio.ensure_future(self._serve(request))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            # Half-closed by the client: the call ends once every request has answered.
            while self._tasks:
                await asyncio.wait(set(self._tasks))
        finally:
            # Also when reading failed: the writer stops, then re-raises reading's error.
            await self._outgoing.put(None)

    async def _serve(self, request: pb.ModelInferRequest) -> None:
        try:
            # Closed at once when writing is cancelled, so its shared memory is released.
            async with aclosing(self._answer(request)) as answers:
                async for message in answers:
                    await self._outgoing.put(message)
        except EngineError as exc:
            await self._fail(request, exc.code, exc.message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("ModelStreamInfer failed on a request for '%s'", request.model_name)
            await self._fail(request, ErrorCode.INTERNAL, f"ModelStreamInfer failed: {exc}")
        finally:
            self._slots.release()

    async def _fail(self, request: pb.ModelInferRequest, code: ErrorCode, message: str) -> None:
        if self._grpc_errors:
            await self._outgoing.put(_Abort(STATUS_BY_ERROR_CODE[code], message))
        else:
            await self._outgoing.put(_error_response(request, message, final=True))

    async def _answer(
        self, request: pb.ModelInferRequest
    ) -> AsyncGenerator[pb.ModelStreamInferResponse | _Abort]:
        call = InferCall(
            request,
            request.model_name,
            request.model_version,
            request.id,
            shared_memory_regions(request),
            None,
            self._context.invocation_metadata,
        )
        async with aclosing(self._requests.stream(call, _STREAMED)) as items:
            async for item in items:
                if not isinstance(item, ErrorResponse):
                    yield item
                elif self._grpc_errors:
                    yield _Abort(STATUS_BY_ERROR_CODE[item.error.code], item.error.message)
                    return
                else:
                    yield _error_response(request, item.error.message, item.final)
