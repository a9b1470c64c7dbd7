"""Tensor encoding of the Open Inference Protocol: datatype names, numpy dtypes, BYTES layout.

Server, engines and clients all speak these names, so the one table lives here, beside
the wire contract. BYTES tensors travel raw as, per element, a 4-byte little-endian
length followed by that many bytes; in numpy they are object arrays of ``bytes``.
"""

from __future__ import annotations

import struct

import numpy as np

# Protocol datatype name -> numpy dtype. BYTES maps to object arrays of bytes.
NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}

_DATATYPE_BY_KIND: dict[tuple[str, int], str] = {
    (dtype.kind, dtype.itemsize): name for name, dtype in NUMPY_DTYPES.items() if name != "BYTES"
}

# model_config.proto's DataType enum names are the protocol names with a TYPE_ prefix,
# except that the config says STRING where the protocol says BYTES.
_CONFIG_TYPE_OVERRIDES = {"TYPE_STRING": "BYTES"}


def config_type_to_datatype(config_type: str) -> str:
    """``TYPE_INT32`` -> ``INT32``; ``TYPE_STRING`` -> ``BYTES``."""
    if config_type in _CONFIG_TYPE_OVERRIDES:
        return _CONFIG_TYPE_OVERRIDES[config_type]
    return config_type.removeprefix("TYPE_")


def datatype_of(array: np.ndarray) -> str:
    """The protocol datatype of a numpy array; str/bytes/object arrays are BYTES."""
    dtype = array.dtype
    if dtype.kind in ("O", "S", "U"):
        return "BYTES"
    try:
        return _DATATYPE_BY_KIND[(dtype.kind, dtype.itemsize)]
    except KeyError:
        raise TypeError(f"numpy dtype {dtype} has no Open Inference Protocol datatype") from None


def _element_bytes(element: object) -> bytes:
    if isinstance(element, bytes):
        return element
    if isinstance(element, str):
        return element.encode("utf-8")
    if isinstance(element, np.bytes_ | np.str_):
        return _element_bytes(element.item())
    return str(element).encode("utf-8")


def encode_bytes_tensor(array: np.ndarray) -> bytes:
    """Serialize a BYTES tensor (any str/bytes/object array) to the raw length-prefixed layout."""
    parts: list[bytes] = []
    for element in array.ravel(order="C"):
        data = _element_bytes(element)
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def decode_bytes_tensor(
    buffer: bytes | memoryview, count: int, where: str = "BYTES tensor"
) -> np.ndarray:
    """Parse exactly ``count`` length-prefixed elements filling all of ``buffer``.

    Raises ValueError at the first inconsistency, worded as Triton words it, with
    ``where`` naming the tensor (e.g. "inference input 'X' for model 'm'").
    """
    view = memoryview(buffer)
    total = len(view)
    elements = np.empty(count, dtype=np.object_)
    offset = 0
    index = 0
    while offset < total:
        if total - offset < 4:
            raise ValueError(
                f"incomplete string length indicator for {where}, expecting 4 bytes but only "
                f"{total - offset} bytes available. Please make sure the string length "
                "indicator is in one buffer."
            )
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + length > total:
            raise ValueError(
                f"incomplete string data for {where}, expecting string of length {length} "
                f"but only {total - offset} bytes available"
            )
        if index >= count:
            raise ValueError(
                f"unexpected number of string elements {index + 1} for {where}, expecting {count}"
            )
        elements[index] = bytes(view[offset : offset + length])
        offset += length
        index += 1
    if index != count:
        raise ValueError(f"expected {count} string elements for {where}, got {index}")
    return elements
