"""Triton's system shared memory: clients register POSIX shared memory objects as named
regions, then requests read inputs from them and write outputs into them.

Hardened against the client that owns the object, which may be hostile or merely buggy:

- Regions are read and written with ``os.pread``/``os.pwrite`` on a kept descriptor, never
  mapped: a client that shrinks or removes its object makes a read come up short (an
  error for that request) instead of a SIGBUS that kills the server.
- The object's size is checked (``os.fstat``) on every use, and every bound is checked
  in Python integers, so offsets and sizes near 2**63 or below zero cannot wrap.
- Keys must look like POSIX shm names (``/name``) and are opened under ``/dev/shm`` with
  ``O_NOFOLLOW``, regular files only, so a key cannot reach another file.
- After registration, errors name the region, never its key.
- A region in use by a request stays open until that request is done, even when it is
  unregistered meanwhile; every descriptor is closed on unregister and at shutdown.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from inferd.engines import EngineError, ErrorCode
from inferd.engines.client_memory.region_table import (
    MAX_REGIONS,
    RESERVED_PREFIX,
    Lease,
    RegionTable,
    check_region_name,
)

SHM_DIRECTORY = "/dev/shm"
_NAME_MAX = 255  # a file name's limit, which a POSIX shm name is
_IO_CHUNK = 1 << 30  # Linux moves at most ~2 GiB per read/write call
_TURN_ON = "start inferd with --allow-client-shm to use system shared memory"


def _invalid(message: str) -> EngineError:
    return EngineError(ErrorCode.INVALID_ARGUMENT, message)


@dataclass(frozen=True, slots=True)
class RegionStatus:
    name: str
    key: str
    offset: int
    byte_size: int


@dataclass(frozen=True, slots=True)
class _Region:
    name: str
    key: str
    offset: int  # of the region within the object
    byte_size: int
    fd: int


def _close(region: _Region) -> None:
    os.close(region.fd)


def _check_object(piece: Lease[_Region]) -> int:
    """Where the slice starts in the object, once the object is still big enough."""
    region = piece.region
    try:
        size = os.fstat(region.fd).st_size
    except OSError as exc:
        raise _invalid(f"shared memory region '{region.name}' cannot be used: {exc}") from None
    if region.offset + region.byte_size > size:
        raise _invalid(
            f"shared memory region '{region.name}' was truncated by its owner: it was "
            f"registered as {region.byte_size} bytes at offset {region.offset}, but the "
            f"object now holds {size} bytes"
        )
    return region.offset + piece.offset


def _read(piece: Lease[_Region]) -> bytes:
    start = _check_object(piece)
    chunks: list[bytes] = []
    done = 0
    while done < piece.byte_size:
        chunk = os.pread(piece.region.fd, min(piece.byte_size - done, _IO_CHUNK), start + done)
        if not chunk:  # shrunk between the size check and the read
            raise _invalid(
                f"shared memory region '{piece.region.name}' was truncated by its owner "
                "while it was read"
            )
        chunks.append(chunk)
        done += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _write(piece: Lease[_Region], data: bytes | memoryview) -> None:
    if len(data) > piece.byte_size:
        raise ValueError("the caller checks the size first")
    start = _check_object(piece)
    view = memoryview(data).cast("B")
    done = 0
    while done < len(view):
        done += os.pwrite(piece.region.fd, view[done : done + _IO_CHUNK], start + done)


class SystemSharedMemoryRegistry:
    """The registered regions, by name; thread-safe. ``enabled=False``: refuses them all."""

    def __init__(
        self,
        enabled: bool,
        max_regions: int = MAX_REGIONS,
        directory: str = SHM_DIRECTORY,
        max_request_bytes: int = 2**31 - 1,
    ) -> None:
        self.enabled = enabled
        # What one request may read, as gRPC bounds what it may carry: a sparse object
        # can claim far more bytes than the machine has.
        self.max_request_bytes = max_request_bytes
        self._directory = directory
        # Its ``taken`` names the CUDA regions of this process (one namespace).
        self.table: RegionTable[_Region] = RegionTable("system", _close, max_regions)

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        if not self.enabled:
            raise EngineError(
                ErrorCode.UNAVAILABLE,
                f"system shared memory is off on this server: {_TURN_ON} (only where the "
                "clients are trusted to share this machine's /dev/shm)",
            )
        check_region_name(name)
        _check_key(name, key)
        self.table.check_free(name)
        fd = self._open(key)
        try:
            size = os.fstat(fd).st_size
            if byte_size <= 0 or offset + byte_size > size:
                raise _invalid(
                    f"failed to register shared memory region '{name}': invalid args (offset "
                    f"{offset} + byte_size {byte_size} must be within the object's {size} "
                    "bytes, and byte_size > 0)"
                )
            self.table.add(_Region(name, key, offset, byte_size, fd))
        except BaseException:
            os.close(fd)
            raise

    def _open(self, key: str) -> int:
        path = os.path.join(self._directory, key[1:])
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            reason = "it is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
            raise _invalid(f"Unable to open shared memory region: '{key}' ({reason})") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise _invalid(
                f"Unable to open shared memory region: '{key}' (not a shared memory object)"
            )
        return fd

    def status(self, name: str) -> list[RegionStatus]:
        return [
            RegionStatus(region.name, region.key, region.offset, region.byte_size)
            for region in self.table.regions(name)
        ]

    def unregister(self, name: str) -> None:
        """Forget one region (an unknown name is not an error, as in Triton) or, with an
        empty name, all; a region still in use closes when its last request is done."""
        self.table.remove(name)

    def close(self) -> None:
        """Shutdown: close every idle region's descriptor now and any still in use when
        its request ends; registering is refused from now on."""
        self.table.close()

    # --- the RPCs' side: async, so a front process can ask the engine process ----------

    async def register_region(self, name: str, key: str, offset: int, byte_size: int) -> None:
        await asyncio.to_thread(self.register, name, key, offset, byte_size)  # opens a file

    async def region_status(self, name: str) -> list[RegionStatus]:
        return self.status(name)

    async def unregister_region(self, name: str) -> None:
        self.unregister(name)

    async def prepare(self, names: set[str]) -> None:
        """Before a request that names these regions is decoded: nothing to do here; a
        front process's mirror fetches regions registered through another front."""

    def names(self) -> set[str]:
        return self.table.names()

    def __contains__(self, name: str) -> bool:
        return name in self.table

    def _acquire(self, name: str, offset: int, byte_size: int, what: str) -> Lease[_Region]:
        if not self.enabled:
            # System or CUDA: while shared memory is off, this process answers for both.
            raise _invalid(
                f"{what} names shared memory region '{name}', but start inferd with "
                "--allow-client-shm to use shared memory"
            )
        return self.table.lease(name, offset, byte_size, what)

    @contextmanager
    def request(self) -> Iterator[RequestRegions]:
        """The regions one request reads and writes, released when it is done."""
        regions = RequestRegions(self)
        try:
            yield regions
        finally:
            regions.release()


