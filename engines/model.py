"""A loaded model version: its completed config, tensor specs and execution instances."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from inferd.engines.classification import top_k
from inferd.engines.errors import EngineError, ErrorCode
from inferd.engines.execution.executor import BatchingExecutor
from inferd.engines.execution.packing import signature
from inferd.engines.execution.streams import ResponseStream
from inferd.engines.scheduling.dynamic import PendingRequest
from inferd.engines.statistics import ModelStatistics
from inferd.engines.types import ErrorResponse, InferRequest, InferResponse, OutputTensor
from inferd.engines.validation import TensorSpec, validate_request
from inferd.protos import model_config_pb2
from inferd.protos.datatypes import NUMPY_DTYPES, config_type_to_datatype


def tensor_specs(
    tensors: Iterable[model_config_pb2.ModelInput | model_config_pb2.ModelOutput],
) -> tuple[TensorSpec, ...]:
    specs = []
    for tensor in tensors:
        type_name = model_config_pb2.DataType.Name(tensor.data_type)
        specs.append(
            TensorSpec(
                name=tensor.name,
                datatype=config_type_to_datatype(type_name),
                dims=tuple(tensor.dims),
                optional=isinstance(tensor, model_config_pb2.ModelInput) and tensor.optional,
                reshape=tuple(tensor.reshape.shape) if tensor.HasField("reshape") else None,
            )
        )
    return tuple(specs)


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A validated request, ready to queue."""

    feed: dict[str, np.ndarray]
    output_names: tuple[str, ...]
    pending: PendingRequest
    batch_size: int
    class_counts: dict[str, int]
    device_outputs: frozenset[str]  # written into CUDA shared memory from the device


