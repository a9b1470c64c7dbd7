"""Dynamic batching through a real server, driven with tritonclient.

One server serves ``build_batching_repository``: the same FP32 [4] graph under several
``dynamic_batching`` configurations, one instance each, so that holding one request
holds its model. Each test uses its own model, so statistics never mix between tests.

No verdict depends on timing. The server loads a probe (``PROBE``, as ``sitecustomize``)
that logs every model execution with the first column of its input (each test marks
its requests there) and holds any execution that carries a negative marker until the
test writes a byte to that model's gate (a FIFO). Tests wait, with bounds, for what the
server reports: an execution in its log, a pending count in its metrics. The queue
timeout test also waits out the timeout before letting the queue move, which is an
ordering guarantee (time only goes forward), not a race.
"""

from __future__ import annotations

import functools
import os
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from tritonclient.utils import InferenceServerException

from tests.support.model_builders import BATCHING_MODELS, BATCHING_WIDTH, build_batching_repository
from tests.support.server_process import ServerProcess
from tests.support.waiting import wait_until

WAIT_S = 60.0  # bound on every wait; a healthy server needs a small fraction of it
HELD = -1.0  # the marker of a request the probe holds at its gate

# Imported by the server at start-up as `sitecustomize`: wraps every ONNX Runtime
# instance so each execution is logged, and one with a negative marker waits for a byte
# on its model's gate. The test holds each gate open read-write for the whole module, so
# opening it never blocks and closing it (teardown) releases whatever still waits.
PROBE = """
import logging
import os

from inferd.engines.backends import BackendInstance
from inferd.engines.backends import onnxruntime as _onnxruntime

_log = logging.getLogger("inferd.test-probe")
_GATES = os.environ["INFERD_TEST_GATES"]
_load = _onnxruntime.OnnxRuntimeBackend.load


class _Probed(BackendInstance):
    def __init__(self, model, instance):
        self._model = model
        self._instance = instance

    def infer(self, inputs, output_names):
        data = inputs["INPUT0"]
        _log.warning("probe: %s runs %s", self._model, data[:, 0].tolist())
        if (data < 0).any():
            with open(os.path.join(_GATES, self._model), "rb", buffering=0) as gate:
                gate.read(1)
        return self._instance.infer(inputs, output_names)

    def cancel(self):
        self._instance.cancel()

    def close(self):
        self._instance.close()


def load(self, model_path, config, instance):
    return _Probed(config.name, _load(self, model_path, config, instance))


_onnxruntime.OnnxRuntimeBackend.load = load
"""

_RUN = re.compile(r"probe: (\S+) runs \[([^\]]*)\]")


def _rows(markers: Sequence[float]) -> np.ndarray:
    """One row per marker: the marker, then values that tell the rows apart."""
    data = np.empty((len(markers), BATCHING_WIDTH), np.float32)
    data[:, 0] = markers
    data[:, 1:] = np.arange(len(markers) * (BATCHING_WIDTH - 1)).reshape(len(markers), -1) / 4
    return data


