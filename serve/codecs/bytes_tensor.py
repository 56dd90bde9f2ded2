"""BYTES tensors on the wire: each element is a 4-byte little-endian length, then its bytes.

Used by the HTTP binary extension and by gRPC raw contents alike.
"""

from __future__ import annotations

import struct

import numpy as np

from serve.errors import InvalidInput

_LEN = struct.Struct("<I")


def as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytearray, memoryview, np.bytes_)):
        return bytes(value)
    return str(value).encode("utf-8")


def serialize_bytes_tensor(array: np.ndarray) -> bytes:
    parts: list[bytes] = []
    pack = _LEN.pack
    for item in array.reshape(-1):
        b = as_bytes(item)
        parts.append(pack(len(b)))
        parts.append(b)
    return b"".join(parts)


def deserialize_bytes_tensor(buffer: bytes | memoryview, count: int, name: str = "") -> np.ndarray:
    """Decode exactly ``count`` elements that must fill ``buffer`` exactly."""
    view = memoryview(buffer)
    total = len(view)
    # Every element takes at least its 4-byte length: check before allocating from a shape the
    # client chose, or a tiny body claiming [1, 10**9] would make us allocate gigabytes.
    if count > total // 4:
        raise InvalidInput(
            f"input '{name}': shape needs {count} BYTES elements but the data holds at most {total // 4}"
        )
    out = np.empty(count, dtype=object)
    offset = 0
    unpack = _LEN.unpack_from
    for i in range(count):
        if offset + 4 > total:
            raise InvalidInput(f"input '{name}': BYTES data holds fewer than the {count} elements its shape needs")
        (length,) = unpack(view, offset)
        offset += 4
        end = offset + length
        if end > total:
            raise InvalidInput(f"input '{name}': BYTES element {i} claims {length} bytes past the end")
        out[i] = bytes(view[offset:end])
        offset = end
    if offset != total:
        raise InvalidInput(
            f"input '{name}': {total - offset} bytes left over after the {count} BYTES elements of its shape"
        )
    return out
