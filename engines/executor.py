"""Execution instances: one thread and one backend instance each, fed from a bounded queue.

The event loop only enqueues work and receives results through
``loop.call_soon_threadsafe``; model code never runs on it. A full queue rejects at
once (UNAVAILABLE) instead of growing, so memory does not grow with offered load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from inferd.engines.backends import BackendInstance
from inferd.engines.errors import EngineError, ErrorCode

logger = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]


@dataclass(slots=True)
class WorkItem:
    inputs: Mapping[str, np.ndarray]
    output_names: Sequence[str]
    deadline: float | None
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Outputs]


def _resolve(future: asyncio.Future[Outputs], result: Outputs | BaseException) -> None:
    if future.done():  # the caller went away (cancelled) while the model ran
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


class InstancePool:
    """The execution instances of one model version."""

    def __init__(
        self, label: str, instances: Sequence[BackendInstance], queue_capacity: int
    ) -> None:
        self._label = label
        self._instances = list(instances)
        self._queue: queue.Queue[WorkItem | None] = queue.Queue(maxsize=queue_capacity)
        self._capacity = queue_capacity
        self._closed = False
        self._threads = [
            threading.Thread(
                target=self._run_instance,
                args=(instance,),
                name=f"inferd-{label}-{index}",
                daemon=True,
            )
            for index, instance in enumerate(self._instances)
        ]
        for thread in self._threads:
            thread.start()

    async def run(
        self,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str],
        deadline: float | None,
    ) -> Outputs:
        """Queue one execution and wait for it; cancelling the wait abandons the work."""
        if self._closed:
            raise EngineError(ErrorCode.UNAVAILABLE, f"model '{self._label}' is unloading")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outputs] = loop.create_future()
        try:
            self._queue.put_nowait(WorkItem(inputs, output_names, deadline, loop, future))
        except queue.Full:
            raise EngineError(
                ErrorCode.UNAVAILABLE,
                f"Exceeds maximum queue size: model '{self._label}' already has "
                f"{self._capacity} requests waiting",
            ) from None
        return await future

    def _run_instance(self, instance: BackendInstance) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                break
            if item.future.cancelled():
                continue
            if self._closed:  # stopping: nobody waits for queued work any more
                with contextlib.suppress(RuntimeError):
                    item.loop.call_soon_threadsafe(
                        _resolve, item.future, EngineError(ErrorCode.UNAVAILABLE, "server stopping")
                    )
                continue
            result: Outputs | BaseException
            if item.deadline is not None and time.monotonic() > item.deadline:
                result = EngineError(
                    ErrorCode.DEADLINE_EXCEEDED,
                    f"request for model '{self._label}' timed out in the queue",
                )
            else:
                try:
                    result = instance.infer(item.inputs, item.output_names)
                except EngineError as exc:
                    result = exc
                except Exception as exc:
                    logger.exception("model '%s' failed", self._label)
                    result = EngineError(ErrorCode.INTERNAL, f"model '{self._label}' failed: {exc}")
            # RuntimeError: the loop closed while the model ran, so nobody waits.
            with contextlib.suppress(RuntimeError):
                item.loop.call_soon_threadsafe(_resolve, item.future, result)
        instance.close()

    def close(self) -> None:
        """Stop: drop queued work, abort runs in progress, release the instances.

        Called once the server has stopped taking RPCs and the grace period for in-flight
        ones is over, so whatever is still queued or running has nobody waiting for it.
        """
        if self._closed:
            return
        self._closed = True
        for instance in self._instances:
            instance.cancel()
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()
