"""inferd installs beside tritonclient, in either order, on each Python it supports.

pip resolves each ``pip install`` alone: installing tritonclient after inferd may move
protobuf or grpcio under packages already there, and nothing re-checks them until an
import fails (issue 15: grpcio-health-checking needed protobuf 7, tritonclient moved it to
6, and every ``inferd`` command died with a protobuf VersionError). So each case here
starts a fresh virtual environment, installs inferd's wheel and tritonclient in the
order users do, and then proves the result works: ``pip check`` is clean, that
environment's ``inferd serve`` (the demo repository) starts, a ``tritonclient.grpc``
call to ``simple`` answers INPUT0 + INPUT1, and SIGTERM stops the server with exit 0.

tritonclient is not pinned: these tests are about the release users would get today.
The wheel is built once per session from a copy of this checkout. pip's cache stays on;
with it warm the whole file takes a few minutes, the first run downloads for longer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.server_process import ServerProcess

CHECKOUT = Path(__file__).resolve().parents[1]
PYENV_VERSIONS = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"

# Bounds on each step; with a warm pip cache each needs a fraction of it.
PIP_TIMEOUT_S = 480
STEP_TIMEOUT_S = 120
# Two installs of many wheels, a server start and a stop, on a small machine.
CASE_TIMEOUT_S = 900

_INFERD = "inferd"  # in Case.installs: the session's wheel
_COPY_IGNORE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
)

# Run inside the new environment: inferd and tritonclient in one process, then a call.
_CLIENT = """
import sys

import numpy as np

import inferd.server.app  # imports every generated module inferd serves from
import tritonclient.grpc as grpcclient

a = np.arange(16, dtype=np.int32).reshape(1, 16)
b = np.full((1, 16), 5, dtype=np.int32)
inputs = [
    grpcclient.InferInput("INPUT0", [1, 16], "INT32"),
    grpcclient.InferInput("INPUT1", [1, 16], "INT32"),
]
inputs[0].set_data_from_numpy(a)
inputs[1].set_data_from_numpy(b)
client = grpcclient.InferenceServerClient(sys.argv[1])
try:
    result = client.infer("simple", inputs, client_timeout=60)
finally:
    client.close()
total = result.as_numpy("OUTPUT0")
assert (total == a + b).all(), total
print("simple: INPUT0 + INPUT1 ok")
"""


@dataclass(frozen=True, slots=True)
class Case:
    python: tuple[int, int]
    installs: tuple[str, ...]  # one `pip install` each, in this order

    @property
    def id(self) -> str:
        return f"py{self.python[0]}.{self.python[1]}:" + ",".join(self.installs)


CASES = [
    Case((3, 11), (_INFERD, "tritonclient[all]")),
    Case((3, 11), ("tritonclient[all]", _INFERD)),
    Case((3, 10), (_INFERD, "tritonclient[grpc]")),
    Case((3, 12), (_INFERD, "tritonclient[grpc]")),
    Case((3, 13), (_INFERD, "tritonclient[grpc]")),
]


# Nothing from this test run (a PYTHONPATH to the checkout) or the user's site-packages
# may stand in for what the new environment has installed.
_ISOLATED = {"PYTHONPATH": "", "PYTHONNOUSERSITE": "1"}


def _environment() -> dict[str, str]:
    return {**os.environ, **_ISOLATED}


def _run(command: Sequence[str | Path], timeout: float) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_environment(),
        cwd=Path(command[0]).parent,  # not the checkout: its folders must not be importable
    )
    assert result.returncode == 0, (
        f"{' '.join(map(str, command))} exited with {result.returncode}:\n"
        f"{result.stdout}\n{result.stderr}"
    )
    return result


def _interpreter(version: tuple[int, int]) -> Path:
    """This test run's Python if it is that version, else pyenv's or PATH's; or skip."""
    if sys.version_info[:2] == version:
        return Path(sys.executable)
    name = f"{version[0]}.{version[1]}"

    def patch_level(path: Path) -> int:
        patch = path.name.rsplit(".", 1)[-1]
        return int(patch) if patch.isdigit() else -1

    for root in sorted(PYENV_VERSIONS.glob(f"{name}.*"), key=patch_level, reverse=True):
        if (root / "bin" / "python3").is_file():
            return root / "bin" / "python3"
    found = shutil.which(f"python{name}")
    if found is None or ".pyenv/shims" in found:  # a shim fails unless pyenv selects it
        pytest.skip(
            f"Python {name} is not installed: no {PYENV_VERSIONS}/{name}.*/bin/python3 "
            f"and no python{name} on PATH"
        )
    return Path(found)


@pytest.fixture(scope="session")
def inferd_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """inferd's wheel, built from a copy so that the build leaves nothing in the checkout."""
    source = tmp_path_factory.mktemp("source") / "inferd"
    shutil.copytree(CHECKOUT, source, ignore=_COPY_IGNORE, symlinks=True)
    out = tmp_path_factory.mktemp("wheel")
    pip: list[str | Path] = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "-q",
        "-w",
        str(out),
        str(source),
    ]
    _run(pip, timeout=PIP_TIMEOUT_S)
    (wheel,) = out.glob("inferd-*.whl")
    return wheel


@pytest.mark.timeout(CASE_TIMEOUT_S)
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_installs_beside_tritonclient_and_serves(
    case: Case, inferd_wheel: Path, tmp_path: Path
) -> None:
    python = _interpreter(case.python)
    venv = tmp_path / "venv"
    _run([python, "-m", "venv", venv], timeout=STEP_TIMEOUT_S)
    bin_dir = venv / "bin"
    for requirement in case.installs:
        wanted: str | Path = inferd_wheel if requirement == _INFERD else requirement
        _run([bin_dir / "python", "-m", "pip", "install", "-q", wanted], timeout=PIP_TIMEOUT_S)
    _run([bin_dir / "python", "-m", "pip", "check"], timeout=STEP_TIMEOUT_S)

    # The environment's own console script, as users start it; no --model-repository:
    # the demo repository.
    server = ServerProcess(
        None, "--host", "127.0.0.1", program=[str(bin_dir / "inferd")], env=_ISOLATED
    )
    try:
        server.wait_ready(timeout=STEP_TIMEOUT_S)
        assert server.address.startswith("127.0.0.1:")
        answer = _run([bin_dir / "python", "-c", _CLIENT, server.address], STEP_TIMEOUT_S)
        assert "simple: INPUT0 + INPUT1 ok" in answer.stdout
        assert server.stop() == 0, server.log_text()
    finally:
        server.kill()
