"""Shapes and nested data judged before numpy sees them (serve/codecs/shapes.py)."""

from __future__ import annotations

import numpy as np
import pytest

from serve.codecs.shapes import MAX_ELEMENTS, MAX_RANK, element_count, flatten_nested
from serve.errors import InvalidInput


@pytest.mark.parametrize(("shape", "count"), [((), 1), ((0,), 0), ((3, 4), 12), ((0, 2**59), 0), ((2**57, 0, 4), 0)])
def test_element_count_is_the_product_of_the_dimensions(shape: tuple[int, ...], count: int) -> None:
    assert element_count(shape, "x") == count


@pytest.mark.parametrize("shape", [(0, 2**59), (2**57, 0, 4), (MAX_ELEMENTS,), (1,) * MAX_RANK])
def test_every_shape_it_accepts_is_one_numpy_can_make(shape: tuple[int, ...]) -> None:
    element_count(shape, "x")
    if 0 in shape or len(shape) == MAX_RANK:
        assert np.empty(shape, dtype=np.float64).shape == shape


@pytest.mark.parametrize("shape", [(2**62, 0), (0, 2**63 - 1), (2**40, 2**40), (MAX_ELEMENTS + 1,), (2**64, 0)])
def test_a_shape_numpy_could_not_hold_is_invalid_input(shape: tuple[int, ...]) -> None:
    with pytest.raises(InvalidInput, match="input 'x': shape .* is too large"):
        element_count(shape, "x")


def test_more_dimensions_than_numpy_allows_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="65 dimensions, more than the 64 supported"):
        element_count((1,) * (MAX_RANK + 1), "x")


def test_nested_data_flattens_row_major() -> None:
    assert flatten_nested([[1, [2, 3]], [], [[4]], 5], "x") == [1, 2, 3, 4, 5]


def test_nesting_as_deep_as_a_tensor_can_be_is_accepted() -> None:
    data: list[object] = ["leaf"]
    for _ in range(MAX_RANK - 1):
        data = [data]
    assert flatten_nested(data, "x") == ["leaf"]


def test_nesting_deeper_than_a_tensor_can_be_is_invalid_input_without_recursion() -> None:
    data: list[object] = ["leaf"]
    for _ in range(100_000):  # far past Python's recursion limit
        data = [data]
    with pytest.raises(InvalidInput, match="nested deeper than 64 levels"):
        flatten_nested(data, "x")
