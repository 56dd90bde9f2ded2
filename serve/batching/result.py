"""What the batcher hands back: to each caller its rows and timings, to an observer each execution."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

# Runs one batch: input name -> array (rows stacked along dimension 0) to output name -> array.
Execute = Callable[[dict[str, np.ndarray]], Awaitable[dict[str, np.ndarray]]]


@dataclass(slots=True)
class BatchResult:
    outputs: dict[str, np.ndarray]  # only this caller's rows, as views into the batch output
    queue_ns: int  # enqueue -> batch start
    compute_input_ns: int  # concatenating the batch's inputs
    compute_infer_ns: int  # execute() of the batch
    compute_output_ns: int  # validating and splitting the batch's outputs
    batch_size: int  # rows in the batch that ran


class BatchObserver(Protocol):
    def on_execution(
        self,
        batch_size: int,
        requests: int,
        compute_input_ns: int,
        compute_infer_ns: int,
        compute_output_ns: int,
        error: BaseException | None,
    ) -> None: ...


# Receives each executed batch's inputs and outputs (input statistics); never blocks.
BatchSink = Callable[[Mapping[str, np.ndarray], Mapping[str, np.ndarray]], None]