def _inputs(markers: Sequence[float]) -> list[grpcclient.InferInput]:
    data = _rows(markers)
    tensor = grpcclient.InferInput("INPUT0", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    return [tensor]


@dataclass
class Answer:
    """One async_infer's answer, filled from tritonclient's callback thread."""

    result: grpcclient.InferResult | None = None
    error: InferenceServerException | None = None
    count: int = 0
    done: threading.Event = field(default_factory=threading.Event)

    def set(self, result: grpcclient.InferResult | None, error: Any) -> None:
        self.result, self.error = result, error
        self.count += 1
        self.done.set()

    def wait(self) -> Answer:
        assert self.done.wait(WAIT_S), "no answer within the bound"
        assert self.count == 1, f"{self.count} answers to one request"
        return self

    def outputs(self) -> tuple[np.ndarray, np.ndarray]:
        self.wait()
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result.as_numpy("OUTPUT0"), self.result.as_numpy("OUTPUT1")

    def failure(self) -> InferenceServerException:
        self.wait()
        assert self.error is not None, "expected an error, got a result"
        return self.error


@dataclass
class Batching:
    server: ServerProcess
    client: grpcclient.InferenceServerClient
    gates: dict[str, int]

    def send(self, model: str, markers: Sequence[float], **kwargs: Any) -> Answer:
        answer = Answer()
        self.client.async_infer(
            model, _inputs(markers), answer.set, client_timeout=WAIT_S, **kwargs
        )
        return answer

    def infer(self, model: str, markers: Sequence[float], **kwargs: Any) -> grpcclient.InferResult:
        kwargs.setdefault("client_timeout", WAIT_S)
        return self.client.infer(model, _inputs(markers), **kwargs)

    def release(self, model: str, count: int = 1) -> None:
        os.write(self.gates[model], b"x" * count)

    def runs(self, model: str) -> list[list[float]]:
        """The markers of each execution of ``model`` so far, in execution order."""
        found = []
        for match in _RUN.finditer(self.server.log_text()):
            if match.group(1) == model:
                found.append([float(value) for value in match.group(2).split(",")])
        return found

    def scrape(self) -> dict[str, list[Sample]]:
        assert self.server.metrics_url is not None
        with urllib.request.urlopen(self.server.metrics_url, timeout=WAIT_S) as response:
            text = response.read().decode()
        return {family.name: family.samples for family in text_string_to_metric_families(text)}

    def pending(self, model: str) -> int:
        samples = self.scrape()["inferd_inference_pending_request_count"]
        return int(_value(samples, "inferd_inference_pending_request_count", model=model))

    def statistics(self, model: str) -> Any:
        response = self.client.get_inference_statistics(model, client_timeout=WAIT_S)
        (stats,) = response.model_stats
        return stats

    def wait_until(self, what: str, condition: Callable[[], bool]) -> None:
        wait_until(condition, what, server=self.server, timeout_s=WAIT_S)

    def wait_runs(self, model: str, count: int) -> None:
        self.wait_until(f"{count} executions of {model}", lambda: len(self.runs(model)) >= count)

    def wait_pending(self, model: str, count: int) -> None:
        self.wait_until(
            f"{count} requests queued for {model}", lambda: self.pending(model) == count
        )

    def hold(self, model: str) -> Answer:
        """Occupy the model's one instance with a request held at its gate."""
        before = len(self.runs(model))
        held = self.send(model, [HELD])
        self.wait_runs(model, before + 1)
        assert self.runs(model)[before] == [HELD]
        return held


def _value(samples: list[Sample], name: str, **labels: str) -> float:
    labels.setdefault("version", "1")
    found = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0]


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


@pytest.fixture(scope="module")
def batching(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Batching]:
    root = tmp_path_factory.mktemp("batching")
    repository = build_batching_repository(root / "models")
    (root / "probe").mkdir()
    (root / "probe" / "sitecustomize.py").write_text(PROBE)
    (root / "gates").mkdir()
    gates: dict[str, int] = {}
    server: ServerProcess | None = None
    try:
        for model in BATCHING_MODELS:
            path = root / "gates" / model
            os.mkfifo(path)
            # Read-write: never blocks, and keeps a writer so the probe's reads wait.
            gates[model] = os.open(path, os.O_RDWR)
        paths = [str(root / "probe"), os.environ.get("PYTHONPATH", "")]
        env = {
            "PYTHONPATH": os.pathsep.join(path for path in paths if path),
            "INFERD_TEST_GATES": str(root / "gates"),
        }
        server = ServerProcess(repository, env=env).wait_ready()
        with grpcclient.InferenceServerClient(server.address) as client:
            yield Batching(server, client, gates)
    finally:
        for fd in gates.values():
            os.close(fd)  # no writer left: anything still held reads end-of-file and runs
        if server is not None:
            code = server.stop()
            assert code == 0, f"inferd exited with {code}:\n{server.log_text()}"


def _status(error: InferenceServerException) -> str:
    return str(error.status())


# Batching


