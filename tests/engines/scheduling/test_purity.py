"""The schedulers stay pure logic: no threads, clocks, event loop, gRPC or protobuf, so
every rule is tested with plain numbers (config parsing lives in engines/repository)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SCHEDULING = Path(__file__).resolve().parents[3] / "engines" / "scheduling"
FORBIDDEN = ("asyncio", "threading", "time", "grpc", "google.protobuf", "inferd.protos", "torch")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", sorted(SCHEDULING.glob("*.py")), ids=lambda path: path.name)
def test_a_scheduling_module_imports_nothing_impure(module: Path) -> None:
    impure = {
        name
        for name in _imports(module)
        for forbidden in FORBIDDEN
        if name == forbidden or name.startswith(forbidden + ".")
    }
    assert not impure, f"{module.name} imports {sorted(impure)}"
