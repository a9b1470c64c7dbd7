"""`inferd bench --streaming`: requests over ModelStreamInfer, the per-response report of
decoupled models, and the stream that carries them, against a real server.

Windows are short and nothing asserts a speed: only counts the model decides (how many
responses per request) are compared exactly.
"""

from __future__ import annotations

import asyncio
import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from inferd.bench.cli import main
from inferd.bench.load import LoadSession, LoadTotals
from inferd.bench.report import table, write_csv
from inferd.bench.results import LatencySummary, LevelResult, LoadLevel, LoadMode, WindowResult
from inferd.bench.streams import RequestStream
from inferd.clients import (
    AsyncClient,
    DeadlineExceededError,
    InferdError,
    InternalError,
    UnavailableError,
)
from tests.support.server_process import ServerProcess

SHORT = ["-p", "300", "-r", "3", "--warmup", "100", "-s", "1000"]
SIMPLE = {
    "INPUT0": np.arange(16, dtype=np.int32).reshape(1, 16),
    "INPUT1": np.ones((1, 16), dtype=np.int32),
}
WAIT_S = 30.0  # a bound on waits that would otherwise hang a broken test, not a timing check


def _repeat_inputs(count: int, delay_ms: int = 0) -> dict[str, np.ndarray]:
    return {
        "IN": np.arange(count, dtype=np.int32),
        "DELAY": np.full(count, delay_ms, dtype=np.uint32),
        "WAIT": np.zeros(1, dtype=np.uint32),
    }


@pytest.fixture
def repeat_int32(demo_repository: Path) -> str:
    assert (demo_repository / "repeat_int32").is_dir()  # the decoupled demo model
    return "repeat_int32"


def _address(server: ServerProcess) -> str:
    return server.address


# --- inferd bench --streaming ------------------------------------------------------------


@pytest.mark.parametrize(
    "load",
    [["--concurrency-range", "1:2"], ["--request-rate-range", "100"]],
    ids=["closed", "open"],
)
def test_streaming_sweep_of_simple_has_no_errors(
    demo_server: ServerProcess,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    load: list[str],
) -> None:
    report, sheet = tmp_path / "bench.json", tmp_path / "bench.csv"
    code = main([
        "-m", "simple", "-u", _address(demo_server), "--streaming", *load, *SHORT,
        "--json", str(report), "-f", str(sheet),
    ])  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "simple, streaming at" in out.err
    document = json.loads(report.read_text())
    assert document["context"]["streaming"] is True
    assert document["context"]["decoupled"] is False
    for result in document["results"]:
        assert result["errors"] == {}
        assert result["throughput"] > 0
        assert result["server"]["requests"] > 0  # the server counted streamed requests
        # One response per request: nothing per response to report.
        assert result["first_response"] is None and result["response_throughput"] is None
    assert "first p50 ms" not in out.out
    with sheet.open() as file:
        assert "Response Throughput" not in next(csv.reader(file))


def test_decoupled_sweep_reports_first_and_inter_response_latency(
    demo_server: ServerProcess,
    repeat_int32: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = tmp_path / "repeat.json"
    entry = {
        "IN": {"content": [1, 2, 3, 4], "shape": [4]},
        "DELAY": {"content": [0, 0, 0, 0], "shape": [4]},
        "WAIT": [0],
    }
    data.write_text(json.dumps({"data": [entry]}))
    report, sheet = tmp_path / "bench.json", tmp_path / "bench.csv"
    code = main([
        "-m", repeat_int32, "-u", _address(demo_server), "--streaming", "--input-data",
        str(data), "--concurrency-range", "2", *SHORT, "--json", str(report), "-f", str(sheet),
    ])  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "(decoupled), streaming" in out.err
    for column in ("resp/s", "first p50 ms", "first p99 ms", "inter p50 ms", "inter p99 ms"):
        assert column in out.out

    (result,) = json.loads(report.read_text())["results"]
    assert result["errors"] == {}
    requests = result["latency"]["count"]
    first, inter = result["first_response"], result["inter_response"]
    # Four elements: four responses with outputs per request, three gaps between them.
    assert requests > 0
    assert first["count"] == requests
    assert inter["count"] == 3 * requests
    assert result["response_throughput"] == pytest.approx(4 * result["throughput"])
    # The request ends at its final response, after its first.
    assert 0 < first["avg_us"] <= result["latency"]["avg_us"]

    with sheet.open() as file:
        (row,) = list(csv.DictReader(file))
    assert float(row["Response Throughput"]) > 0
    for name in ("first response", "inter response"):
        assert int(row[f"p99 {name} latency"]) >= int(row[f"p50 {name} latency"])


def test_a_decoupled_model_needs_streaming(
    demo_server: ServerProcess, repeat_int32: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main([
        "-m", repeat_int32, "-u", _address(demo_server), "--shape", "IN:4", "--shape", "DELAY:4",
        *SHORT,
    ])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "is decoupled" in err and "add --streaming" in err


# --- the report of decoupled results ------------------------------------------------------


def _summary(value_us: float) -> LatencySummary:
    return LatencySummary(10, value_us, value_us, value_us, value_us, value_us, value_us)


def test_table_and_csv_add_response_columns_only_for_decoupled_results(tmp_path: Path) -> None:
    plain = LevelResult(
        LoadLevel(LoadMode.CONCURRENCY, 1), True, 3, 100.0, _summary(2000), {}, 300, 0, 0.1, None
    )
    decoupled = LevelResult(
        LoadLevel(LoadMode.CONCURRENCY, 2), True, 3, 50.0, _summary(8000), {}, 150, 0, 0.1, None,
        first_response=_summary(1000), inter_response=_summary(3000), response_throughput=200.0,
    )  # fmt: skip

    assert "first p50 ms" not in table([plain])
    text = table([plain, decoupled])
    header, _, plain_row, decoupled_row = text.splitlines()[:4]
    columns = ["max ms", "resp/s", "first p50 ms", "first p99 ms", "inter p50 ms", "errors"]
    assert [header.index(column) for column in columns] == sorted(
        header.index(column) for column in columns
    )
    assert "200.0" in decoupled_row and "1.00" in decoupled_row and "3.00" in decoupled_row
    assert plain_row.count(" - ") >= 5  # a plain level beside it has nothing per response

    sheet = tmp_path / "levels.csv"
    write_csv([plain, decoupled], sheet)
    with sheet.open() as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0])[:3] == ["Concurrency", "Inferences/Second", "Response Throughput"]
    assert rows[1]["Response Throughput"] == "200.00"
    assert rows[1]["p50 first response latency"] == "1000"
    assert rows[1]["Max inter response latency"] == "3000"
    assert rows[0]["p50 first response latency"] == ""


