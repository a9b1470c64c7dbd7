"""SIGTERM under load loses nothing: a closed loop of 64 requests in flight, the signal
mid-run, and every outcome classified.

Each request either completes or is refused with UNAVAILABLE (retryable: the server did
no work for it), never CANCELLED or anything else. The calls gRPC core had received when
the drain began run (the server logs how many were still waiting to be taken), and so
do those it had already taken. One process (the threads front), ``--frontends 2`` and
the asyncio front in one process.

Counts, not timing: the signal goes after a number of answers, the loop ends when the
server has exited, and every wait is bounded so that a broken drain fails the test.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import pytest

from inferd.protos import grpc_service_pb2 as pb
from inferd.protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.server_process import ServerProcess

IN_FLIGHT = 64
ANSWERS_BEFORE_SIGNAL = 300
RPC_TIMEOUT_S = 60.0
BOUND_S = 120.0  # the whole run; a healthy drain takes well under a second
RETRY_BACKOFF_S = 0.005  # a client's pause before it retries a refused request
_ADMITTED = re.compile(r"draining: (\d+) call\(s\) received and not yet taken will run")


def _request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="identity_fp32")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 16])
    request.raw_input_contents.append(np.arange(16, dtype=np.float32).tobytes())
    return request


async def _drive(server: ServerProcess) -> Counter[tuple[str, str]]:
    """Outcomes by (when it was sent: "before"/"after" the signal, status code)."""
    outcomes: Counter[tuple[str, str]] = Counter()
    request = _request()
    signalled = asyncio.Event()
    answered = 0
    deadline = time.monotonic() + BOUND_S

    async def loop(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
        nonlocal answered
        while server.process.poll() is None and time.monotonic() < deadline:
            sent = "after" if signalled.is_set() else "before"
            try:
                response = await stub.ModelInfer(request, timeout=RPC_TIMEOUT_S)
            except grpc.aio.AioRpcError as error:
                outcomes[(sent, error.code().name)] += 1
                await asyncio.sleep(RETRY_BACKOFF_S)
                continue
            assert response.raw_output_contents[0] == request.raw_input_contents[0]
            outcomes[(sent, "OK")] += 1
            answered += 1
            if answered == ANSWERS_BEFORE_SIGNAL:
                signalled.set()
                server.signal(signal.SIGTERM)

    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        await asyncio.gather(*(loop(stub) for _ in range(IN_FLIGHT)))
    return outcomes


@pytest.mark.parametrize(
    "mode",
    [(), ("--frontends", "2"), ("--grpc-front", "asyncio")],
    ids=["one-process", "frontends-2", "asyncio-front"],
)
def test_sigterm_with_64_in_flight_completes_or_refuses_every_request(
    demo_repository: Path, mode: tuple[str, ...]
) -> None:
    server = ServerProcess(demo_repository, "--grace-period", "60", *mode).wait_ready()
    try:
        outcomes = asyncio.run(_drive(server))
        assert server.wait(timeout=RPC_TIMEOUT_S) == 0, server.log_text()
    finally:
        server.kill()
    log = server.log_text()
    codes = {code for _, code in outcomes}
    assert codes <= {"OK", "UNAVAILABLE"}, (outcomes, log)
    assert outcomes[("before", "OK")] >= ANSWERS_BEFORE_SIGNAL, outcomes
    # Every call waiting in gRPC core at the signal ran; each front says how many.
    admitted = sum(int(count) for count in _ADMITTED.findall(log))
    assert "draining:" in log, log
    assert outcomes[("before", "OK")] + outcomes[("after", "OK")] >= (
        ANSWERS_BEFORE_SIGNAL + admitted
    ), (outcomes, admitted)