def test_concurrent_requests_are_batched_and_match_the_unbatched_model(
    batching: Batching,
) -> None:
    model = "affine_batched"
    held = batching.hold(model)
    requests = [[1.0], [2.0, 2.5], [3.0], [4.0, 4.25, 4.5], [5.0]]  # 8 rows: a full batch
    answers = []
    for count, markers in enumerate(requests, start=1):
        answers.append(batching.send(model, markers))
        batching.wait_pending(model, count)  # arrival order is the order sent
    batching.release(model)

    held.outputs()
    for markers, answer in zip(requests, answers, strict=True):
        output0, output1 = answer.outputs()
        reference = batching.infer("affine_plain", markers)
        assert output0.shape == (len(markers), BATCHING_WIDTH)
        assert np.array_equal(output0, reference.as_numpy("OUTPUT0"))
        assert np.array_equal(output1, reference.as_numpy("OUTPUT1"))
        assert np.array_equal(output0, _rows(markers) * 2 + 1)

    assert batching.runs(model) == [[HELD], [m for markers in requests for m in markers]]
    stats = batching.statistics(model)
    assert stats.inference_count == 1 + 8
    assert stats.execution_count == 2
    assert stats.execution_count < stats.inference_count
    assert stats.inference_stats.success.count == 1 + len(requests)
    sizes = {batch.batch_size: batch.compute_infer.count for batch in stats.batch_stats}
    assert sizes == {1: 1, 8: 1}


# Requests that never run


def test_request_timeout_expires_behind_a_slow_request(batching: Batching) -> None:
    model = "affine_timeout"
    held = batching.hold(model)
    timeout_us = 50_000
    expiring = batching.send(model, [1.0], timeout=timeout_us)
    batching.wait_pending(model, 1)
    # Once this has passed the request's timeout is due, whenever the queue moves.
    time.sleep(2 * timeout_us / 1e6)
    batching.release(model)

    held.outputs()
    error = expiring.failure()
    assert _status(error) == "StatusCode.UNAVAILABLE"
    assert error.message() == "Request timeout expired"
    assert batching.runs(model) == [[HELD]]
    stats = batching.statistics(model)
    assert stats.inference_count == 1
    assert stats.inference_stats.fail.count == 1
    failures = batching.scrape()["inferd_inference_request_failure"]
    name = "inferd_inference_request_failure_total"
    assert _value(failures, name, model=model, reason="REJECTED") == 1


def test_client_deadline_expiring_while_queued_never_runs(batching: Batching) -> None:
    model = "affine_deadline"
    held = batching.hold(model)
    with pytest.raises(InferenceServerException) as raised:
        batching.infer(model, [1.0], client_timeout=0.5)
    assert _status(raised.value) == "StatusCode.DEADLINE_EXCEEDED"
    # The server drops it from the queue without waiting for the instance to be free.
    batching.wait_until(
        "the expired request to leave the queue",
        lambda: batching.statistics(model).inference_stats.fail.count == 1,
    )
    assert batching.pending(model) == 0
    batching.release(model)

    held.outputs()
    assert batching.runs(model) == [[HELD]]
    stats = batching.statistics(model)
    assert stats.inference_count == 1 and stats.execution_count == 1
    assert stats.inference_stats.success.count == 1


def test_a_full_queue_answers_unavailable_at_once(batching: Batching) -> None:
    model = "affine_limited"  # max_queue_size: 2
    held = batching.hold(model)
    queued = [batching.send(model, [1.0]), batching.send(model, [2.0])]
    batching.wait_pending(model, 2)
    # Answered while the model is still held: the refusal does not wait for room.
    with pytest.raises(InferenceServerException) as raised:
        batching.infer(model, [3.0])
    assert _status(raised.value) == "StatusCode.UNAVAILABLE"
    assert raised.value.message().startswith("Exceeds maximum queue size")
    assert not held.done.is_set()
    batching.release(model)

    held.outputs()
    for answer in queued:
        answer.outputs()
    assert 3.0 not in [m for run in batching.runs(model) for m in run]


def test_priority_one_runs_before_earlier_priority_two_requests(batching: Batching) -> None:
    model = "affine_priority"  # max_batch_size 1: one request per execution
    held = batching.hold(model)
    answers = []
    for count, (marker, priority) in enumerate(((1.0, 2), (2.0, 0), (3.0, 1)), start=1):
        # priority 0 means the default level, 2.
        answers.append(batching.send(model, [marker], priority=priority))
        batching.wait_pending(model, count)
    batching.release(model)

    held.outputs()
    for marker, answer in zip((1.0, 2.0, 3.0), answers, strict=True):
        output0, _ = answer.outputs()
        assert output0[0, 0] == 2 * marker + 1
    assert batching.runs(model) == [[HELD], [3.0], [1.0], [2.0]]


# Statistics and metrics


