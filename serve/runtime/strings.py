"""BYTES tensors to and from onnxruntime string tensors.

The protocol's BYTES elements are ``bytes``; onnxruntime's Python binding takes and returns
strings as ``str`` (a ``bytes`` object would be str()-ed into "b'...'"). Every place that feeds
onnxruntime — the server, ``serve baseline``, the benchmarks — converts here.
"""

from __future__ import annotations

import numpy as np

from serve.errors import InvalidInput


def to_ort_strings(name: str, array: np.ndarray) -> np.ndarray:
    """``array`` as onnxruntime takes it: object arrays of bytes become object arrays of str.

    Invalid UTF-8 is the caller's error, naming the input: onnxruntime string tensors hold text."""
    if array.dtype != object:
        return array
    try:
        decoded = [b.decode("utf-8") if isinstance(b, bytes) else str(b) for b in array.reshape(-1)]
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"input '{name}': a BYTES element is not valid UTF-8 ({exc.reason}); onnxruntime string tensors hold text"
        ) from None
    out = np.empty(len(decoded), dtype=object)
    out[:] = decoded
    return out.reshape(array.shape)


def from_ort_strings(array: np.ndarray) -> np.ndarray:
    """An onnxruntime output as the protocol carries it: string tensors become object arrays of bytes."""
    if array.dtype != object and array.dtype.kind != "U":
        return array
    out = np.empty(array.size, dtype=object)
    out[:] = [s.encode("utf-8") if isinstance(s, str) else bytes(s) for s in array.reshape(-1)]
    return out.reshape(array.shape)
