"""Triton's Python backend, in process (``backend: "python"``).

A model is ``<model>/<version>/model.py`` defining ``class TritonPythonModel`` with
``execute(requests)`` and optionally ``auto_complete_config``, ``initialize`` and
``finalize``, written against ``triton_python_backend_utils`` (``python_utils.py``),
exactly as for Triton.

Security: ``model.py`` is imported and run inside the server process, with the
server's privileges and access to everything the server can reach. Serve only model
repositories you trust as you trust the server's own code.

Each execution instance imports its own copy of ``model.py`` (Triton runs each
instance in its own process, so module globals are per instance there too), under a
unique package whose path is the version directory: relative imports of sibling files
(``from . import helper``) work, and two models' files never collide in
``sys.modules``. ``sys.path`` is left alone.

Non-decoupled models return one InferenceResponse per request (or answer through the
response sender and return None); decoupled models
(``model_transaction_policy { decoupled: true }``) answer only through
``request.get_response_sender()``, from any thread, also after ``execute`` returns.
``async def execute`` runs on one private event loop per instance; a decoupled model's
coroutine is left running while the instance takes its next batch. Python code cannot
be interrupted, so ``cancel`` does nothing; models see cancellation through
``request.is_cancelled()``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import importlib.util
import itertools
import json
import logging
import re
import sys
import threading
import types
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from inferd.engines.backends import python_utils
from inferd.engines.backends.base import (
    Backend,
    BackendRequest,
    InstanceSpec,
    RequestInstance,
)
from inferd.engines.backends.python_config import ModelConfig, config_as_dict
from inferd.engines.backends.python_utils import (
    TRITONSERVER_RESPONSE_COMPLETE_FINAL,
    InferenceRequest,
    InferenceResponse,
    InferenceResponseSender,
    Tensor,
    TritonError,
    TritonModelException,
)
from inferd.engines.errors import EngineError, ErrorCode
from inferd.protos import model_config_pb2

logger = logging.getLogger(__name__)

UTILS_MODULE = "triton_python_backend_utils"
MODEL_CLASS = "TritonPythonModel"
# How long close() waits for an async model's pending coroutines to unwind.
_LOOP_CLOSE_TIMEOUT_S = 5.0

# The engine's error ladder has no ALREADY_EXISTS: retrying cannot help, so it is the
# request's fault (INVALID_ARGUMENT). UNKNOWN is a model failure like INTERNAL.
_ENGINE_CODES: dict[int, ErrorCode] = {
    TritonError.UNKNOWN: ErrorCode.INTERNAL,
    TritonError.INTERNAL: ErrorCode.INTERNAL,
    TritonError.NOT_FOUND: ErrorCode.NOT_FOUND,
    TritonError.INVALID_ARG: ErrorCode.INVALID_ARGUMENT,
    TritonError.UNAVAILABLE: ErrorCode.UNAVAILABLE,
    TritonError.UNSUPPORTED: ErrorCode.UNSUPPORTED,
    TritonError.ALREADY_EXISTS: ErrorCode.INVALID_ARGUMENT,
    TritonError.CANCELLED: ErrorCode.CANCELLED,
}

_package_numbers = itertools.count()


class PythonBackend(Backend):
    name: ClassVar[str] = "python"
    platforms: ClassVar[tuple[str, ...]] = ()
    default_model_filename: ClassVar[str] = "model.py"

    def complete_config(self, model_path: Path, config: model_config_pb2.ModelConfig) -> None:
        """Run ``TritonPythonModel.auto_complete_config`` if the model has one; the
        config must then declare its inputs and outputs."""
        config.backend = self.name
        package, model_class = _import_model(model_path, config.name)
        try:
            hook = getattr(model_class, "auto_complete_config", None)
            if hook is not None:
                _auto_complete(hook, config)
        finally:
            _forget(package)
        declared = (("inputs", config.input), ("outputs", config.output))
        missing = [kind for kind, tensors in declared if not tensors]
        if missing:
            raise EngineError(
                ErrorCode.INVALID_ARGUMENT,
                f"model '{config.name}' declares no {' and no '.join(missing)}: list them in "
                "config.pbtxt, or add them in TritonPythonModel.auto_complete_config with "
                "add_input / add_output",
            )

    def load(
        self, model_path: Path, config: model_config_pb2.ModelConfig, instance: InstanceSpec
    ) -> PythonInstance:
        package, model_class = _import_model(model_path, config.name)
        try:
            model = model_class()
            initialize = getattr(model, "initialize", None)
            if initialize is not None:
                initialize(_initialize_args(model_path, config, instance))
        except Exception as exc:
            _forget(package)
            raise EngineError(
                ErrorCode.INTERNAL, f"model '{config.name}': initialize failed: {_describe(exc)}"
            ) from exc
        return PythonInstance(config, model, package)


class PythonInstance(RequestInstance):
    """One instance of a TritonPythonModel: its requests go to ``execute`` as a list."""

    def __init__(self, config: model_config_pb2.ModelConfig, model: Any, package: str) -> None:
        self._model_name = config.name
        self._model = model
        self._package = package
        self._decoupled = config.model_transaction_policy.decoupled
        # Implicit sequence state leaves a model as an output the config need not declare.
        self._output_names = tuple(output.name for output in config.output) + tuple(
            state.output_name for state in config.sequence_batching.state
        )
        self._loop: _EventLoopThread | None = None  # started by the first async execute
        self._close_lock = threading.Lock()
        self._closed = False

    def execute(self, requests: Sequence[BackendRequest]) -> None:
        pb_requests = [self._wrap(request) for request in requests]
        senders = [request.get_response_sender() for request in pb_requests]
        try:
            result = self._model.execute(pb_requests)
            if asyncio.iscoroutine(result):
                future = self._event_loop().submit(result)
                if self._decoupled:  # take the next batch while this one runs
                    future.add_done_callback(
                        functools.partial(self._coroutine_done, requests, senders)
                    )
                    return
                result = future.result()
            if self._decoupled:
                if result is not None:
                    raise _ExecuteError(
                        "the model is decoupled, so execute must return None (it answers "
                        f"through each request's response sender), got {type(result).__name__}"
                    )
                return
            self._answer(requests, senders, result)
        except Exception as exc:
            # Triton closes every sender of a failed batch: later sends from the model raise.
            for sender in senders:
                sender._close()
            if not isinstance(exc, _ExecuteError):
                logger.error("model '%s': execute raised", self._model_name, exc_info=exc)
            raise EngineError(
                ErrorCode.INTERNAL, f"model '{self._model_name}': {_describe(exc)}"
            ) from exc

    def cancel(self) -> None:
        """Python code cannot be interrupted; ``request.is_cancelled()`` tells the model."""

    def close(self) -> None:
        """Stop the instance's event loop (cancelling pending coroutines), then call the
        model's ``finalize`` once."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        if self._loop is not None:
            self._loop.close(_LOOP_CLOSE_TIMEOUT_S)
        finalize = getattr(self._model, "finalize", None)
        if finalize is not None:
            try:
                finalize()
            except Exception:
                logger.exception("model '%s': finalize raised", self._model_name)
        _forget(self._package)

    def _wrap(self, request: BackendRequest) -> InferenceRequest:
        sender = InferenceResponseSender(
            functools.partial(self._deliver, request),
            request.sender.is_cancelled,
            self._decoupled,
        )
        options = request.options
        wrapped = InferenceRequest._create(
            inputs=[Tensor._wrap(name, array) for name, array in request.inputs.items()],
            request_id=request.request_id,
            requested_output_names=list(request.output_names),
            parameters=json.dumps(dict(options.parameters)),
            timeout=options.timeout_us,
            sender=sender,
        )
        # Triton hands a model the request's correlation id (0 without one; int or str)
        # and its sequence flags (TRITONSERVER_REQUEST_FLAG_SEQUENCE_START/END).
        wrapped._correlation_id = options.sequence.sequence_id
        wrapped._flags = options.sequence.flags
        return wrapped

    def _answer(
        self,
        requests: Sequence[BackendRequest],
        senders: Sequence[InferenceResponseSender],
        result: object,
    ) -> None:
        """Send what a model that is not decoupled returned: one response per request."""
        count = len(requests)
        if result is None:  # every request must have been answered through its sender
            for index, (request, sender) in enumerate(zip(requests, senders, strict=True)):
                if sender._close():
                    self._fail(
                        request,
                        f"model '{self._model_name}': execute returned None and sent no final "
                        f"response for request {index}; a model that is not decoupled returns "
                        "a list with one pb_utils.InferenceResponse per request",
                    )
            return
        if not isinstance(result, list | tuple):
            raise _ExecuteError(
                f"execute must return a list of {count} pb_utils.InferenceResponse (one per "
                f"request), got {type(result).__name__}"
            )
        if len(result) != count:
            raise _ExecuteError(
                f"execute returned {len(result)} responses for {count} requests; expected "
                "one pb_utils.InferenceResponse per request"
            )
        for index, response in enumerate(result):
            if response is not None and not isinstance(response, InferenceResponse):
                raise _ExecuteError(
                    f"execute returned {type(response).__name__} at position {index} of its "
                    "list; expected a pb_utils.InferenceResponse"
                )
        for index, (request, sender, response) in enumerate(
            zip(requests, senders, result, strict=True)
        ):
            if response is None:  # allowed when the sender already answered it
                if sender._close():
                    self._fail(
                        request,
                        f"model '{self._model_name}': execute returned None for request "
                        f"{index} and sent it no response",
                    )
                continue
            try:
                sender.send(response, TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            except TritonModelException as exc:
                if sender._close():
                    self._fail(request, str(exc))
                else:
                    logger.error("model '%s': request %d: %s", self._model_name, index, exc)

    def _deliver(
        self, request: BackendRequest, response: InferenceResponse | None, final: bool
    ) -> None:
        """One response from the model to the engine (the senders call this)."""
        try:
            if response is None:
                request.sender.send(final=final)
            elif (error := response.error()) is not None:
                engine_error = EngineError(_ENGINE_CODES[error.code()], error.message())
                request.sender.send(error=engine_error, final=final)
            else:
                request.sender.send(self._outputs(response, request.output_names), final=final)
        except EngineError as exc:
            raise TritonModelException(f"Unable to send response: {exc.message}") from None

    def _outputs(
        self, response: InferenceResponse, requested: Sequence[str]
    ) -> dict[str, np.ndarray]:
        outputs: dict[str, np.ndarray] = {}
        seen: set[str] = set()
        for tensor in response.output_tensors():
            name = tensor.name()
            if name not in self._output_names:
                raise TritonModelException(
                    f"model '{self._model_name}' returned output '{name}', which its config "
                    f"does not declare (outputs: {', '.join(self._output_names)})"
                )
            if name in seen:
                raise TritonModelException(
                    f"model '{self._model_name}' returned output '{name}' twice in one response"
                )
            seen.add(name)
            if name in requested:  # Triton drops outputs the client did not ask for
                outputs[name] = _engine_array(tensor.as_numpy())
        return outputs

    def _fail(self, request: BackendRequest, message: str) -> None:
        try:
            request.sender.send(error=EngineError(ErrorCode.INTERNAL, message), final=True)
        except EngineError as exc:  # the engine ended it meanwhile (cancelled, timed out)
            logger.debug("model '%s': could not fail a request: %s", self._model_name, exc)

    def _event_loop(self) -> _EventLoopThread:
        if self._loop is None:
            self._loop = _EventLoopThread(f"inferd-python-{self._model_name}")
        return self._loop

    def _coroutine_done(
        self,
        requests: Sequence[BackendRequest],
        senders: Sequence[InferenceResponseSender],
        future: concurrent.futures.Future[Any],
    ) -> None:
        """A decoupled async execute finished. If it failed, end the requests it left
        open with the error (Triton only logs it, and those requests would hang)."""
        if future.cancelled():
            problem = "its async execute was cancelled (the instance closed)"
        elif (exc := future.exception()) is not None:
            logger.error("model '%s': async execute raised", self._model_name, exc_info=exc)
            problem = _describe(exc)
        elif (result := future.result()) is not None:
            problem = (
                f"the model is decoupled, so execute must return None, got {type(result).__name__}"
            )
        else:
            return
        for request, sender in zip(requests, senders, strict=True):
            if sender._close():
                self._fail(request, f"model '{self._model_name}': {problem}")


class _ExecuteError(Exception):
    """``execute`` broke the backend's contract (what it returned)."""


class _EventLoopThread:
    """An instance's private asyncio loop on its own thread (never the server's loop)."""

    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def submit(self, coroutine: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def close(self, timeout: float) -> None:
        try:
            asyncio.run_coroutine_threadsafe(_cancel_pending(), self._loop).result(timeout)
        except concurrent.futures.TimeoutError:
            logger.warning("a Python model's coroutines ignored cancellation for %.0f s", timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._loop.close()


async def _cancel_pending() -> None:
    current = asyncio.current_task()
    pending = [task for task in asyncio.all_tasks() if task is not current]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


def _auto_complete(hook: Any, config: model_config_pb2.ModelConfig) -> None:
    wrapper = ModelConfig(config)
    try:
        returned = hook(wrapper)
    except Exception as exc:
        raise EngineError(
            ErrorCode.INVALID_ARGUMENT,
            f"model '{config.name}': auto_complete_config failed: {_describe(exc)}",
        ) from exc
    if returned is not wrapper:
        raise EngineError(
            ErrorCode.INVALID_ARGUMENT,
            f"auto_complete_config function in model '{config.name}' must return the "
            f"pb_utils.ModelConfig it was given, got {type(returned).__name__}",
        )


def _import_model(model_path: Path, model: str) -> tuple[str, type]:
    """Import ``model.py`` as a fresh module; returns its package name (for ``_forget``)
    and its TritonPythonModel class."""
    sys.modules[UTILS_MODULE] = python_utils
    if not model_path.is_file():
        raise EngineError(
            ErrorCode.INVALID_ARGUMENT, f"model '{model}': {model_path} does not exist"
        )
    identifier = re.sub(r"\W", "_", model)
    package = f"_inferd_python_model_{next(_package_numbers)}_{identifier}"
    parent = types.ModuleType(package)
    parent.__path__ = [str(model_path.parent)]  # sibling files import relatively
    sys.modules[package] = parent
    spec = importlib.util.spec_from_file_location(f"{package}.{model_path.stem}", model_path)
    assert spec is not None and spec.loader is not None  # a .py path always has one
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look their module up here
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        _forget(package)
        raise EngineError(
            ErrorCode.INTERNAL,
            f"model '{model}': importing {model_path.name} failed: {_describe(exc)}",
        ) from exc
    model_class = getattr(module, MODEL_CLASS, None)
    if not isinstance(model_class, type):
        problem = f"{model_path.name} defines no class {MODEL_CLASS}"
    elif not callable(getattr(model_class, "execute", None)):
        problem = f"{MODEL_CLASS} in {model_path.name} has no execute method"
    else:
        return package, model_class
    _forget(package)
    raise EngineError(
        ErrorCode.INVALID_ARGUMENT,
        f"model '{model}': {problem} (Triton's Python backend runs that class's execute(requests))",
    )


def _forget(package: str) -> None:
    """Drop an instance's modules (its model.py and sibling files) from sys.modules."""
    # list() copies the keys at once: another thread's import (models load in
    # parallel) would otherwise change sys.modules while it is being iterated.
    for name in [name for name in list(sys.modules) if name.split(".")[0] == package]:
        sys.modules.pop(name, None)


def _initialize_args(
    model_path: Path, config: model_config_pb2.ModelConfig, instance: InstanceSpec
) -> dict[str, str]:
    """``initialize(args)``: every value a string, as Triton gives them."""
    return {
        "model_config": json.dumps(config_as_dict(config)),
        "model_instance_kind": instance.kind,
        "model_instance_name": _instance_name(config, instance),
        "model_instance_device_id": str(instance.device or 0),
        "model_repository": str(model_path.parent.parent),
        "model_version": model_path.parent.name,
        "model_name": config.name,
    }


def _instance_name(config: model_config_pb2.ModelConfig, instance: InstanceSpec) -> str:
    """Triton's ``<group name>_<n>``: instances are numbered in instance_group order,
    each group's ``count`` on each of its GPUs (as the repository places them)."""
    position = 0
    for group in config.instance_group:
        gpu = group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
        slots = max(group.count, 1) * (len(group.gpus) if gpu and group.gpus else 1)
        if instance.index < position + slots:
            return f"{group.name or config.name}_{instance.index - position}"
        position += slots
    return f"{config.name}_{instance.index}"


def _engine_array(array: np.ndarray) -> np.ndarray:
    """BYTES leave as object arrays of bytes, as the engine carries them (str elements
    become UTF-8, as Triton serializes them)."""
    if array.dtype.kind not in ("O", "S"):
        return array
    if array.dtype.kind == "O" and all(type(item) is bytes for item in array.flat):
        return array
    converted = np.empty(array.shape, dtype=np.object_)
    converted.flat[:] = [python_utils._as_bytes(item) for item in array.flat]
    return converted


def _describe(exc: BaseException) -> str:
    """A model's exception as a client reads it: TritonModelException and our own
    contract errors by their message, anything else with its type."""
    if isinstance(exc, TritonModelException | _ExecuteError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
