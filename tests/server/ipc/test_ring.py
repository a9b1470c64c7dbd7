"""The ring allocator, driven directly and against a model; shared-memory segments and their
cleanup, on the real /dev/shm under names owned by this test process."""

from __future__ import annotations

import errno
import mmap
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from inferd.server.ipc import ring
from inferd.server.ipc.ring import (
    SEGMENT_PREFIX,
    SHM_DIRECTORY,
    RingAllocator,
    Segment,
    remove_segments,
    remove_stale_segments,
    segment_name,
)

# --- RingAllocator ---


def test_allocations_are_aligned_and_consecutive() -> None:
    allocator = RingAllocator(1024, alignment=64)
    assert allocator.allocate(1) == 0
    assert allocator.allocate(64) == 64
    assert allocator.allocate(65) == 128
    assert allocator.allocate(0) == 256  # 0 bytes still takes one aligned slot
    assert allocator.live == 4
    assert allocator.free_bytes == 1024 - 64 - 64 - 128 - 64


def test_full_ring_returns_none_and_oversize_raises() -> None:
    allocator = RingAllocator(256, alignment=64)
    assert allocator.allocate(256) == 0
    assert allocator.allocate(0) is None
    assert allocator.free_bytes == 0
    with pytest.raises(ValueError, match="257 bytes"):
        allocator.allocate(257)
    with pytest.raises(ValueError):
        allocator.allocate(-1)


def test_constructor_rejects_a_capacity_off_the_alignment() -> None:
    with pytest.raises(ValueError, match="multiple"):
        RingAllocator(100, alignment=64)
    with pytest.raises(ValueError):
        RingAllocator(0)
    with pytest.raises(ValueError):
        RingAllocator(64, alignment=0)


def test_out_of_order_free_is_reclaimed_only_behind_the_oldest() -> None:
    allocator = RingAllocator(256, alignment=64)
    first, second, third = (allocator.allocate(64) for _ in range(3))
    assert (first, second, third) == (0, 64, 128)
    allocator.free(128)
    allocator.free(64)
    # The oldest is still live, so nothing came back and the tail cannot fit 128.
    assert allocator.free_bytes == 64
    assert allocator.allocate(128) is None
    allocator.free(0)
    assert allocator.live == 0
    assert allocator.free_bytes == 256
    assert allocator.allocate(256) == 0  # empty ring restarts at 0


def test_wraps_to_the_start_when_the_end_is_too_short() -> None:
    allocator = RingAllocator(512, alignment=64)
    assert allocator.allocate(192) == 0
    assert allocator.allocate(192) == 192
    allocator.free(0)
    # 128 left at the end, 192 free at the start: a 192-byte extent wraps to 0.
    assert allocator.allocate(192) == 0
    # The skipped end stays held until the extent before the wrap is reclaimed.
    assert allocator.free_bytes == 0
    assert allocator.allocate(0) is None
    allocator.free(192)
    assert allocator.free_bytes == 512 - 192
    assert allocator.allocate(320) == 192


def test_wrapped_ring_fills_up_to_the_oldest_extent() -> None:
    allocator = RingAllocator(256, alignment=64)
    for expected in (0, 64, 128, 192):
        assert allocator.allocate(64) == expected
    allocator.free(0)
    allocator.free(64)
    assert allocator.allocate(64) == 0  # end is full: wraps
    assert allocator.allocate(64) == 64
    assert allocator.allocate(64) is None  # would overrun the oldest, at 128


def test_double_free_and_unknown_offset_raise_key_error() -> None:
    allocator = RingAllocator(256, alignment=64)
    allocator.allocate(64)
    allocator.allocate(64)
    allocator.free(64)  # freed but not reclaimed: 0 is still live
    with pytest.raises(KeyError):
        allocator.free(64)
    with pytest.raises(KeyError):
        allocator.free(32)
    allocator.free(0)
    with pytest.raises(KeyError):
        allocator.free(0)


def test_reset_forgets_every_extent() -> None:
    allocator = RingAllocator(256, alignment=64)
    allocator.allocate(64)
    allocator.allocate(128)
    allocator.reset()
    assert allocator.live == 0
    assert allocator.free_bytes == 256
    assert allocator.allocate(256) == 0
    with pytest.raises(KeyError):
        allocator.free(64)


_operations = st.lists(
    st.one_of(
        st.tuples(st.just("allocate"), st.integers(0, 1_000)),
        st.tuples(st.just("free"), st.integers(0, 1_000)),
    ),
    min_size=50,
    max_size=200,
)


