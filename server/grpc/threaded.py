"""The threads front's inference service (``--grpc-front threads``).

ModelInfer runs on grpc's handler thread from the wire to the answer: lookup, decode,
``Engine.submit`` (a free CPU instance runs the batch on this very thread), encode.
No event loop is crossed, and grpc's synchronous server costs less per call than
grpc.aio (docs/benchmarks.md has both). What needs the loop goes there
(``loop_bridge``): a request naming shared memory, a traced request, a model that
answers only on the loop (decoupled, sequence, ordered), and every other RPC.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from typing import Any

import grpc

from inferd.engines import Engine, EngineError
from inferd.protos import grpc_service_pb2 as pb
from inferd.server.grpc.codec import (
    UNARY,
    decode_infer_request,
    encode_infer_response,
    shared_memory_regions,
)
from inferd.server.grpc.drain import DrainGate
from inferd.server.grpc.loop_bridge import Aborted, LoopBridge, bridged
from inferd.server.grpc.servicer import InferenceServicer, deadline_of
from inferd.server.grpc.status import STATUS_BY_ERROR_CODE
from inferd.server.request_path import InferCall, parse_version
from inferd.server.services import FrontServices

logger = logging.getLogger("inferd.server")

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]


class ThreadedInferenceServicer:
    """``inference.GRPCInferenceService`` for grpc's synchronous server: ModelInfer on
    the handler thread where it can, the asyncio servicer's methods for the rest."""

    def __init__(
        self,
        services: FrontServices,
        gate: DrainGate,
        bridge: LoopBridge,
        engine: Engine | None,  # the engine in this process; None: every call via the loop
    ) -> None:
        self._services = services
        self._gate = gate
        self._bridge = bridge
        self._engine = engine if services.tracing is None else None
        self._lock = threading.Lock()
        self._in_progress = 0
        loop_servicer = bridged(InferenceServicer(services, gate), SERVICE, bridge)
        for method in SERVICE.methods:
            if method.name != "ModelInfer":
                setattr(self, method.name, getattr(loop_servicer, method.name))

    @property
    def in_progress(self) -> int:
        """ModelInfer calls running on handler threads (a drain waits for them)."""
        return self._in_progress

    def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.ServicerContext) -> Any:
        if self._gate.draining and not self._gate.admits():
            self._gate.refuse_blocking(context)
        with self._lock:
            self._in_progress += 1
        # Nothing in the try aborts: grpc's abort raises a bare Exception.
        try:
            return self._infer(request, context)
        except EngineError as exc:
            context.abort(STATUS_BY_ERROR_CODE[exc.code], exc.message)
        except Aborted as aborted:
            context.abort(aborted.code, aborted.details)
        except concurrent.futures.CancelledError:
            context.abort(grpc.StatusCode.CANCELLED, "the call was cancelled")
        except Exception as exc:
            logger.exception("ModelInfer failed")
            context.abort(grpc.StatusCode.INTERNAL, f"ModelInfer failed: {exc}")
        finally:
            with self._lock:
                self._in_progress -= 1

    def _infer(self, request: pb.ModelInferRequest, context: grpc.ServicerContext) -> Any:
        regions = shared_memory_regions(request)
        if self._engine is not None and not regions:
            self._engine.model_info(request.model_name, parse_version(request.model_version))
            submitted = self._engine.submit(decode_infer_request(request, deadline_of(context)))
            if submitted is not None:
                context.add_callback(submitted.cancel)  # the client went away: drop it
                return encode_infer_response(submitted.result())
        call = InferCall(
            request,
            request.model_name,
            request.model_version,
            request.id,
            regions,
            deadline_of(context),
            context.invocation_metadata,
        )
        return self._bridge.call(self._services.requests.infer(call, UNARY), context)