class ModelVersion:
    """One servable version; `infer` validates, then runs on a free execution instance."""

    def __init__(
        self,
        config: model_config_pb2.ModelConfig,
        version: int,
        executor: BatchingExecutor,
        statistics: ModelStatistics,
        labels: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.version = version
        self.max_batch_size = config.max_batch_size
        self.inputs = tensor_specs(config.input)
        self.outputs = tensor_specs(config.output)
        self._input_specs = {spec.name: spec for spec in self.inputs}
        self.statistics = statistics
        self.executor = executor
        self.takes_device_tensors = executor.takes_device_tensors
        self._labels = dict(labels or {})  # output name -> class labels (label_filename)
        self.decoupled = config.model_transaction_policy.decoupled
        # Requests that looked this version up and have not finished (the engine counts
        # them under its lock): a replaced version drains to zero before it closes.
        self.users = 0

    async def infer(self, request: InferRequest) -> InferResponse:
        """One request, one response. Decoupled models answer through ``infer_stream``."""
        if self.decoupled:
            raise EngineError(
                ErrorCode.UNSUPPORTED,
                "ModelInfer RPC doesn't support models with decoupled transaction policy",
            )
        prepared = self._prepare(request)
        results = await self.executor.run(
            prepared.feed,
            prepared.output_names,
            prepared.pending,
            request.trace,
            request_id=request.request_id,
            options=request.options,
            device_outputs=prepared.device_outputs,
        )
        return self._response(request, prepared, results, final=True)

    @property
    def answers_threads(self) -> bool:
        """Whether ``submit`` serves this version (else callers go through ``infer``)."""
        return not self.decoupled and self.executor.answers_threads

    def submit(self, request: InferRequest, on_end: Callable[[], None]) -> Submitted:
        """``infer`` for a caller on its own thread: no event loop anywhere between
        it and the instance. Only where ``answers_threads``. ``on_end`` is called once
        the caller has the result (or the error), not if this raises."""
        prepared = self._prepare(request)
        future = self.executor.submit(
            prepared.feed,
            prepared.output_names,
            prepared.pending,
            request_id=request.request_id,
            options=request.options,
        )
        return Submitted(
            future, lambda results: self._response(request, prepared, results, True), on_end
        )

    async def infer_stream(
        self, request: InferRequest
    ) -> AsyncIterator[InferResponse | ErrorResponse]:
        """The request's responses in order, ending with the final one. Errors the model
        sends for the request come as ErrorResponse items; errors before it ran
        (validation, a full queue, a timeout) are raised. Cancelling the iteration
        aborts the request."""
        if not self.decoupled:
            yield await self.infer(request)
            return
        prepared = self._prepare(request)
        stream = ResponseStream(asyncio.get_running_loop())
        run = asyncio.ensure_future(
            self.executor.run(
                prepared.feed,
                prepared.output_names,
                prepared.pending,
                request.trace,
                request_id=request.request_id,
                options=request.options,
                stream=stream,
            )
        )
        try:
            while True:
                get = asyncio.ensure_future(stream.get())
                if not run.done():
                    await asyncio.wait({get, run}, return_when=asyncio.FIRST_COMPLETED)
                    if not get.done():
                        get.cancel()
                        run.result()  # it never ran: raise why; else its end is queued
                        continue
                item = await get
                if item.error is not None:
                    ends = item.final and item.outputs is None
                    yield ErrorResponse(item.error, ends)
                    if ends:
                        return
                if item.outputs is not None:
                    yield self._response(request, prepared, item.outputs, final=item.final)
                elif item.final:
                    yield InferResponse(self.name, self.version, request.request_id, [], True)
                if item.final:
                    return
        finally:
            stream.cancel()
            run.cancel()

    def _prepare(self, request: InferRequest) -> _Prepared:
        batch_size = validate_request(request, self.inputs, self.outputs, self.max_batch_size)
        feed = {}
        for tensor in request.inputs:
            reshape = self._input_specs[tensor.name].reshape
            data = tensor.array
            assert data is not None  # validate_request filled it
            if reshape is not None:
                prefix = (batch_size,) if self.max_batch_size > 0 else ()
                data = data.reshape(prefix + reshape)
            feed[tensor.name] = data
        class_counts = {output.name: output.class_count for output in request.requested_outputs}
        names = tuple(
            spec.name for spec in self.outputs if not class_counts or spec.name in class_counts
        )
        pending = PendingRequest(
            key=0,  # the executor numbers requests as it queues them
            rows=batch_size,
            signature=signature(feed, self.max_batch_size > 0),
            arrival=0.0,
            priority=request.options.priority,
            timeout_s=request.options.timeout_us / 1e6,
            deadline=request.deadline,
        )
        device_outputs = frozenset(
            output.name
            for output in request.requested_outputs
            if output.region is not None and self.takes_device_tensors
        )
        return _Prepared(feed, names, pending, batch_size, class_counts, device_outputs)

    def _response(
        self,
        request: InferRequest,
        prepared: _Prepared,
        results: Mapping[str, np.ndarray],
        final: bool,
    ) -> InferResponse:
        batch_size, class_counts = prepared.batch_size, prepared.class_counts
        outputs = []
        for spec in self.outputs:
            if spec.name not in results:
                continue
            data = results[spec.name]
            if spec.reshape is not None:
                prefix = (batch_size,) if self.max_batch_size > 0 else ()
                data = data.reshape(prefix + tuple(spec.dims))
            if spec.name in prepared.device_outputs and not isinstance(data, np.ndarray):
                # A device tensor, already of the config's type, for CUDA shared memory.
                outputs.append(OutputTensor(spec.name, spec.datatype, data))
                continue
            # A runtime may widen or narrow a type; the config's datatype is the contract.
            data = np.asarray(data).astype(NUMPY_DTYPES[spec.datatype], copy=False)
            class_count = class_counts.get(spec.name, 0)
            if class_count > 0:
                labels = self._labels.get(spec.name, ())
                data = top_k(data, class_count, labels, batched=self.max_batch_size > 0)
                outputs.append(OutputTensor(spec.name, "BYTES", data))
            else:
                outputs.append(OutputTensor(spec.name, spec.datatype, data))
        return InferResponse(self.name, self.version, request.request_id, outputs, final)

    def close(self) -> None:
        self.executor.close()


class Submitted:
    """A request submitted from a thread (``ModelVersion.submit``): ``result`` waits
    for its response; ``cancel``, from any thread, abandons it (a queued request is
    removed, a running one is answered to nobody)."""

    __slots__ = ("_future", "_on_end", "_respond")

    def __init__(
        self,
        future: concurrent.futures.Future[dict[str, np.ndarray]],
        respond: Callable[[Mapping[str, np.ndarray]], InferResponse],
        on_end: Callable[[], None],
    ) -> None:
        self._future = future
        self._respond = respond
        self._on_end = on_end

    def result(self) -> InferResponse:
        """The response (call it once); raises the request's EngineError, or
        CancelledError."""
        try:
            return self._respond(self._future.result())
        finally:
            self._on_end()

    def cancel(self) -> None:
        self._future.cancel()