@dataclass(slots=True)
class RequestRegions:
    """One request's use of shared memory: inputs read at decode time, output slices held
    until the response is written."""

    registry: SystemSharedMemoryRegistry
    outputs: dict[str, Lease[_Region]] = field(default_factory=dict)
    bytes_read: int = 0

    def reads(self, name: str) -> bool:
        """Whether this process reads and writes region ``name`` itself: a system region,
        or any while shared memory is off (so that the error says how to turn it on).
        Other names are CUDA regions (or unknown), which the engine resolves."""
        return not self.registry.enabled or name in self.registry

    def read_input(self, name: str, offset: int, byte_size: int, what: str) -> bytes:
        piece = self.registry._acquire(name, offset, byte_size, what)
        self.bytes_read += byte_size
        if self.bytes_read > self.registry.max_request_bytes:
            self.registry.table.release(piece)
            raise _invalid(
                f"{what}: the request's inputs in shared memory add up to {self.bytes_read} "
                f"bytes, more than the {self.registry.max_request_bytes} bytes this server "
                "reads for one request (--max-message-size)"
            )
        try:
            return _read(piece)
        finally:
            self.registry.table.release(piece)

    def bind_output(self, output: str, name: str, offset: int, byte_size: int, what: str) -> None:
        previous = self.outputs.pop(output, None)
        if previous is not None:
            self.registry.table.release(previous)
        self.outputs[output] = self.registry._acquire(name, offset, byte_size, what)

    def write_output(self, output: str, data: bytes, model: str) -> bool:
        """Write an output bound to a region; False when it is not bound (goes inline)."""
        piece = self.outputs.get(output)
        if piece is None:
            return False
        if len(data) > piece.byte_size:
            raise _invalid(
                f"shared memory size specified with the request for output '{output}' "
                f"({piece.byte_size} bytes) should be at least {len(data)} bytes to hold the "
                f"results (model '{model}')"
            )
        _write(piece, data)
        return True

    def release(self) -> None:
        pieces = list(self.outputs.values())
        self.outputs.clear()
        for piece in pieces:
            self.registry.table.release(piece)


def _check_key(name: str, key: str) -> None:
    body = key[1:]
    if (
        not key.startswith("/")
        or not body
        or "/" in body
        or "\0" in body
        or body in (".", "..")
        or len(body.encode()) > _NAME_MAX
    ):
        raise _invalid(
            f"failed to register shared memory region '{name}': invalid key '{key[:300]}' "
            f"(expected a POSIX shared memory name: '/' then 1 to {_NAME_MAX} bytes "
            "without '/')"
        )
    if body.startswith(RESERVED_PREFIX):
        raise _invalid(
            f"failed to register shared memory region '{name}': keys starting with "
            f"'/{RESERVED_PREFIX}' are reserved for inferd"
        )
