"""The ``inferd`` dispatcher, ``inferd serve``'s options (declared on ``ServerConfig``) and
``inferd demo-repository``. In-process through ``main()`` where no server is needed, else
as ``python -m inferd.server`` subprocesses, exactly as a user types them. The client
commands' tests are in tests/clients/test_cli.py."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib.metadata
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from inferd.server import cli as server_cli
from inferd.server.cli import COMMANDS_GROUP, Serve, command_parser, main
from inferd.server.config import ServerConfig
from inferd.server.options import NotAnOption, Option, add_options, from_args, option_of
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


# --- the commands ----------------------------------------------------------------------

COMMANDS = ["serve", "models", "infer", "bench", "demo-repository"]


def test_help_lists_each_command_once_in_order(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    listed = re.findall(r"^    (\S+)", out, flags=re.MULTILINE)
    assert listed == COMMANDS
    assert "load-test a model" in out  # each with its one-line help


def test_each_command_is_an_entry_point_its_layer_owns() -> None:
    found = {e.name: e for e in importlib.metadata.entry_points(group=COMMANDS_GROUP)}
    assert sorted(found) == sorted(COMMANDS)
    owners = {name: entry.value.partition(":")[0] for name, entry in found.items()}
    assert owners == {
        "serve": "inferd.server.cli",
        "demo-repository": "inferd.server.cli",
        "models": "inferd.clients.cli",
        "infer": "inferd.clients.cli",
        "bench": "inferd.bench.cli",
    }
    for name, entry in found.items():
        command = entry.load()()
        assert isinstance(command.help, str) and command.help, name
        assert command.description is None or isinstance(command.description, str), name
        parser = command_parser(name, command)
        assert parser.prog == f"inferd {name}"
        assert callable(command.run), name


def test_server_cli_imports_neither_clients_nor_bench() -> None:
    # At any depth, as the layer check reads it: a function-level import counts too.
    tree = ast.parse(Path(server_cli.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}  # fmt: skip
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {name for name in imported if name.startswith(("inferd.clients", "inferd.bench"))}


def test_serve_loads_neither_clients_nor_bench() -> None:
    code = (
        "import sys\n"
        "from inferd.server.cli import main\n"
        "try:\n"
        "    main(['serve', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith(('inferd.clients', 'inferd.bench'))))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=100
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines()[-1] == "[]"


def test_an_unknown_command_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["srve"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'srve'" in err
    for command in COMMANDS:
        assert repr(command) in err


def test_a_mistyped_option_names_its_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--grpc-prot", "1"])
    assert exited.value.code == 2
    assert "inferd serve: error: unrecognized arguments: --grpc-prot" in capsys.readouterr().err


# --- serve's options: one table, ServerConfig's fields ---------------------------------


def _config(*argv: str) -> ServerConfig:
    return from_args(ServerConfig, command_parser("serve", Serve()).parse_args(argv))


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings} - {
        "-h",
        "--help",
    }


def test_every_config_field_is_an_option_or_says_why_not() -> None:
    flags = []
    for field in dataclasses.fields(ServerConfig):
        spec = option_of(field)  # raises for a field that says nothing
        assert isinstance(spec, Option | NotAnOption), field.name
        if isinstance(spec, Option):
            flags += [spec.flag] + ([spec.off_flag] if spec.off_flag else [])
        else:
            assert spec.reason, field.name
    assert len(flags) == len(set(flags))
    assert set(flags) == _flags(command_parser("serve", Serve()))


def test_a_field_that_says_nothing_of_the_command_line_is_refused() -> None:
    @dataclasses.dataclass
    class Forgetful:
        size: int = 1

    with pytest.raises(TypeError, match="config field 'size' says nothing"):
        add_options(argparse.ArgumentParser(), Forgetful)


# Every option at a value other than its default (--no-metrics has its own test).
EVERY_OPTION = [
    "--model-repository", "/srv/models",
    "--model-control-mode", "explicit",
    "--load-model", "simple", "--load-model", "identity_fp32",
    "--repository-poll-secs", "2.5",
    "--host", "0.0.0.0",
    "--grpc-port", "9001",
    "--unix-socket", "/run/inferd.sock",
    "--max-message-size", "1048576",
    "--max-concurrent-rpcs", "16",
    "--grpc-front", "threads",
    "--grpc-threads", "8",
    "--grace-period", "1.5",
    "--metrics-port", "9002",
    "--trace-exporter", "console",
    "--trace-rate", "0.25",
    "--reuse-port",
    "--frontends", "3",
    "--frontend-ring-mib", "8",
    "--exit-on-engine-failure",
    "--no-uvloop",
    "--allow-client-shm",
    "--gil-switch-interval", "0.001",
    "--log-level", "debug",
]  # fmt: skip

EVERY_OPTION_CONFIG = ServerConfig(
    model_repository=Path("/srv/models"),
    model_control_mode="explicit",
    load_models=("simple", "identity_fp32"),
    repository_poll_secs=2.5,
    host="0.0.0.0",
    grpc_port=9001,
    unix_socket=Path("/run/inferd.sock"),
    max_message_bytes=1048576,
    max_concurrent_rpcs=16,
    grpc_front="threads",
    grpc_threads=8,
    grace_period_s=1.5,
    metrics_port=9002,
    trace_exporter="console",
    trace_rate=0.25,
    reuse_port=True,
    frontends=3,
    ring_bytes=8 * 2**20,
    exit_on_engine_failure=True,
    use_uvloop=False,
    allow_client_shm=True,
    gil_switch_interval_s=0.001,
    log_level="debug",
)


def test_every_flag_round_trips_into_the_config() -> None:
    given = {arg for arg in EVERY_OPTION if arg.startswith("--")}
    assert given == _flags(command_parser("serve", Serve())) - {"--no-metrics"}
    config = _config(*EVERY_OPTION)
    defaults = ServerConfig()
    for field in dataclasses.fields(ServerConfig):
        expected = getattr(EVERY_OPTION_CONFIG, field.name)
        assert expected != getattr(defaults, field.name), f"{field.name}: not a new value"
        assert getattr(config, field.name) == expected, field.name
    assert config == EVERY_OPTION_CONFIG


def test_no_flags_give_the_default_config() -> None:
    assert _config() == ServerConfig()


def test_flags_that_turn_things_off() -> None:
    assert _config("--no-metrics").metrics_port is None
    assert _config("--metrics-port", "0", "--no-metrics").metrics_port is None
    assert _config("--grpc-port", "-1").grpc_port is None
    assert _config("--grpc-port", "0").grpc_port == 0


def test_a_repeated_flag_is_a_tuple() -> None:
    assert _config("--load-model", "*").load_models == ("*",)


def test_help_shows_the_config_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # unwrapped
    defaults = ServerConfig()
    shown = {
        "--model-control-mode": f"--repository-poll-secs ({defaults.model_control_mode})",
        "--repository-poll-secs": f"repository changes ({defaults.repository_poll_secs})",
        "--host": f"TCP address to bind ({defaults.host})",
        "--grpc-port": f"-1 disables TCP ({defaults.grpc_port})",
        "--max-message-size": f"either way ({defaults.max_message_bytes})",
        "--max-concurrent-rpcs": f"RESOURCE_EXHAUSTED ({defaults.max_concurrent_rpcs})",
        "--grpc-front": f"asyncio in front processes ({defaults.grpc_front})",
        "--grpc-threads": f"wait their turn ({defaults.grpc_threads})",
        "--grace-period": f"after SIGTERM ({defaults.grace_period_s})",
        "--metrics-port": f"picks a free port ({defaults.metrics_port})",
        "--frontends": f"({defaults.frontends}: everything in one process)",
        "--frontend-ring-mib": f"when it is full ({defaults.ring_bytes // 2**20})",
        "--log-level": f"and above ({defaults.log_level})",
    }
    for flag, text in shown.items():
        assert text in out, flag
    assert (defaults.grpc_port, defaults.metrics_port, defaults.ring_bytes) == (
        8001,
        8002,
        64 * 2**20,
    )
    # Any flag whose help shows its default shows the value that becomes the field's.
    parser = command_parser("serve", Serve())
    by_name = {field.name: field for field in dataclasses.fields(ServerConfig)}
    for action in parser._actions:
        if "%(default)s" in (action.help or ""):
            assert action.option_strings[0] in shown
            spec = option_of(by_name[action.dest])
            assert isinstance(spec, Option)
            assert spec.convert.to_config(action.default) == getattr(defaults, action.dest)


def test_serve_refuses_no_frontends_and_a_ring_under_a_mib() -> None:
    for flags in (["--frontends", "0"], ["--frontend-ring-mib", "0"]):
        completed = inferd("serve", "--grpc-port", "0", "--no-metrics", *flags)
        assert completed.returncode == 2, flags
        assert "--frontends must be >= 1 and --frontend-ring-mib >= 1" in completed.stderr


# --- demo-repository -------------------------------------------------------------------


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