def test_statistics_and_metrics_agree(batching: Batching) -> None:
    model = "affine_counted"  # max_queue_size: 3
    held = batching.hold(model)
    queued = [batching.send(model, [float(marker)]) for marker in (1, 2, 3)]
    batching.wait_pending(model, 3)
    with pytest.raises(InferenceServerException, match="Exceeds maximum queue size"):
        batching.infer(model, [4.0])
    batching.release(model)
    for answer in (held, *queued):
        answer.outputs()

    stats = batching.statistics(model)
    families = batching.scrape()
    counters = {
        "inferd_inference_request_success": stats.inference_stats.success.count,
        "inferd_inference_count": stats.inference_count,
        "inferd_inference_exec_count": stats.execution_count,
        "inferd_inference_request_duration_us": stats.inference_stats.success.ns // 1000,
        "inferd_inference_queue_duration_us": stats.inference_stats.queue.ns // 1000,
    }
    for name, expected in counters.items():
        assert _value(families[name], name + "_total", model=model) == expected, name
    failures = families["inferd_inference_request_failure"]
    reasons = {
        reason: _value(
            failures, "inferd_inference_request_failure_total", model=model, reason=reason
        )
        for reason in ("REJECTED", "CANCELED", "BACKEND", "OTHER")
    }
    assert sum(reasons.values()) == stats.inference_stats.fail.count
    histogram = families["inferd_inference_batch_size"]
    assert _value(histogram, "inferd_inference_batch_size_count", model=model) == (
        stats.execution_count
    )
    assert _value(histogram, "inferd_inference_batch_size_sum", model=model) == (
        stats.inference_count
    )

    # And the numbers themselves: 4 requests in 2 executions, one refusal.
    assert (stats.inference_stats.success.count, stats.inference_count) == (4, 4)
    assert stats.execution_count == 2
    assert reasons == {"REJECTED": 1, "CANCELED": 0, "BACKEND": 0, "OTHER": 0}
    assert {batch.batch_size for batch in stats.batch_stats} == {1, 3}
    assert (
        _value(
            families["inferd_inference_pending_request_count"],
            "inferd_inference_pending_request_count",
            model=model,
        )
        == 0
    )


def test_statistics_of_an_unknown_model_are_invalid_argument(batching: Batching) -> None:
    with pytest.raises(InferenceServerException) as raised:
        batching.client.get_inference_statistics("nope", client_timeout=WAIT_S)
    assert _status(raised.value) == "StatusCode.INVALID_ARGUMENT"
    assert raised.value.message() == "requested model 'nope' is not available"


# Overload


BURST = 2000
RSS_GROWTH_LIMIT_KIB = 200 * 1024


def test_an_overload_burst_gets_one_answer_each_and_memory_stays_bounded(
    batching: Batching,
) -> None:
    model = "affine_burst"  # max_queue_size: 8, far below the burst
    pid = batching.server.process.pid
    for marker in range(16):  # warm up: allocations that happen once are not growth
        batching.infer(model, [float(marker)])
    rss_before = _rss_kib(pid)

    lock = threading.Lock()
    answers: dict[int, list[tuple[Any, Any]]] = {index: [] for index in range(BURST)}
    all_answered = threading.Event()
    answered = 0

    def on_answer(index: int, result: Any, error: Any) -> None:
        nonlocal answered
        with lock:
            answers[index].append((result, error))
            answered += 1
            if answered == BURST:
                all_answered.set()

    for index in range(BURST):
        batching.client.async_infer(
            model,
            _inputs([float(index)]),
            functools.partial(on_answer, index),
            client_timeout=WAIT_S,
        )
    assert all_answered.wait(WAIT_S), f"{answered} of {BURST} answered"

    succeeded = 0
    for index, (only,) in answers.items():  # exactly one answer each
        result, error = only
        if error is None:
            assert result.as_numpy("OUTPUT0")[0, 0] == 2 * index + 1
            succeeded += 1
        else:
            assert _status(error) == "StatusCode.UNAVAILABLE", error.message()
            assert error.message().startswith("Exceeds maximum queue size"), error.message()
    assert succeeded > 0

    # Still serving, and its memory did not grow with the offered load.
    assert batching.infer(model, [7.0]).as_numpy("OUTPUT0")[0, 0] == 15.0
    growth = _rss_kib(pid) - rss_before
    assert growth < RSS_GROWTH_LIMIT_KIB, f"RSS grew by {growth} KiB"
    stats = batching.statistics(model)
    assert stats.inference_stats.success.count == 16 + succeeded + 1
    assert stats.inference_stats.fail.count == BURST - succeeded
