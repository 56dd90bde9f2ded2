"""Triton's classification extension: an output requested with ``classification: k`` comes back as
its k largest values per row, as BYTES ``"score:index:label"`` (``"score:index"`` where the class
has no label), shape [batch, k] for a batching model and [k] otherwise.

As in Triton (server ``src/classification.cc``), a row is everything after the batch dimension,
flattened; k larger than a row gives the whole row; scores are printed like C++
``std::to_string`` (six decimals for floats).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from serve.errors import InvalidInput
from serve.types import OutputTensor, RequestedOutput

PARAMETER = "classification"
# Triton refuses rows larger than this, to bound the work one request can ask for.
MAX_CLASSES = 1_000_000
_UNSORTABLE = frozenset({"BYTES", "BOOL", "BF16"})


def classify(
    outputs: list[OutputTensor],
    requested: Sequence[RequestedOutput] | None,
    labels: Mapping[str, Sequence[str]],
    *,
    batching: bool,
) -> list[OutputTensor]:
    """``outputs`` with each one that was requested with ``classification: k`` replaced by its top k."""
    if not requested:
        return outputs
    counts = {r.name: class_count(r) for r in requested if PARAMETER in r.parameters}
    if not any(counts.values()):
        return outputs
    return [
        top_k(output, counts[output.name], labels.get(output.name, ()), batching=batching)
        if counts.get(output.name)
        else output
        for output in outputs
    ]


def class_count(requested: RequestedOutput) -> int:
    """The k asked for (0 = no classification, as in Triton)."""
    value = requested.parameters[PARAMETER]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(
            f"output '{requested.name}': parameter '{PARAMETER}' must be a non-negative integer, got {value!r}"
        )
    return value


def top_k(output: OutputTensor, k: int, labels: Sequence[str], *, batching: bool) -> OutputTensor:
    if output.datatype in _UNSORTABLE:
        raise InvalidInput(
            f"class result not available for output '{output.name}' due to unsupported type '{output.datatype}'"
        )
    data = output.data
    rows = data.reshape(data.shape[0], -1) if batching and data.ndim > 0 else data.reshape(1, -1)
    classes = rows.shape[1]
    if classes > MAX_CLASSES:
        raise InvalidInput(f"output '{output.name}': classification output tensor too large ({classes} classes)")
    count = min(k, classes)
    # Descending, ties in index order: a stable ascending sort of the reversed row, read backwards.
    order = classes - 1 - np.argsort(rows[:, ::-1], axis=1, kind="stable")[:, ::-1][:, :count]
    is_float = rows.dtype.kind == "f"
    result = np.empty((rows.shape[0], count), dtype=object)
    for r in range(rows.shape[0]):
        for c, index in enumerate(order[r].tolist()):
            value = rows[r, index]
            score = f"{float(value):f}" if is_float else str(int(value))
            label = labels[index] if index < len(labels) else ""
            result[r, c] = (f"{score}:{index}:{label}" if label else f"{score}:{index}").encode()
    return OutputTensor(output.name, "BYTES", result if batching else result.reshape(count))
