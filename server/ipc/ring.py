"""Shared-memory rings that carry large tensors between a front process and the engine.

One ring per direction per front. Exactly one process, the producer, allocates and frees
extents of a ring, always on one thread (its event loop): it writes a tensor's bytes into
an extent and sends ``(offset, length)`` in a small control message over the Unix socket.
The consumer reads the bytes in place (``np.frombuffer`` over its own mapping, no copy)
and, once done, sends the offset back; the producer then frees the extent.

That split is why the shared memory holds only bytes: the allocator's state lives in the
producer alone, the consumer never writes it, so it needs no locks, no cross-process
atomics and no recovery of a half-written header when a peer dies mid-update. Offsets,
not pointers, travel in messages because each process maps the segment at its own
address. When the peer dies, the producer ``reset()``\\s its allocator: nothing of the
dead peer's can still be reading.

Segments are files under ``/dev/shm`` opened with ``os.open`` rather than
``multiprocessing.shared_memory``, whose resource tracker unlinks segments and warns on
its own schedule. Their names carry the supervisor's pid, so a later inferd can remove
what a crashed one left behind (``remove_stale_segments``).

Linux only.
"""

from __future__ import annotations

import errno
import mmap
import os
import re
import stat
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SEGMENT_PREFIX = "inferd-ipc-"
SHM_DIRECTORY = Path("/dev/shm")
MAX_LABEL_LENGTH = 200  # leaves room for the prefix and a pid within a file name's 255
_LABEL = re.compile(r"[A-Za-z0-9_-]+")


def segment_name(owner_pid: int, label: str) -> str:
    """The name of segment ``label`` owned by the supervisor process ``owner_pid``."""
    if owner_pid <= 0:
        raise ValueError(f"owner_pid must be a positive pid, got {owner_pid}")
    if len(label) > MAX_LABEL_LENGTH or _LABEL.fullmatch(label) is None:
        raise ValueError(
            f"segment label must be 1 to {MAX_LABEL_LENGTH} letters, digits, '-' or '_',"
            f" got {label!r}"
        )
    return f"{SEGMENT_PREFIX}{owner_pid}-{label}"