@given(
    capacity_slots=st.integers(1, 16),
    alignment=st.sampled_from([1, 8, 64]),
    operations=_operations,
)
def test_random_sequences_keep_extents_disjoint_and_inside(
    capacity_slots: int, alignment: int, operations: list[tuple[str, int]]
) -> None:
    capacity = capacity_slots * 16 * alignment
    allocator = RingAllocator(capacity, alignment=alignment)
    live: dict[int, int] = {}  # offset -> bytes asked for, rounded as the allocator must
    for operation, value in operations:
        if operation == "allocate":
            nbytes = value * capacity // 3_000  # up to a third: small enough to wrap often
            offset = allocator.allocate(nbytes)
            if offset is None:
                assert live, "an empty ring must fit anything up to its capacity"
                continue
            size = max(-(-nbytes // alignment), 1) * alignment
            assert offset % alignment == 0
            assert offset >= 0 and offset + size <= capacity
            for other, other_size in live.items():
                assert offset + size <= other or other + other_size <= offset
            live[offset] = size
        elif live:
            offset = sorted(live)[value % len(live)]
            allocator.free(offset)
            del live[offset]
        assert allocator.live == len(live)
        assert allocator.free_bytes <= capacity - sum(live.values())
    for offset in list(live):
        allocator.free(offset)
    assert allocator.free_bytes == capacity
    assert allocator.allocate(capacity) == 0


# --- segment names ---


def test_segment_name_validates_labels() -> None:
    assert segment_name(42, "e3-f1-req") == f"{SEGMENT_PREFIX}42-e3-f1-req"
    for bad in ("", "a/b", "a b", "é", "x" * (ring.MAX_LABEL_LENGTH + 1), "ok\n"):
        with pytest.raises(ValueError, match="label"):
            segment_name(42, bad)
    with pytest.raises(ValueError, match="pid"):
        segment_name(0, "ok")


# --- Segment ---


@pytest.fixture
def new_name() -> Iterator[Callable[..., str]]:
    """Unique segment names owned by this process, each unlinked after the test."""
    names: list[str] = []

    def make(owner_pid: int | None = None) -> str:
        pid = os.getpid() if owner_pid is None else owner_pid
        name = segment_name(pid, f"test-{uuid.uuid4().hex}")
        names.append(name)
        return name

    yield make
    for name in names:
        (SHM_DIRECTORY / name).unlink(missing_ok=True)


def test_bytes_written_through_one_mapping_show_through_another(
    new_name: Callable[..., str],
) -> None:
    name = new_name()
    with (
        Segment.create(name, 3 * mmap.PAGESIZE) as producer,
        Segment.open(name, 3 * mmap.PAGESIZE) as consumer,
    ):
        assert producer.name == consumer.name == name
        assert producer.size == consumer.size == 3 * mmap.PAGESIZE
        assert (SHM_DIRECTORY / name).stat().st_mode & 0o777 == 0o600
        data = np.arange(1000, dtype=np.float32)
        offset = mmap.PAGESIZE + 64
        producer.buffer[offset : offset + data.nbytes] = data.tobytes()
        seen = np.frombuffer(consumer.buffer, np.float32, count=data.size, offset=offset)
        np.testing.assert_array_equal(seen, data)
        consumer.buffer[0:4] = b"back"
        assert bytes(producer.buffer[0:4]) == b"back"
        del seen


def test_size_is_rounded_up_to_a_page(new_name: Callable[..., str]) -> None:
    name = new_name()
    with Segment.create(name, 100) as segment, Segment.open(name, 100) as opened:
        assert segment.size == opened.size == mmap.PAGESIZE
    with pytest.raises(ValueError, match="positive"):
        Segment.create(new_name(), 0)


def test_open_with_another_size_raises(new_name: Callable[..., str]) -> None:
    name = new_name()
    with Segment.create(name, mmap.PAGESIZE), pytest.raises(ValueError, match="expected"):
        Segment.open(name, 2 * mmap.PAGESIZE)


def test_create_refuses_an_existing_name(new_name: Callable[..., str]) -> None:
    name = new_name()
    with Segment.create(name, mmap.PAGESIZE), pytest.raises(FileExistsError):
        Segment.create(name, mmap.PAGESIZE)


def test_no_room_in_dev_shm_is_a_clear_error(
    new_name: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    name = new_name()
    with pytest.raises(OSError, match=f"{name}.*{2 * mmap.PAGESIZE} bytes.*shm-size"):
        Segment.create(name, 2 * mmap.PAGESIZE)
    assert not (SHM_DIRECTORY / name).exists()


def test_unlink_is_idempotent_and_mappings_outlive_it(new_name: Callable[..., str]) -> None:
    with Segment.create(new_name(), mmap.PAGESIZE) as segment:
        segment.unlink()
        segment.unlink()
        assert not (SHM_DIRECTORY / segment.name).exists()
        segment.buffer[0:2] = b"ok"
        assert bytes(segment.buffer[0:2]) == b"ok"


def test_close_with_a_live_view_leaves_the_view_readable(new_name: Callable[..., str]) -> None:
    segment = Segment.create(new_name(), mmap.PAGESIZE)
    segment.buffer[0:8] = np.arange(8, dtype=np.uint8).tobytes()
    whole = np.frombuffer(segment.buffer, np.uint8, count=8)
    part = np.frombuffer(segment.buffer[4:8], np.uint8)
    segment.close()
    segment.close()
    np.testing.assert_array_equal(whole, np.arange(8, dtype=np.uint8))
    np.testing.assert_array_equal(part, [4, 5, 6, 7])
    with pytest.raises(ValueError, match="closed"):
        _ = segment.buffer
    del whole, part


# --- cleanup ---


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait()
    return process.pid


def test_remove_stale_segments_removes_dead_owners_only(new_name: Callable[..., str]) -> None:
    dead = new_name(_dead_pid())
    alive = new_name()
    for name in (dead, alive):
        Segment.create(name, mmap.PAGESIZE).close()
    removed = remove_stale_segments()
    assert dead in removed
    assert alive not in removed
    assert not (SHM_DIRECTORY / dead).exists()
    assert (SHM_DIRECTORY / alive).exists()


def test_remove_segments_matches_owner_and_label_prefix() -> None:
    tag = uuid.uuid4().hex
    pid = os.getpid()
    names = [segment_name(pid, f"{tag}-{label}") for label in ("e1-f1-req", "e1-f2-req", "e2")]
    try:
        for name in names:
            Segment.create(name, mmap.PAGESIZE).close()
        assert remove_segments(pid, f"{tag}-e1-") == names[:2]
        assert remove_segments(pid, f"{tag}-e1-") == []
        assert (SHM_DIRECTORY / names[2]).exists()
    finally:
        for name in names:
            (SHM_DIRECTORY / name).unlink(missing_ok=True)
