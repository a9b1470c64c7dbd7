"""Triton's CUDA shared memory: a client on this machine exports GPU memory (a CUDA IPC
handle), registers it as a named region, and requests then read inputs from it and
write outputs into it instead of carrying tensors in gRPC messages.

It lives in the engine's process, the only one with CUDA (front processes pass
``SharedMemoryRef`` through unread). For a model whose instances take device tensors
(the pytorch backend on a GPU), an input becomes a view of the client's memory, which the
instance gathers on the device: no host copy. For any other model it is copied to the
host once. Outputs are written into their region: from the device when every request of
the batch writes that output to CUDA shared memory (the instance then keeps it there),
else from the host array the model answered.

Hardened like system shared memory: every offset and size is checked in Python integers
before any device access; a region's size is checked against the allocation the driver
actually mapped, so a client that claims more than it allocated cannot make the server
touch memory past its end; a region in use by a request stays mapped until that request
is done, even when unregistered meanwhile.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inferd.engines.client_memory.cuda_driver import IPC_HANDLE_BYTES, CudaDriver, CudaDriverError
from inferd.engines.client_memory.region_table import (
    MAX_REGIONS,
    Lease,
    RegionTable,
    check_region_name,
)
from inferd.engines.errors import EngineError, ErrorCode
from inferd.engines.types import (
    DeviceBytes,
    InferRequest,
    InferResponse,
    OutputTensor,
    SharedMemoryRef,
    shape_only,
)
from inferd.protos.datatypes import encode_bytes_tensor

logger = logging.getLogger(__name__)

_TURN_ON = "start inferd with --allow-client-shm to use CUDA shared memory"


def _invalid(message: str) -> EngineError:
    return EngineError(ErrorCode.INVALID_ARGUMENT, message)


@dataclass(frozen=True, slots=True)
class CudaRegionStatus:
    name: str
    device_id: int
    byte_size: int


@dataclass(frozen=True, slots=True)
class _Region:
    name: str
    device_id: int
    byte_size: int
    handle: bytes  # the client's IPC handle, which the driver mapped
    memory: Any  # a torch uint8 tensor over the first byte_size bytes mapped


class _CudaArray:
    """Device memory described by the CUDA array interface, for torch to view."""

    def __init__(self, pointer: int, nbytes: int) -> None:
        self.__cuda_array_interface__ = {
            "shape": (nbytes,),
            "typestr": "|u1",
            "data": (pointer, False),
            "version": 2,
        }


class _RegionBytes(DeviceBytes):
    def __init__(self, view: Any) -> None:
        self._view = view
        self.nbytes = int(view.numel())

    def typed(self, datatype: str, shape: tuple[int, ...]) -> object:
        from inferd.engines.backends.pytorch import TORCH_DTYPES

        dtype = TORCH_DTYPES[datatype]
        view = self._view
        if view.data_ptr() % dtype.itemsize:  # torch views only aligned memory as wider types
            view = view.clone()  # on the device
        return view.view(dtype).reshape(shape)


class CudaSharedMemory:
    """The registered CUDA regions, by name; thread-safe. ``enabled=False`` refuses them."""

    def __init__(
        self, enabled: bool, max_regions: int = MAX_REGIONS, max_request_bytes: int = 2**31 - 1
    ) -> None:
        self.enabled = enabled
        # What one request may copy to the host, as for system shared memory.
        self.max_request_bytes = max_request_bytes
        # Its ``taken`` names the system regions of this process (one namespace).
        self.table: RegionTable[_Region] = RegionTable("cuda", self._unmap, max_regions)
        self._driver: CudaDriver | None = None
        self._torch: Any = None
        self._starting = threading.Lock()

    def __contains__(self, name: str) -> bool:
        return name in self.table

    def names(self) -> set[str]:
        return self.table.names()

    def _runtime(self, name: str) -> tuple[CudaDriver, Any]:
        """The driver and torch, or why this server cannot map GPU memory. One driver
        for the process: it counts the mappings."""
        with self._starting:
            return self._start(name)

    def _start(self, name: str) -> tuple[CudaDriver, Any]:
        if self._driver is not None:
            return self._driver, self._torch
        reason = None
        try:
            import torch
        except ImportError:
            reason = "torch is not installed (pip install 'inferd[torch]')"
        else:
            if not torch.cuda.is_available():
                reason = "torch sees no CUDA device here"
        if reason is None:
            try:
                self._driver = CudaDriver()
            except CudaDriverError as exc:
                reason = str(exc)
        if reason is not None:
            raise _invalid(
                f"failed to register CUDA shared memory region: '{name}', GPUs not supported "
                f"on this server: {reason}"
            )
        self._torch = torch
        assert self._driver is not None
        return self._driver, torch

    def register(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None:
        """Map the client's exported allocation (blocking: the first call starts CUDA)."""
        if not self.enabled:
            raise EngineError(
                ErrorCode.UNAVAILABLE,
                f"CUDA shared memory is off on this server: {_TURN_ON} (only where the "
                "clients are trusted to share this machine's GPUs)",
            )
        check_region_name(name)
        driver, torch = self._runtime(name)
        if len(raw_handle) != IPC_HANDLE_BYTES:
            raise _invalid(
                f"failed to register CUDA shared memory region '{name}': raw_handle holds "
                f"{len(raw_handle)} bytes, expected a {IPC_HANDLE_BYTES}-byte CUDA IPC handle "
                "(cudaIpcGetMemHandle)"
            )
        if byte_size <= 0:
            raise _invalid(
                f"failed to register CUDA shared memory region '{name}': byte_size must be "
                f"> 0, got {byte_size}"
            )
        count = driver.device_count()
        if not 0 <= device_id < count:
            raise _invalid(
                f"failed to register CUDA shared memory region '{name}': device_id "
                f"{device_id} is not a GPU of this server (it has {count}: 0 to {count - 1})"
            )
        self.table.check_free(name)
        try:
            pointer, mapped = driver.open_ipc(device_id, raw_handle)
        except CudaDriverError as exc:
            raise _invalid(
                f"failed to register CUDA shared memory region '{name}': failed to open CUDA "
                f"IPC handle: {exc}"
            ) from None
        try:
            if byte_size > mapped:
                raise _invalid(
                    f"failed to register CUDA shared memory region '{name}': byte_size "
                    f"{byte_size} is larger than the {mapped} bytes the handle's allocation "
                    "holds"
                )
            # No device argument: torch would copy memory found on another GPU to it,
            # and outputs would then land in that copy, never in the client's memory.
            memory = torch.as_tensor(_CudaArray(pointer, byte_size))
            if memory.device.index != device_id or memory.data_ptr() != pointer:
                raise _invalid(
                    f"failed to register CUDA shared memory region '{name}': the handle's "
                    f"memory is on GPU {memory.device.index}, not on device_id {device_id}"
                )
            self.table.add(_Region(name, device_id, byte_size, raw_handle, memory))
        except BaseException:
            driver.close_ipc(device_id, raw_handle)
            raise

    def status(self, name: str) -> list[CudaRegionStatus]:
        return [
            CudaRegionStatus(region.name, region.device_id, region.byte_size)
            for region in self.table.regions(name)
        ]

    def unregister(self, name: str) -> None:
        """Forget one region (an unknown name is not an error, as in Triton) or, with an
        empty name, all; a region still in use is unmapped when its last request is done."""
        self.table.remove(name)

    def _unmap(self, region: _Region) -> None:
        assert self._driver is not None  # it mapped the region
        try:
            self._driver.close_ipc(region.device_id, region.handle)
        except CudaDriverError as exc:  # nothing to do but say so
            logger.error("cannot unmap CUDA shared memory region '%s': %s", region.name, exc)

    def close(self) -> None:
        """Shutdown: unmap every idle region now and any in use when its request ends."""
        self.table.close()

    def _lease(self, ref: SharedMemoryRef, what: str) -> Lease[_Region]:
        if not self.enabled:
            raise _invalid(f"{what} names shared memory region '{ref.region}', but {_TURN_ON}")
        return self.table.lease(ref.region, ref.offset, ref.byte_size, what)

    @contextmanager
    def request(self) -> Iterator[CudaRequestMemory]:
        """The regions one request reads and writes, held until it is done."""
        memory = CudaRequestMemory(self)
        try:
            yield memory
        finally:
            memory.release()


