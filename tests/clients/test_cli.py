"""``inferd models`` and ``inferd infer`` (inferd.clients.cli). A malformed command line
runs in-process through ``main()``; the rest run as ``python -m inferd.server``
subprocesses against the session's servers, exactly as a user types them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from inferd.server.cli import main
from tests.support.server_process import ServerProcess


def inferd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inferd.server", *args],
        capture_output=True,
        text=True,
        timeout=100,
    )


def _list(values: range | list[int]) -> str:
    return json.dumps(list(values))


# --- no server needed ---------------------------------------------------------------


def test_infer_rejects_a_malformed_input(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["infer", "simple", "--input", "INPUT0"])
    assert exited.value.code == 2
    assert "--input wants NAME=VALUES" in capsys.readouterr().err


# --- against a running server ---------------------------------------------------------


def test_models_lists_the_demo_models_ready(
    demo_server: ServerProcess, demo_repository: Path
) -> None:
    completed = inferd("models", "-u", demo_server.address)
    assert completed.returncode == 0, completed.stderr
    rows = [line.split("\t") for line in completed.stdout.splitlines()]
    assert {row[0] for row in rows} == {model.name for model in demo_repository.iterdir()}
    for row in rows:
        assert row[1:] == ["1", "READY"], row


def test_models_lists_broken_models_with_their_reason(test_server: ServerProcess) -> None:
    completed = inferd("models", "--url", test_server.address)
    assert completed.returncode == 0, completed.stderr
    rows = {line.split("\t")[0]: line.split("\t") for line in completed.stdout.splitlines()}
    assert rows["identity_fp32"] == ["identity_fp32", "1", "READY"]
    _, version, state, reason = rows["broken_onnx"]
    assert (version, state) == ("-", "UNAVAILABLE")
    assert "model.onnx" in reason


def test_infer_simple(demo_server: ServerProcess) -> None:
    input0, input1 = list(range(16)), [2 * i - 5 for i in range(16)]
    completed = inferd(
        "infer",
        "simple",
        "--input",
        f"INPUT0={_list(input0)}",
        "--input",
        f"INPUT1={_list(input1)}",
        "-u",
        demo_server.address,
    )
    assert completed.returncode == 0, completed.stderr
    outputs = json.loads(completed.stdout)
    # simple is batched: the CLI sends a batch of one and prints it as such.
    assert outputs == {
        "OUTPUT0": [[a + b for a, b in zip(input0, input1, strict=True)]],
        "OUTPUT1": [[a - b for a, b in zip(input0, input1, strict=True)]],
    }


def test_infer_comma_separated_values_and_one_output(demo_server: ServerProcess) -> None:
    ones = ",".join(["1"] * 16)
    completed = inferd(
        "infer",
        "simple",
        "--input",
        f"INPUT0={','.join(str(i) for i in range(16))}",
        "--input",
        f"INPUT1={ones}",
        "--output",
        "OUTPUT1",
        "-u",
        demo_server.address,
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout) == {"OUTPUT1": [[i - 1 for i in range(16)]]}


def test_infer_simple_string(demo_server: ServerProcess) -> None:
    input0 = [str(i) for i in range(16)]
    input1 = ["10"] * 16
    completed = inferd(
        "infer",
        "simple_string",
        "--input",
        f"INPUT0={json.dumps(input0)}",
        "--input",
        f"INPUT1={json.dumps(input1)}",
        "-u",
        demo_server.address,
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout) == {
        "OUTPUT0": [[str(i + 10) for i in range(16)]],
        "OUTPUT1": [[str(i - 10) for i in range(16)]],
    }


def test_infer_unknown_model_is_a_clear_error(demo_server: ServerProcess) -> None:
    completed = inferd("infer", "no_such_model", "--input", "INPUT0=[1]", "-u", demo_server.address)
    assert completed.returncode == 1
    assert completed.stdout == ""
    assert completed.stderr.startswith("inferd infer: ")
    assert "NOT_FOUND" in completed.stderr
    assert "no_such_model" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_infer_unknown_input_names_the_model_inputs(demo_server: ServerProcess) -> None:
    completed = inferd("infer", "simple", "--input", "INPUT9=[1]", "-u", demo_server.address)
    assert completed.returncode != 0
    assert "INPUT9" in completed.stderr
    assert "INPUT0, INPUT1" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_infer_wrong_shape_is_the_servers_error(demo_server: ServerProcess) -> None:
    completed = inferd(
        "infer",
        "simple",
        "--input",
        "INPUT0=[1,2,3]",
        "--input",
        "INPUT1=[1,2,3]",
        "-u",
        demo_server.address,
    )
    assert completed.returncode == 1
    assert completed.stderr.startswith("inferd infer: ")
    assert "INVALID_ARGUMENT" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    # A Unix socket path nobody listens on: refused at once, no port to race for.
    completed = inferd("models", "-u", f"unix:{tmp_path / 'nobody.sock'}")
    assert completed.returncode == 1
    assert completed.stderr.startswith("inferd models: ")
    assert "UNAVAILABLE" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_bad_url_is_a_clear_error() -> None:
    completed = inferd("models", "-u", "http://localhost:8001")
    assert completed.returncode == 1
    assert "url must be 'host:port' or 'unix:/path'" in completed.stderr
    assert "Traceback" not in completed.stderr
