"""Shapes as clients send them, judged before anything is allocated or reshaped from them.

numpy refuses, with a ValueError, an array of more than 64 dimensions and one whose non-zero
dimensions multiply (times the item size) past the int64 byte range — even when a zero dimension
makes it empty: ``[2**62, 0]`` is no array. Python ints never overflow, so ``math.prod`` gives a
count for any shape; this module says which counts numpy can hold, once for every codec, so that
such a shape is a 400 / INVALID_ARGUMENT naming the input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from serve.errors import InvalidInput

MAX_RANK: Final[int] = 64  # numpy's NPY_MAXDIMS
# The most elements a shape may describe, counting its non-zero dimensions: with items of at most
# 8 bytes (object pointers included), any array of such a shape stays in int64's byte range.
MAX_ELEMENTS: Final[int] = (2**63 - 1) // 8


def element_count(shape: Sequence[int], name: str) -> int:
    """The number of elements of a tensor of ``shape`` (input ``name``); InvalidInput when numpy
    could not hold it. Dimensions must already be non-negative integers."""
    if len(shape) > MAX_RANK:
        raise InvalidInput(f"input '{name}': shape has {len(shape)} dimensions, more than the {MAX_RANK} supported")
    count = 1
    empty = False
    for dim in shape:
        if dim == 0:
            empty = True
            continue
        count *= dim
        if count > MAX_ELEMENTS:
            raise InvalidInput(
                f"input '{name}': shape {list(shape)} is too large: its non-zero dimensions multiply to more than "
                f"{MAX_ELEMENTS} elements"
            )
    return 0 if empty else count


def flatten_nested(data: list[Any], name: str) -> list[Any]:
    """The leaves of nested JSON arrays, row-major. Walked with an explicit stack, so that deep nesting
    cannot exhaust Python's recursion limit; nesting deeper than a tensor can have is refused."""
    leaves: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                if len(stack) >= MAX_RANK:
                    raise InvalidInput(f"input '{name}': data is nested deeper than {MAX_RANK} levels")
                stack.append(iter(item))
                break
            leaves.append(item)
        else:
            stack.pop()
    return leaves
