"""What both kinds of client shared memory (system and CUDA) share: region names, the
table of registered regions, and leases on slices of them.

Names are one namespace across kinds, as in Triton, since a tensor names only its region
(``taken`` asks the other kind's table). Every slice a request uses is bounds-checked in
Python integers, so offsets and sizes near 2**63 or below zero cannot wrap, and is held
by a lease: a region unregistered while in use is freed (``free``: close a descriptor,
unmap GPU memory) when its last lease ends.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from inferd.engines.errors import EngineError, ErrorCode

MAX_REGIONS = 1024
MAX_NAME_LENGTH = 1024
RESERVED_PREFIX = "inferd_"  # kept for inferd's own objects


class Region(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def byte_size(self) -> int: ...


R = TypeVar("R", bound=Region)


def _invalid(message: str) -> EngineError:
    return EngineError(ErrorCode.INVALID_ARGUMENT, message)


def check_region_name(name: str) -> None:
    if not name:
        raise _invalid("a shared memory region needs a name")
    if len(name) > MAX_NAME_LENGTH:
        raise _invalid(f"shared memory region names are at most {MAX_NAME_LENGTH} characters")
    if name.startswith(RESERVED_PREFIX):
        raise _invalid(
            f"failed to register shared memory region '{name}': names starting with "
            f"'{RESERVED_PREFIX}' are reserved for inferd"
        )


@dataclass(slots=True)
class _Entry(Generic[R]):
    region: R
    users: int = 0
    unregistered: bool = False  # free the region when the last user is done


@dataclass(frozen=True, slots=True)
class Lease(Generic[R]):
    """``byte_size`` bytes at ``offset`` within a region, held until released."""

    entry: _Entry[R]
    offset: int  # within the region
    byte_size: int

    @property
    def region(self) -> R:
        return self.entry.region


class RegionTable(Generic[R]):
    """The registered regions of one kind, by name; thread-safe. ``free`` releases a
    region's resources once it is unregistered and no request uses it."""

    def __init__(self, kind: str, free: Callable[[R], None], max_regions: int) -> None:
        self._kind = kind  # "system", "cuda": Triton's word in "Unable to find ..." errors
        self._free = free
        self._max_regions = max_regions
        self._entries: dict[str, _Entry[R]] = {}
        self._lock = threading.Lock()
        self._closed = False
        # Names registered as the other kind in this process.
        self.taken: Callable[[str], bool] = lambda name: False

    def check_free(self, name: str) -> None:
        """Refuse ``name`` if it cannot be registered now (before the work of opening it)."""
        with self._lock:
            self._check_free(name)

    def _check_free(self, name: str) -> None:
        if self._closed:
            raise EngineError(ErrorCode.UNAVAILABLE, "the server is shutting down")
        if name in self._entries or self.taken(name):
            raise EngineError(
                ErrorCode.ALREADY_EXISTS, f"shared memory region '{name}' already in manager"
            )
        if len(self._entries) >= self._max_regions:
            raise EngineError(
                ErrorCode.UNAVAILABLE,
                f"failed to register shared memory region '{name}': this server holds "
                f"{self._max_regions} regions already, its limit; unregister some first",
            )

    def add(self, region: R) -> None:
        """Register an opened region; raises as ``check_free`` (the caller frees it)."""
        with self._lock:
            self._check_free(region.name)
            self._entries[region.name] = _Entry(region)

    def __contains__(self, name: str) -> bool:
        with self._lock:
            return name in self._entries

    def names(self) -> set[str]:
        with self._lock:
            return set(self._entries)

    def regions(self, name: str) -> list[R]:
        """One region, or every one for an empty name; NOT_FOUND in Triton's words."""
        with self._lock:
            if not name:
                return [entry.region for entry in self._entries.values()]
            entry = self._entries.get(name)
        if entry is None:
            raise EngineError(
                ErrorCode.NOT_FOUND, f"Unable to find {self._kind} shared memory region: '{name}'"
            )
        return [entry.region]

    def remove(self, name: str) -> None:
        """Forget one region (an unknown name is not an error, as in Triton) or, with an
        empty name, all; a region still in use is freed when its last lease ends."""
        with self._lock:
            if name:
                entry = self._entries.pop(name, None)
                entries = [entry] if entry is not None else []
            else:
                entries = list(self._entries.values())
                self._entries.clear()
            idle = []
            for entry in entries:
                entry.unregistered = True
                if entry.users == 0:
                    idle.append(entry.region)
        for region in idle:
            self._free(region)

    def close(self) -> None:
        """Shutdown: free every idle region now, any in use when its last lease ends;
        registering is refused from now on."""
        with self._lock:
            self._closed = True
        self.remove("")

    def lease(self, name: str, offset: int, byte_size: int, what: str) -> Lease[R]:
        """``byte_size`` bytes at ``offset`` of region ``name``, checked and held."""
        with self._lock:
            entry = self._entries.get(name)
            if entry is None:
                raise EngineError(
                    ErrorCode.NOT_FOUND, f"Unable to find shared memory region: '{name}'"
                )
            size = entry.region.byte_size
            if offset < 0 or offset >= size:
                raise _invalid(
                    f"Invalid offset for shared memory region: '{name}' ({what}: offset "
                    f"{offset}, region of {size} bytes)"
                )
            if byte_size < 0:
                raise _invalid(
                    f"Invalid byte size for shared memory region: '{name}' ({what}: "
                    f"{byte_size}, expected >= 0)"
                )
            if offset + byte_size > size:
                raise _invalid(
                    f"Invalid offset + byte size for shared memory region: '{name}' ({what}: "
                    f"{offset} + {byte_size} > {size} bytes)"
                )
            entry.users += 1
        return Lease(entry, offset, byte_size)

    def release(self, lease: Lease[R]) -> None:
        entry = lease.entry
        with self._lock:
            entry.users -= 1
            idle = entry.users == 0 and entry.unregistered
        if idle:
            self._free(entry.region)
