"""Run ``inferd serve`` as a real subprocess, the way users and orchestrators do."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

_LISTENING = re.compile(r"listening on (\S+)")
_METRICS = re.compile(r"metrics on (http://\S+)")
_READY = "ready:"


# How the suite runs inferd: with this interpreter, from the checkout on its path.
CHECKOUT_INFERD = (sys.executable, "-m", "inferd.server")


class ServerProcess:
    def __init__(
        self,
        repository: Path | None,
        *args: str,
        env: dict[str, str] | None = None,
        program: Sequence[str] = CHECKOUT_INFERD,
    ):
        """``program`` runs inferd's CLI: e.g. another environment's ``inferd`` script."""
        command = [
            *program,
            "serve",
            "--grpc-port",
            "0",
            "--metrics-port",
            "0",
            *args,
        ]
        if repository is not None:
            command += ["--model-repository", str(repository)]
        self.process = subprocess.Popen(
            command,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.log: list[str] = []
        self._address: str | None = None
        self.metrics_url: str | None = None
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()

    def _read_log(self) -> None:
        assert self.process.stderr is not None
        with self.process.stderr:
            for line in self.process.stderr:
                self.log.append(line)
                listening = _LISTENING.search(line)
                if listening and self._address is None:
                    self._address = listening.group(1).split(",")[0]
                metrics = _METRICS.search(line)
                if metrics:
                    self.metrics_url = metrics.group(1)
                if _READY in line:
                    self._ready.set()
        self.process.wait()  # output ended: the process is exiting; let poll() see it
        self._ready.set()  # wait_ready() then reports the exit

    def wait_ready(self, timeout: float = 60) -> ServerProcess:
        if not self._ready.wait(timeout) or self.process.poll() is not None:
            self.kill()
            raise RuntimeError("inferd did not become ready:\n" + self.log_text())
        return self

    @property
    def address(self) -> str:
        """Where it listens (the first address it logged); known once it is listening."""
        if self._address is None:
            raise RuntimeError("inferd has not logged where it listens:\n" + self.log_text())
        return self._address

    def log_text(self) -> str:
        return "".join(self.log)

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 60) -> int:
        code = self.process.wait(timeout)
        self._reader.join(timeout)
        return code

    def stop(self) -> int:
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
        return self.wait()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.wait()


def serve(repository: Path | None, *args: str) -> Iterator[ServerProcess]:
    """A fixture body: a ready server, then a clean stop that must exit 0."""
    server = ServerProcess(repository, *args).wait_ready()
    yield server
    code = server.stop()
    assert code == 0, f"inferd exited with {code}:\n{server.log_text()}"


# Imported by the server's processes at start-up as `sitecustomize` (from PYTHONPATH):
# logs each ModelInfer request's id once its handler runs, i.e. once the server has it,
# in the process that runs it (a front process, with --frontends).
PROBE = """
import logging

from inferd.server.grpc import servicer, threaded

_log = logging.getLogger("inferd.test-probe")
_model_infer = servicer.InferenceServicer.ModelInfer
_threaded_model_infer = threaded.ThreadedInferenceServicer.ModelInfer


async def ModelInfer(self, request, context):
    _log.warning("probe: ModelInfer %s started", request.id)
    return await _model_infer(self, request, context)


def threaded_model_infer(self, request, context):  # --grpc-front threads
    _log.warning("probe: ModelInfer %s started", request.id)
    return _threaded_model_infer(self, request, context)


servicer.InferenceServicer.ModelInfer = ModelInfer
threaded.ThreadedInferenceServicer.ModelInfer = threaded_model_infer
"""


def probe_env(directory: Path) -> dict[str, str]:
    """The environment that loads ``PROBE`` into a server, written into ``directory``."""
    (directory / "sitecustomize.py").write_text(PROBE)
    paths = [str(directory), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(path for path in paths if path)}
