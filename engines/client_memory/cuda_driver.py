"""The few CUDA driver API calls that client CUDA shared memory needs, through ctypes.

A client exports device memory with ``cudaIpcGetMemHandle`` and sends the 64-byte handle;
the server maps it with ``cuIpcOpenMemHandle`` in the device's primary context (the one
torch uses, so torch can then read and write that memory) and asks the driver how large
the mapped allocation really is, so that a client claiming more bytes than it allocated
cannot make the server touch memory past its end. libcuda comes with the GPU driver, so
this needs no CUDA toolkit and no extra package; torch is only needed to move the bytes.
"""

from __future__ import annotations

import ctypes
import threading

IPC_HANDLE_BYTES = 64  # sizeof(CUipcMemHandle) == sizeof(cudaIpcMemHandle_t)
_LAZY_ENABLE_PEER_ACCESS = 0x1  # CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS, as Triton opens them


class CudaDriverError(Exception):
    """A driver call failed: the message names the call and the driver's reason."""


class _IpcMemHandle(ctypes.Structure):
    # 64 opaque bytes, passed by value. As words, not a byte array: older ctypes passed
    # structs holding arrays by value wrongly on x86-64 (CPython bpo-22273).
    _fields_ = [(f"word{index}", ctypes.c_uint64) for index in range(IPC_HANDLE_BYTES // 8)]

    @classmethod
    def of(cls, raw: bytes) -> _IpcMemHandle:
        # Byte for byte: a c_char field would stop copying at the handle's first NUL.
        return cls.from_buffer_copy(raw)


_Pointer = ctypes.c_uint64  # CUdeviceptr (the _v2 entry points take 64-bit pointers)


class CudaDriver:
    """libcuda.so.1, initialized. Calls may come from any thread: each one makes the
    device's primary context current around itself."""

    def __init__(self) -> None:
        try:
            self._lib = ctypes.CDLL("libcuda.so.1")
        except OSError as exc:
            raise CudaDriverError(f"no CUDA driver on this machine ({exc})") from None
        self._contexts: dict[int, ctypes.c_void_p] = {}
        self._contexts_lock = threading.Lock()
        self._lock = threading.Lock()  # the mappings
        # (device, handle) -> [pointer, bytes mapped, opens]: a process may map a handle
        # only once, and a client may register one allocation under several names.
        self._mappings: dict[tuple[int, bytes], list[int]] = {}
        self._open = self._entry("cuIpcOpenMemHandle_v2", "cuIpcOpenMemHandle")
        self._open.argtypes = [ctypes.POINTER(_Pointer), _IpcMemHandle, ctypes.c_uint]
        self._close = self._entry("cuIpcCloseMemHandle")
        self._close.argtypes = [_Pointer]
        self._range = self._entry("cuMemGetAddressRange_v2", "cuMemGetAddressRange")
        self._range.argtypes = [
            ctypes.POINTER(_Pointer),
            ctypes.POINTER(ctypes.c_size_t),
            _Pointer,
        ]
        self._push = self._entry("cuCtxPushCurrent_v2", "cuCtxPushCurrent")
        self._push.argtypes = [ctypes.c_void_p]
        self._pop = self._entry("cuCtxPopCurrent_v2", "cuCtxPopCurrent")
        self._pop.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
        self._check(self._lib.cuInit(0), "cuInit")

    def _entry(self, *names: str):  # type: ignore[no-untyped-def]
        for name in names:
            function = getattr(self._lib, name, None)
            if function is not None:
                function.restype = ctypes.c_int
                return function
        raise CudaDriverError(f"the CUDA driver has no {names[0]}: it is too old")

    def _check(self, result: int, call: str) -> None:
        if result == 0:
            return
        text = ctypes.c_char_p()
        self._lib.cuGetErrorString(result, ctypes.byref(text))
        reason = text.value.decode() if text.value else f"error {result}"
        raise CudaDriverError(f"{call} failed: {reason}")

    def device_count(self) -> int:
        count = ctypes.c_int()
        self._check(self._lib.cuDeviceGetCount(ctypes.byref(count)), "cuDeviceGetCount")
        return count.value

    def _context(self, device: int) -> ctypes.c_void_p:
        with self._contexts_lock:
            context = self._contexts.get(device)
            if context is None:
                handle = ctypes.c_int()
                self._check(self._lib.cuDeviceGet(ctypes.byref(handle), device), "cuDeviceGet")
                context = ctypes.c_void_p()
                self._check(
                    self._lib.cuDevicePrimaryCtxRetain(ctypes.byref(context), handle),
                    "cuDevicePrimaryCtxRetain",
                )
                self._contexts[device] = context  # kept for the process's life, as torch does
            return context

    def open_ipc(self, device: int, handle: bytes) -> tuple[int, int]:
        """Map another process's exported allocation: (pointer, bytes mapped from it).
        Each open is undone by one ``close_ipc(device, handle)``."""
        if len(handle) != IPC_HANDLE_BYTES:
            raise ValueError("the caller checks the handle's size")
        with self._lock:
            mapping = self._mappings.get((device, handle))
            if mapping is not None:
                mapping[2] += 1
                return mapping[0], mapping[1]
            pointer, mapped = self._map(device, handle)
            self._mappings[(device, handle)] = [pointer, mapped, 1]
            return pointer, mapped

    def _map(self, device: int, handle: bytes) -> tuple[int, int]:
        self._check(self._push(self._context(device)), "cuCtxPushCurrent")
        try:
            pointer = _Pointer()
            self._check(
                self._open(
                    ctypes.byref(pointer),
                    _IpcMemHandle.of(handle),
                    _LAZY_ENABLE_PEER_ACCESS,
                ),
                "cuIpcOpenMemHandle",
            )
            base, size = _Pointer(), ctypes.c_size_t()
            try:
                self._check(
                    self._range(ctypes.byref(base), ctypes.byref(size), pointer),
                    "cuMemGetAddressRange",
                )
            except CudaDriverError:
                self._close(pointer)
                raise
            return pointer.value, base.value + size.value - pointer.value
        finally:
            self._pop(ctypes.byref(ctypes.c_void_p()))

    def close_ipc(self, device: int, handle: bytes) -> None:
        with self._lock:
            mapping = self._mappings[(device, handle)]
            mapping[2] -= 1
            if mapping[2] > 0:
                return
            del self._mappings[(device, handle)]
            self._unmap(device, mapping[0])

    def _unmap(self, device: int, pointer: int) -> None:
        self._check(self._push(self._context(device)), "cuCtxPushCurrent")
        try:
            self._check(self._close(pointer), "cuIpcCloseMemHandle")
        finally:
            self._pop(ctypes.byref(ctypes.c_void_p()))
