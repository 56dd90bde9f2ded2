"""What the batcher hands back to each caller, and what it needs to run a batch."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from serve.events import BatchTimings

# Runs one batch: input name -> array (rows stacked along dimension 0) to output name -> array.
Execute = Callable[[dict[str, np.ndarray]], Awaitable[dict[str, np.ndarray]]]


@dataclass(frozen=True, slots=True)
class BatchResult:
    outputs: dict[str, np.ndarray]  # only this caller's rows, as views into the batch output
    timings: BatchTimings


# Runs one batch at once, on the caller's thread (the event loop), when that is cheaper than
# handing it to a thread: outputs as Execute returns them, or None to decline (a slower model,
# or no instance free), and the batcher then awaits Execute in a task of its own.
ExecuteNow = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray] | None]