# --- the stream under the load -----------------------------------------------------------


def test_streamed_closed_and_open_loops_settle_every_request(demo_server: ServerProcess) -> None:
    async def measure() -> tuple[list[WindowResult], LoadTotals]:
        async with LoadSession(
            _address(demo_server), "simple", SIMPLE, channels=2, timeout=10, streaming=True
        ) as session:
            windows = [
                await session.window(LoadLevel(LoadMode.CONCURRENCY, 4), 0.5),
                await session.window(LoadLevel(LoadMode.RATE, 200), 0.5),
            ]
            return windows, session.totals

    windows, totals = asyncio.run(measure())
    for window in windows:
        assert window.errors == {}
        assert len(window.latencies_us) > 0 and np.all(window.latencies_us > 0)
        assert len(window.first_response_us) == 0  # not decoupled: one latency per request
    assert totals.issued == totals.succeeded > 0


def test_a_decoupled_session_needs_streaming() -> None:
    with pytest.raises(ValueError, match="decoupled"):
        LoadSession("127.0.0.1:1", "m", {}, decoupled=True)


def test_an_error_response_fails_only_its_request(demo_server: ServerProcess) -> None:
    async def scenario() -> None:
        async with AsyncClient(_address(demo_server)) as client:
            good = RequestStream(client, "simple", SIMPLE)
            bad = RequestStream(client, "simple", {"INPUT0": SIMPLE["INPUT0"]})
            with pytest.raises(InferdError, match="INPUT1"):
                await bad.infer()
            assert len((await good.infer()).response_times) == 1
            # The error ended a request, not the call: the same stream answers again.
            with pytest.raises(InferdError, match="INPUT1"):
                await bad.infer()
            # A closed stream opens again at the next request.
            await good.close()
            assert len((await good.infer()).response_times) == 1
            await good.close()
            await bad.close()

    asyncio.run(asyncio.wait_for(scenario(), WAIT_S))


def test_requests_on_a_stream_that_ends_fail_with_its_status(
    start_server: Callable[..., ServerProcess], demo_repository: Path
) -> None:
    server = start_server(demo_repository)
    address = _address(server)

    async def scenario() -> None:
        async with AsyncClient(address) as client:
            stream = RequestStream(client, "simple", SIMPLE)
            await stream.infer()
            server.process.kill()
            server.process.wait()
            # The stream fails under the request (UNAVAILABLE, or INTERNAL when gRPC
            # fails the write), or the one opened for it cannot connect.
            for _ in range(2):
                with pytest.raises((UnavailableError, InternalError)):
                    await stream.infer()
            await stream.close()

    asyncio.run(asyncio.wait_for(scenario(), WAIT_S))


def test_a_request_past_its_timeout_is_a_deadline_error(
    demo_server: ServerProcess, repeat_int32: str
) -> None:
    async def scenario() -> None:
        async with AsyncClient(_address(demo_server)) as client:
            slow = RequestStream(client, repeat_int32, _repeat_inputs(1, delay_ms=2000))
            with pytest.raises(DeadlineExceededError):
                await slow.infer(timeout=0.05)
            quick = RequestStream(client, repeat_int32, _repeat_inputs(3), decoupled=True)
            answered = await quick.infer(timeout=WAIT_S)
            assert len(answered.response_times) == 3
            assert answered.finished >= answered.response_times[-1]
            await slow.close()
            await quick.close()

    asyncio.run(asyncio.wait_for(scenario(), WAIT_S))
