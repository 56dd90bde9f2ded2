"""Tensor data as JSON (the ``data`` field of the Open Inference Protocol) ⇄ numpy.

Decoding is strict where numpy alone would be lenient: numpy turns ``"1"`` into 1, ``2`` into
``True`` and 1.5 into 1 without complaint, and a client that sends those has a bug we should
report rather than hide.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import numpy as np

from serve.codecs.bytes_tensor import as_bytes
from serve.codecs.shapes import element_count, flatten_nested
from serve.datatypes import JSON_UNSUPPORTED, OIP_TO_NUMPY
from serve.errors import InvalidInput

# dtypes orjson's OPT_SERIALIZE_NUMPY writes straight from the buffer (checked with orjson 3.x).
ORJSON_NUMPY_KINDS: Final[frozenset[str]] = frozenset(
    {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"}
)


def json_to_array(data: Any, datatype: str, shape: Sequence[int], name: str) -> np.ndarray:
    """Decode a (nested or flat, row-major) JSON ``data`` value into an array of ``shape``."""
    if datatype in JSON_UNSUPPORTED:
        raise InvalidInput(f"input '{name}': {datatype} cannot be sent as JSON; use the binary tensor extension")
    if not isinstance(data, list):
        raise InvalidInput(f"input '{name}': 'data' must be a JSON array, got {type(data).__name__}")
    if datatype == "BYTES":
        flat = _bytes_from_json(data, name)
    else:
        flat = _numbers_from_json(data, OIP_TO_NUMPY[datatype], datatype, name)
    needed = element_count(shape, name)
    if flat.size != needed:
        raise InvalidInput(f"input '{name}': data has {flat.size} elements but shape {list(shape)} needs {needed}")
    return flat.reshape(shape)


def _numbers_from_json(data: list[Any], dtype: np.dtype, datatype: str, name: str) -> np.ndarray:
    try:
        # One pass over the Python list with numpy's own type inference; the cast below is vectorised.
        inferred = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        raise InvalidInput(f"input '{name}': data is not a rectangular array of {datatype} values") from None
    if inferred.size == 0:
        return np.empty(0, dtype=dtype)
    kind = inferred.dtype.kind
    if dtype.kind == "b":
        if kind != "b":
            raise InvalidInput(f"input '{name}': BOOL data must be JSON true/false values")
    elif dtype.kind in "iu":
        if kind not in "iu":
            # Floats, strings, nulls, or integers numpy could not fit one dtype (a mix of
            # values >= 2**63 and small ones becomes float64): check element by element.
            return _exact_integers(data, dtype, datatype, name)
        _check_integer_range(inferred, dtype, datatype, name)
    elif kind not in "iuf":
        raise InvalidInput(f"input '{name}': {datatype} data must be JSON numbers")
    return inferred.astype(dtype, copy=False).reshape(-1)


def _check_integer_range(values: np.ndarray, dtype: np.dtype, datatype: str, name: str) -> None:
    if values.dtype == dtype:
        return
    info = np.iinfo(dtype)
    low, high = int(values.min()), int(values.max())
    if low < info.min or high > info.max:
        bad = low if low < info.min else high
        raise InvalidInput(f"input '{name}': value {bad} is out of range for {datatype} [{info.min}, {info.max}]")


def _exact_integers(data: list[Any], dtype: np.dtype, datatype: str, name: str) -> np.ndarray:
    info = np.iinfo(dtype)
    leaves = flatten_nested(data, name)
    for value in leaves:
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidInput(f"input '{name}': {datatype} data must be JSON integers, got {_shown(value)}")
        if value < info.min or value > info.max:
            raise InvalidInput(f"input '{name}': value {value} is out of range for {datatype} [{info.min}, {info.max}]")
    return np.array(leaves, dtype=dtype)


def _bytes_from_json(data: list[Any], name: str) -> np.ndarray:
    leaves = flatten_nested(data, name)
    encoded: list[bytes] = []
    for item in leaves:
        if not isinstance(item, str):
            raise InvalidInput(f"input '{name}': BYTES data must be JSON strings, got {_shown(item)}")
        encoded.append(item.encode("utf-8"))  # orjson refuses lone surrogates, so this cannot fail
    out = np.empty(len(encoded), dtype=object)
    out[:] = encoded
    return out


def _shown(value: Any) -> str:
    """A wrong value for a message: its repr, cut short (it may be a huge object)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def array_to_json(array: np.ndarray, datatype: str, name: str) -> Any:
    """The flat row-major ``data`` value for an output; numpy arrays are left for orjson to write."""
    if datatype == "BYTES":
        return _strings_to_json(array, name)
    if datatype in ORJSON_NUMPY_KINDS:
        # orjson needs C-contiguous, native-endian arrays; this is a no-op for the usual output.
        return np.ascontiguousarray(array, dtype=OIP_TO_NUMPY[datatype]).reshape(-1)
    if datatype in JSON_UNSUPPORTED or datatype not in OIP_TO_NUMPY:
        raise InvalidInput(
            f"output '{name}': {datatype} cannot be returned as JSON; request binary_data for this output"
        )
    return np.asarray(array).reshape(-1).tolist()


def _strings_to_json(array: np.ndarray, name: str) -> list[str]:
    out: list[str] = []
    append = out.append
    for item in array.reshape(-1):
        if isinstance(item, str):
            append(item)
            continue
        try:
            append(as_bytes(item).decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidInput(
                f"output '{name}': an element is not valid UTF-8 and cannot be returned as JSON; "
                "request binary_data for this output"
            ) from None
    return out