@dataclass(slots=True)
class CudaRequestMemory:
    """One request's use of CUDA shared memory: its slices are checked and held from
    ``read_inputs`` (outputs too, so a bad output region fails before the model runs)
    until ``release``."""

    registry: CudaSharedMemory
    _held: list[Lease[_Region]] = field(default_factory=list)
    _outputs: dict[str, Any] = field(default_factory=dict)  # output name -> its slice

    def _slice(self, ref: SharedMemoryRef, what: str) -> Any:
        """The slice as a torch uint8 tensor over the client's memory, held until release."""
        lease = self.registry._lease(ref, what)
        self._held.append(lease)
        return lease.region.memory[lease.offset : lease.offset + lease.byte_size]

    def copies_inputs(self, request: InferRequest, on_device: bool) -> bool:
        """Whether ``read_inputs`` copies to the host (then: off the event loop)."""
        return any(
            isinstance(tensor.data, SharedMemoryRef)
            and (not on_device or tensor.datatype == "BYTES")
            for tensor in request.inputs
        )

    def read_inputs(self, request: InferRequest, on_device: bool) -> None:
        """Replace each input's ``SharedMemoryRef``: with a view of the client's memory
        when the model takes device tensors (``on_device``), else with a host copy; and
        hold the output slices."""
        model = request.model_name
        copied = 0
        for output in request.requested_outputs:
            if output.region is not None:
                what = f"output '{output.name}' for model '{model}'"
                self._outputs[output.name] = self._slice(output.region, what)
        for tensor in request.inputs:
            ref = tensor.data
            if not isinstance(ref, SharedMemoryRef):
                continue
            what = f"input tensor '{tensor.name}' for model '{model}'"
            view = self._slice(ref, what)
            if on_device and tensor.datatype != "BYTES":
                tensor.data = _RegionBytes(view)
                continue
            copied += ref.byte_size
            if copied > self.registry.max_request_bytes:
                raise _invalid(
                    f"{what}: the request's inputs in shared memory add up to {copied} "
                    f"bytes, more than the {self.registry.max_request_bytes} bytes this server "
                    "copies for one request (--max-message-size)"
                )
            tensor.data = memoryview(view.cpu().numpy())

    def write_outputs(self, response: InferResponse) -> None:
        """Write each output bound to a region there (blocking until it has landed)."""
        torch = self.registry._torch
        devices = set()
        # Alive until the copies are done: a device tensor freed sooner could be handed
        # by torch's allocator to its instance's next batch while the copy still reads it.
        sources = []
        try:
            for index, output in enumerate(response.outputs):
                view = self._outputs.get(output.name)
                if view is None:
                    continue
                source = _as_bytes(torch, output)
                nbytes = source.numel()
                if nbytes > view.numel():
                    raise _invalid(
                        f"shared memory size specified with the request for output "
                        f"'{output.name}' ({view.numel()} bytes) should be at least "
                        f"{nbytes} bytes to hold the results (model '{response.model_name}')"
                    )
                sources.append(source)
                view[:nbytes].copy_(source)
                devices.add(view.device)
                shape = tuple(output.data.shape)
                response.outputs[index] = OutputTensor(
                    output.name, output.datatype, shape_only(output.datatype, shape), True
                )
        finally:
            for device in devices:  # the client reads them once it has the answer
                if device.type == "cuda":  # (tests stand CPU tensors in for GPU memory)
                    torch.cuda.synchronize(device)

    def release(self) -> None:
        self._outputs.clear()
        held, self._held = self._held, []
        for lease in held:
            self.registry.table.release(lease)


def _as_bytes(torch: Any, output: OutputTensor) -> Any:
    """The output's bytes as a flat torch uint8 tensor: on its device when the instance
    kept it there (copied into the region without the host), else over host memory."""
    data = output.data
    if isinstance(data, torch.Tensor):
        return data.contiguous().reshape(-1).view(torch.uint8)
    if output.datatype == "BYTES":  # a bytearray: writable, as torch wants
        encoded = bytearray(encode_bytes_tensor(data))
        return torch.from_numpy(np.frombuffer(encoded, np.uint8))
    raw = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    return torch.from_numpy(raw if raw.flags.writeable else raw.copy())
