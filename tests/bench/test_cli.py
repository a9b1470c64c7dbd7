"""`inferd bench` end to end against a real server, with short windows."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from inferd.bench.cli import main
from inferd.bench.runner import expand_range
from tests.support.server_process import ServerProcess

SHORT = ["-p", "300", "-r", "3", "--warmup", "100", "-s", "1000"]


def test_closed_loop_sweep_writes_table_json_and_csv(
    demo_server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report, table = tmp_path / "bench.json", tmp_path / "bench.csv"
    code = main([
        "-m", "simple", "-u", demo_server.address, "--concurrency-range", "1:2",
        "--channels", "2", *SHORT, "--json", str(report), "-f", str(table),
    ])  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "concurrency 1" in out.out and "concurrency 2" in out.out
    assert "window 1" in out.err  # progress while running
    results = json.loads(report.read_text())["results"]
    assert [result["level"]["value"] for result in results] == [1, 2]
    for result in results:
        assert result["throughput"] > 0
        assert result["errors"] == {}
        latency = result["latency"]
        assert 0 < latency["p50_us"] <= latency["p99_us"] <= latency["max_us"]
        # inferd keeps statistics, so the server-side breakdown is filled in.
        assert result["server"]["requests"] > 0
    with table.open() as file:
        rows = list(csv.DictReader(file))
    assert [row["Concurrency"] for row in rows] == ["1", "2"]
    assert float(rows[0]["Inferences/Second"]) > 0
    assert int(rows[0]["p99 latency"]) >= int(rows[0]["p50 latency"])


def test_open_loop_with_bytes_inputs(
    demo_server: ServerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main([
        "-m", "simple_string", "-u", demo_server.address, "--request-rate-range", "50",
        "--request-distribution", "poisson", *SHORT,
    ])  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "50 req/s (poisson)" in out.out


def test_errors_are_reported_not_hidden(
    demo_server: ServerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    # A per-request timeout no request can meet: every request fails, and says how.
    code = main([
        "-m", "cnn_classifier", "-u", demo_server.address, "-b", "64",
        "--request-timeout", "0.000001", *SHORT,
    ])  # fmt: skip
    out = capsys.readouterr()
    assert code == 1
    assert "DEADLINE_EXCEEDED" in out.out


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        (["-m", "nope"], "Request for unknown model: 'nope' is not found"),
        (["-m", "identity_fp32"], "--shape"),
        (["-m", "simple", "-b", "9"], "9"),
        (["-m", "simple", "--concurrency-range", "0:4"], "START"),
        (["-m", "simple", "--shape", "INPUT9:16"], "INPUT9"),
        (["-m", "simple", "--channels", "0"], "--channels must be positive"),
    ],
)
def test_bad_arguments_give_clear_errors(
    demo_server: ServerProcess,
    capsys: pytest.CaptureFixture[str],
    arguments: list[str],
    complaint: str,
) -> None:
    assert main([*arguments, "-u", demo_server.address, *SHORT]) == 2
    assert complaint in capsys.readouterr().err


def test_both_load_modes_at_once_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["-m", "simple", "--concurrency-range", "1", "--request-rate-range", "10"])
    assert exited.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_ranges_expand_like_perf_analyzer() -> None:
    assert expand_range("1:8:2", integer=True) == [1, 3, 5, 7]
    assert expand_range("4", integer=True) == [4]
    assert expand_range("10:30:10", integer=False) == [10.0, 20.0, 30.0]
    with pytest.raises(ValueError, match="START"):
        expand_range("8:1", integer=True)


def test_plot_is_a_png(demo_server: ServerProcess, tmp_path: Path) -> None:
    image = tmp_path / "sweep.png"
    code = main([
        "-m", "simple", "-u", demo_server.address, "--concurrency-range", "1:2",
        *SHORT, "--plot", str(image),
    ])  # fmt: skip
    assert code == 0
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
