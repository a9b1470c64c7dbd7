"""The ``inferd`` command. Subcommands that need no server run in-process through
``main()``; those that talk to one run as ``python -m inferd.server`` subprocesses
against the session's demo server, exactly as a user types them."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from inferd.server.cli import main
from tests.support.server_process import ServerProcess

DEMO_MODELS = {
    "cnn_classifier",
    "identity_fp32",
    "simple",
    "simple_identity",
    "simple_int8",
    "simple_string",
    "repeat_int32",
    "simple_sequence",
    "simple_dyna_sequence",
    "simple_string_dyna_sequence",
}


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


def test_console_script_is_the_cli() -> None:
    (script,) = importlib.metadata.entry_points(group="console_scripts", name="inferd")
    assert script.value == "inferd.server.cli:main"
    assert script.load() is main


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: inferd")
    for command in ("serve", "models", "infer", "demo-repository"):
        assert command in out


def test_serve_help_explains_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for option in (
        "--model-repository",
        "--grpc-port",
        "--unix-socket",
        "--grace-period",
        "--reuse-port",
        "--gil-switch-interval",
    ):
        assert option in out
    assert "8001" in out  # the default port, as Triton's


def test_help_as_a_process() -> None:
    # The real entry path: python -m inferd.server, not just main().
    top = inferd("--help")
    assert top.returncode == 0, top.stderr
    assert "serve" in top.stdout
    serve = inferd("serve", "--help")
    assert serve.returncode == 0, serve.stderr
    assert "--model-repository" in serve.stdout
    assert "--grpc-port" in serve.stdout


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == 2
    assert "usage: inferd" in capsys.readouterr().err


def test_demo_repository_writes_a_repository(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    destination = tmp_path / "models"
    assert main(["demo-repository", str(destination)]) == 0
    out = capsys.readouterr().out
    assert str(destination) in out
    assert f"inferd serve --model-repository {destination}" in out

    assert {p.name for p in destination.iterdir()} == DEMO_MODELS
    for model in DEMO_MODELS:
        config = (destination / model / "config.pbtxt").read_text()
        assert f'name: "{model}"' in config
        model_file = "model.py" if 'backend: "python"' in config else "model.onnx"
        assert (destination / model / "1" / model_file).stat().st_size > 0


def test_demo_repository_into_an_empty_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo-repository", str(tmp_path)]) == 0
    assert (tmp_path / "simple" / "config.pbtxt").is_file()


def test_demo_repository_refuses_a_non_empty_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    destination = tmp_path / "models"
    destination.mkdir()
    (destination / "precious.txt").write_text("keep me")
    assert main(["demo-repository", str(destination)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("inferd demo-repository: ")
    assert str(destination) in captured.err
    assert "not an empty directory" in captured.err
    # Untouched, and no staging directory left beside it.
    assert [p.name for p in destination.iterdir()] == ["precious.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["models"]


def test_demo_repository_refuses_a_non_empty_directory_as_a_process(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    completed = inferd("demo-repository", str(tmp_path))
    assert completed.returncode == 1
    assert "not an empty directory" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_infer_rejects_a_malformed_input(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["infer", "simple", "--input", "INPUT0"])
    assert exited.value.code == 2
    assert "--input wants NAME=VALUES" in capsys.readouterr().err


# --- against a running server ---------------------------------------------------------


def test_models_lists_the_demo_models_ready(demo_server: ServerProcess) -> None:
    assert demo_server.address is not None
    completed = inferd("models", "-u", demo_server.address)
    assert completed.returncode == 0, completed.stderr
    rows = [line.split("\t") for line in completed.stdout.splitlines()]
    assert {row[0] for row in rows} == DEMO_MODELS
    for row in rows:
        assert row[1:] == ["1", "READY"], row


def test_models_lists_broken_models_with_their_reason(test_server: ServerProcess) -> None:
    assert test_server.address is not None
    completed = inferd("models", "--url", test_server.address)
    assert completed.returncode == 0, completed.stderr
    rows = {line.split("\t")[0]: line.split("\t") for line in completed.stdout.splitlines()}
    assert rows["identity_fp32"] == ["identity_fp32", "1", "READY"]
    _, version, state, reason = rows["broken_onnx"]
    assert (version, state) == ("-", "UNAVAILABLE")
    assert "model.onnx" in reason


def test_infer_simple(demo_server: ServerProcess) -> None:
    assert demo_server.address is not None
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
    assert demo_server.address is not None
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
    assert demo_server.address is not None
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
    assert demo_server.address is not None
    completed = inferd("infer", "no_such_model", "--input", "INPUT0=[1]", "-u", demo_server.address)
    assert completed.returncode == 1
    assert completed.stdout == ""
    assert completed.stderr.startswith("inferd infer: ")
    assert "NOT_FOUND" in completed.stderr
    assert "no_such_model" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_infer_unknown_input_names_the_model_inputs(demo_server: ServerProcess) -> None:
    assert demo_server.address is not None
    completed = inferd("infer", "simple", "--input", "INPUT9=[1]", "-u", demo_server.address)
    assert completed.returncode != 0
    assert "INPUT9" in completed.stderr
    assert "INPUT0, INPUT1" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_infer_wrong_shape_is_the_servers_error(demo_server: ServerProcess) -> None:
    assert demo_server.address is not None
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


def test_serve_a_missing_repository_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-repository"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "inferd.server",
            "serve",
            "--grpc-port",
            "0",
            "--model-repository",
            str(missing),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"model repository {missing} does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    assert "listening on" not in result.stderr


def test_serve_refuses_a_non_positive_gil_switch_interval(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "inferd.server", "serve", "--grpc-port", "0",
         "--no-metrics", "--gil-switch-interval", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert "the GIL switch interval must be > 0 seconds, got 0.0" in result.stderr
    assert "Traceback" not in result.stderr


def test_gil_switch_interval_is_pythons_for_cpu_models_unless_given(
    start_server: Callable[..., ServerProcess], demo_repository: Path
) -> None:
    cpu_only = start_server(demo_repository)
    assert "GIL switch interval" not in cpu_only.log_text()  # Python's own 5 ms stays
    given = start_server(demo_repository, "--gil-switch-interval", "0.001")
    assert "GIL switch interval: 0.001 s" in given.log_text()
