"""The table both kinds of shared memory keep their regions in: one namespace across
kinds, bounds checked before any access, a region freed exactly once after its last
lease. Pure logic: the regions here are plain records."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from inferd.engines import EngineError, ErrorCode
from inferd.engines.client_memory.region_table import RegionTable


@dataclass(frozen=True)
class Record:
    name: str
    byte_size: int


def _table(freed: list[str], kind: str = "cuda", max_regions: int = 8) -> RegionTable[Record]:
    return RegionTable(kind, lambda region: freed.append(region.name), max_regions)


def test_names_are_one_namespace_across_two_tables() -> None:
    system, cuda = _table([], "system"), _table([], "cuda")
    system.taken, cuda.taken = cuda.__contains__, system.__contains__
    system.add(Record("shared", 8))
    with pytest.raises(EngineError) as raised:
        cuda.add(Record("shared", 8))
    assert raised.value.code is ErrorCode.ALREADY_EXISTS
    assert raised.value.message == "shared memory region 'shared' already in manager"
    system.remove("shared")
    cuda.add(Record("shared", 8))


def test_not_found_names_the_kind_as_triton_does() -> None:
    with pytest.raises(EngineError) as raised:
        _table([], "cuda").regions("gone")
    assert raised.value.code is ErrorCode.NOT_FOUND
    assert raised.value.message == "Unable to find cuda shared memory region: 'gone'"


@pytest.mark.parametrize(
    ("offset", "size", "message"),
    [
        (-1, 1, "Invalid offset"),
        (64, 0, "Invalid offset"),
        (2**63, 1, "Invalid offset"),
        (0, -1, "Invalid byte size"),
        (1, 64, "Invalid offset + byte size"),
        (63, 2**64 - 1, "Invalid offset + byte size"),
    ],
)
def test_slices_outside_the_region_are_refused(offset: int, size: int, message: str) -> None:
    table = _table([])
    table.add(Record("r", 64))
    with pytest.raises(EngineError) as raised:
        table.lease("r", offset, size, "input 'X'")
    assert raised.value.code is ErrorCode.INVALID_ARGUMENT
    assert raised.value.message.startswith(f"{message} for shared memory region: 'r'")
    table.remove("r")  # nothing is held: freed at once


def test_a_region_is_freed_once_after_its_last_lease() -> None:
    freed: list[str] = []
    table = _table(freed)
    table.add(Record("r", 64))
    first = table.lease("r", 0, 8, "input 'A'")
    second = table.lease("r", 8, 56, "input 'B'")
    table.remove("r")
    assert freed == [] and "r" not in table
    table.add(Record("r", 16))  # the name is free again while old requests finish
    table.release(first)
    assert freed == []
    table.release(second)
    assert freed == ["r"]
    table.close()
    assert freed == ["r", "r"]
    with pytest.raises(EngineError) as raised:
        table.add(Record("late", 8))
    assert raised.value.code is ErrorCode.UNAVAILABLE
