from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from inferd.engines.demo.repository import build_demo_repository
from tests.support.model_builders import build_test_repository
from tests.support.server_process import ServerProcess, serve


@pytest.fixture(scope="session")
def demo_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_repository(tmp_path_factory.mktemp("demo") / "models")


@pytest.fixture(scope="session")
def test_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Models for every datatype, several versions, auto-complete and broken models."""
    return build_test_repository(tmp_path_factory.mktemp("test-repo") / "models")


@pytest.fixture(scope="session")
def demo_server(demo_repository: Path) -> Iterator[ServerProcess]:
    yield from serve(demo_repository)


@pytest.fixture(scope="session")
def test_server(test_repository: Path) -> Iterator[ServerProcess]:
    yield from serve(test_repository)


@pytest.fixture
def start_server() -> Iterator[Callable[..., ServerProcess]]:
    """Start servers for one test (their own flags, signals); all are reaped afterwards."""
    started: list[ServerProcess] = []

    def start(repository: Path | None, *args: str, wait: bool = True) -> ServerProcess:
        server = ServerProcess(repository, *args)
        started.append(server)
        return server.wait_ready() if wait else server

    yield start
    for server in started:
        server.kill()