def _page_rounded(size: int) -> int:
    if size <= 0:
        raise ValueError(f"segment size must be positive, got {size}")
    return -(-size // mmap.PAGESIZE) * mmap.PAGESIZE


def _path(name: str) -> Path:
    if "/" in name or name in ("", ".", "..") or len(name) > 255:
        raise ValueError(f"segment name must be a plain file name, got {name!r}")
    return SHM_DIRECTORY / name


class Segment:
    """A POSIX shared-memory object mapped read/write into this process."""

    def __init__(self, name: str, mapping: mmap.mmap) -> None:
        self._name = name
        self._size = len(mapping)
        self._mmap = mapping
        self._view: memoryview | None = memoryview(mapping)

    @classmethod
    def create(cls, name: str, size: int) -> Segment:
        """Create segment ``name`` of ``size`` bytes rounded up to a page, pages faulted in.

        Fails (FileExistsError) if it already exists.
        """
        size = _page_rounded(size)
        path = _path(name)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            try:
                # Reserves tmpfs pages now (and sets the size): a /dev/shm too small fails
                # here with ENOSPC instead of a SIGBUS at the first write past its end.
                os.posix_fallocate(fd, 0, size)
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
                raise OSError(
                    errno.ENOSPC,
                    f"no room in {SHM_DIRECTORY} for shared-memory segment {name!r} of"
                    f" {size} bytes; give it more (docker run --shm-size, or a larger tmpfs)",
                ) from error
            mapping = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        os.close(fd)  # mmap keeps its own descriptor
        # One write per page, so the first requests do not pay the page faults. The
        # temporary array's export of the mapping ends with this statement.
        np.frombuffer(mapping, np.uint8)[:: mmap.PAGESIZE] = 0
        return cls(name, mapping)

    @classmethod
    def open(cls, name: str, size: int) -> Segment:
        """Map the existing segment ``name``, whose size must be ``size`` rounded up to a page."""
        size = _page_rounded(size)
        fd = os.open(_path(name), os.O_RDWR | os.O_NOFOLLOW)
        try:
            found = os.fstat(fd)
            if not stat.S_ISREG(found.st_mode):
                raise ValueError(f"shared-memory segment {name!r} is not a regular file")
            if found.st_size != size:
                raise ValueError(
                    f"shared-memory segment {name!r} has {found.st_size} bytes, expected {size}"
                )
            # MAP_POPULATE faults the pages in without touching them: the creator's data
            # may already be there, so this side cannot write a byte per page as create does.
            mapping = mmap.mmap(
                fd, size, mmap.MAP_SHARED | mmap.MAP_POPULATE, mmap.PROT_READ | mmap.PROT_WRITE
            )
        finally:
            os.close(fd)
        return cls(name, mapping)

    @property
    def name(self) -> str:
        return self._name

    @property
    def size(self) -> int:
        return self._size

    @property
    def buffer(self) -> memoryview:
        """A writable view of the whole segment; raises ValueError once closed."""
        if self._view is None:
            raise ValueError(f"shared-memory segment {self._name!r} is closed")
        return self._view

    def unlink(self) -> None:
        """Remove the name; mappings stay valid until closed. Safe to call twice."""
        _path(self._name).unlink(missing_ok=True)

    def close(self) -> None:
        """Unmap, or, while arrays still view the segment, leave the unmap to their end.

        A request in flight may still hold an array over the segment when its front or the
        engine shuts down; the mapping then lives until the last such array is collected.
        """
        if self._view is None:
            return
        view, self._view = self._view, None
        try:
            view.release()
            self._mmap.close()
        except BufferError:
            # Arrays still export the mapping: it is unmapped once they and this object
            # are collected, which mmap does on its own.
            pass

    def __enter__(self) -> Segment:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _owner_pid(name: str) -> int | None:
    if not name.startswith(SEGMENT_PREFIX):
        return None
    pid, dash, _ = name[len(SEGMENT_PREFIX) :].partition("-")
    if not dash or not pid.isdigit():
        return None
    return int(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def _unlink_all(directory: Path, names: list[str]) -> list[str]:
    removed = []
    for name in sorted(names):
        try:
            (directory / name).unlink()
        except FileNotFoundError:
            continue  # another cleaner got there first
        removed.append(name)
    return removed


def remove_stale_segments(directory: Path = SHM_DIRECTORY) -> list[str]:
    """Unlink the segments of supervisors that no longer run; returns the names removed.

    A dead supervisor's pid reused by a new process keeps its segments until that one ends.
    """
    stale = []
    for name in os.listdir(directory):
        pid = _owner_pid(name)
        # pid 0 would make os.kill signal our whole process group.
        if pid is not None and pid > 0 and not _alive(pid):
            stale.append(name)
    return _unlink_all(directory, stale)


def remove_segments(
    owner_pid: int, label_prefix: str = "", directory: Path = SHM_DIRECTORY
) -> list[str]:
    """Unlink ``owner_pid``'s segments whose label starts with ``label_prefix``."""
    prefix = f"{SEGMENT_PREFIX}{owner_pid}-{label_prefix}"
    return _unlink_all(
        directory, [name for name in os.listdir(directory) if name.startswith(prefix)]
    )


@dataclass(slots=True)
class _Extent:
    end: int  # exclusive; stretched to the capacity when the next allocation wraps to 0
    freed: bool = False


class RingAllocator:
    """Extents of a ring of ``capacity`` bytes, allocated in order and freed in any order.

    Extents are handed out one after another from the head. A freed extent's space comes
    back only once every extent allocated before it is freed too, so one slow consumer
    holds back the space behind it, but allocation and freeing are O(1) amortised and
    there is no fragmentation to manage. When an extent does not fit between the head and
    the end of the ring, it goes to offset 0 if the space before the oldest extent allows;
    the skipped end counts as held by the extent before the wrap until that one is
    reclaimed. An allocation of 0 bytes takes ``alignment`` bytes, so its offset is
    distinct and can be freed like any other.

    Not thread-safe: all calls come from the producer's event loop.
    """

    def __init__(self, capacity: int, alignment: int = 64) -> None:
        if alignment <= 0:
            raise ValueError(f"alignment must be positive, got {alignment}")
        if capacity <= 0 or capacity % alignment:
            raise ValueError(
                f"capacity must be a positive multiple of the alignment {alignment}, got {capacity}"
            )
        self._capacity = capacity
        self._alignment = alignment
        # Offset -> extent, oldest first; freed extents stay until everything older is freed.
        self._extents: OrderedDict[int, _Extent] = OrderedDict()
        self._head = 0  # where the next extent starts
        self._held = 0  # bytes spanned by the extents in _extents, skipped ends included
        self._live = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def free_bytes(self) -> int:
        """Bytes no extent holds: capacity less live extents, extents freed but not yet
        reclaimed (an older one is still live) and a skipped end.

        Not necessarily contiguous: it may be split between the head and the end of the
        ring and the start of the ring, so the largest allocation that succeeds now can be
        smaller. With no live extent it is the whole capacity.
        """
        return self._capacity - self._held

    @property
    def live(self) -> int:
        """Extents allocated and not yet freed."""
        return self._live

    def allocate(self, nbytes: int) -> int | None:
        """The offset of a new extent of at least ``nbytes``, or None while none fits."""
        if nbytes < 0 or nbytes > self._capacity:
            raise ValueError(f"cannot allocate {nbytes} bytes in a ring of {self._capacity}")
        size = max(-(-nbytes // self._alignment), 1) * self._alignment
        if not self._extents:
            offset = 0
        else:
            tail = next(iter(self._extents))  # the oldest extent's offset
            if self._head > tail:  # not wrapped: free space is [head, capacity) and [0, tail)
                if self._head + size <= self._capacity:
                    offset = self._head
                elif size <= tail:
                    newest = next(reversed(self._extents.values()))
                    self._held += self._capacity - newest.end
                    newest.end = self._capacity
                    offset = 0
                else:
                    return None
            elif self._head + size <= tail:  # wrapped: free space is [head, tail)
                offset = self._head
            else:
                return None
        self._extents[offset] = _Extent(offset + size)
        self._head = offset + size
        self._held += size
        self._live += 1
        return offset

    def free(self, offset: int) -> None:
        """Free the extent at ``offset``; KeyError if no live extent starts there."""
        extent = self._extents[offset]
        if extent.freed:
            raise KeyError(offset)
        extent.freed = True
        self._live -= 1
        while self._extents:
            oldest_offset, oldest = next(iter(self._extents.items()))
            if not oldest.freed:
                break
            del self._extents[oldest_offset]
            self._held -= oldest.end - oldest_offset
        if not self._extents:
            self._head = 0  # the next extent starts at 0, so the whole ring is one run

    def reset(self) -> None:
        """Forget every extent: the peer that held them is gone."""
        self._extents.clear()
        self._head = 0
        self._held = 0
        self._live = 0
