"""Unit tests of the dynamic batcher with a fake execute whose progress the test controls.

Executions wait on futures the test resolves; timing decisions run on a fake clock where the
behaviour allows it. Every await that a bug could turn into a hang is bounded by ``within``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import numpy as np
import pytest

from serve.batching import Batcher, BatchingPolicy, BatchResult, QueuePolicy
from serve.batching.execution import BatchExecution
from serve.errors import (
    DeadlineExceeded,
    InvalidInput,
    ModelExecutionError,
    QueueFull,
    RequestCancelled,
    ShuttingDown,
)
from serve.events import Execution, Observer, VersionKey

T = TypeVar("T")
BOUND_S = 5.0  # generous: only a hang should ever reach it


async def within(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, BOUND_S)


async def settle(rounds: int = 50) -> None:
    """Let every ready callback and task run for a while."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def eventually(condition: Callable[[], bool], rounds: int = 500) -> None:
    for _ in range(rounds):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never became true")


def rows(count: int, *, first: int = 0, features: int = 2, dtype: Any = np.float32) -> np.ndarray:
    """``count`` rows whose values tell them apart: row i holds first + i in every column."""
    return np.repeat(np.arange(first, first + count, dtype=dtype)[:, None], features, axis=1)


class FakeClock:
    def __init__(self, now: int = 0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


class FakeModel:
    """An execute() that records each batch and, while gated, waits for the test to release it."""

    def __init__(self, *, gated: bool = False, on_call: Callable[[], None] | None = None) -> None:
        self.gated = gated
        self.on_call = on_call
        self.batches: list[dict[str, np.ndarray]] = []
        self.outputs: list[dict[str, np.ndarray]] = []
        self.running = 0
        self.max_running = 0
        self._gates: list[asyncio.Future[None]] = []

    async def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.batches.append(inputs)
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if self.on_call is not None:
                self.on_call()
            if self.gated:
                gate = asyncio.get_running_loop().create_future()
                self._gates.append(gate)
                await gate
            outputs = {"y": inputs["x"] * 2}
            self.outputs.append(outputs)
            return outputs
        finally:
            self.running -= 1

    def batch_rows(self) -> list[int]:
        return [len(batch["x"]) for batch in self.batches]

    def release(self) -> None:
        """Let the oldest waiting execution finish."""
        gate = next(gate for gate in self._gates if not gate.done())
        gate.set_result(None)

    def open(self) -> None:
        """Release every waiting execution and stop gating new ones."""
        self.gated = False
        for gate in self._gates:
            if not gate.done():
                gate.set_result(None)


class RecordingObserver(Observer):
    def __init__(self) -> None:
        self.executions: list[Execution] = []

    @property
    def calls(self) -> list[tuple[int, int, BaseException | None]]:
        return [(e.rows, e.requests, e.error) for e in self.executions]

    def on_execution(self, execution: Execution) -> None:
        self.executions.append(execution)


MakeBatcher = Callable[..., Batcher]


@pytest.fixture
async def make_batcher() -> AsyncIterator[MakeBatcher]:
    made: list[Batcher] = []

    def make(
        execute: Any,
        *,
        clock: Callable[[], int] = time.monotonic_ns,
        observer: Observer | None = None,
        execute_now: Any = None,
        **policy: Any,
    ) -> Batcher:
        policy.setdefault("max_batch_size", 8)
        batcher = Batcher(
            execute,
            BatchingPolicy(**policy),
            key=VersionKey("m", "1"),
            observer=observer,
            clock=clock,
            execute_now=execute_now,
        )
        batcher.start()
        made.append(batcher)
        return batcher

    yield make
    for batcher in made:
        await within(batcher.close(grace_s=0.1))


def submit(batcher: Batcher, count: int, *, first: int = 0, **kwargs: Any) -> asyncio.Task[BatchResult]:
    return asyncio.ensure_future(batcher.submit({"x": rows(count, first=first)}, **kwargs))


async def busy(batcher: Batcher, model: FakeModel) -> asyncio.Task[BatchResult]:
    """Occupy the (single) instance with a one-row request held at the model's gate."""
    task = submit(batcher, 1, first=1000)
    await eventually(lambda: len(model.batches) == 1)
    return task


# -- dispatch and batch forming ----------------------------------------------------------------


async def test_lone_request_dispatches_without_waiting(make_batcher: MakeBatcher) -> None:
    model = FakeModel()
    # A frozen clock: if the batcher held the request for anything, no time would ever pass.
    batcher = make_batcher(model, clock=FakeClock(), preferred_batch_sizes=(4,), max_queue_delay_us=0)

    result = await within(batcher.submit({"x": rows(3)}))

    assert model.batch_rows() == [3]
    assert result.timings.batch_size == 3
    np.testing.assert_array_equal(result.outputs["y"], rows(3) * 2)


async def test_requests_arriving_while_busy_share_the_next_batch(make_batcher: MakeBatcher) -> None:
    model = FakeModel(gated=True)
    batcher = make_batcher(model)
    first = await busy(batcher, model)
    waiting = [submit(batcher, 1, first=i) for i in range(3)]
    await settle()
    assert model.batch_rows() == [1]
    assert batcher.queue_depth == 3

    model.open()
    await within(asyncio.gather(first, *waiting))

    assert model.batch_rows() == [1, 3]
    assert [task.result().timings.batch_size for task in waiting] == [3, 3, 3]


async def test_each_caller_gets_exactly_its_rows(make_batcher: MakeBatcher) -> None:
    model = FakeModel(gated=True)
    batcher = make_batcher(model)
    first = await busy(batcher, model)
    sizes_and_starts = [(2, 0), (3, 10), (1, 20)]
    waiting = [submit(batcher, size, first=start) for size, start in sizes_and_starts]
    await settle()

    model.open()
    await within(asyncio.gather(first, *waiting))

    assert model.batch_rows() == [1, 6]
    for (size, start), task in zip(sizes_and_starts, waiting, strict=True):
        np.testing.assert_array_equal(task.result().outputs["y"], rows(size, first=start) * 2)


async def test_outputs_are_views_into_the_batch_output(make_batcher: MakeBatcher) -> None:
    model = FakeModel(gated=True)
    batcher = make_batcher(model)
    first = await busy(batcher, model)
    waiting = [submit(batcher, 2), submit(batcher, 2)]
    await settle()

    model.open()
    await within(asyncio.gather(first, *waiting))

    batch_output = model.outputs[1]["y"]
    for task in waiting:
        assert np.shares_memory(task.result().outputs["y"], batch_output)


async def test_single_request_batch_passes_inputs_without_copying(make_batcher: MakeBatcher) -> None:
    model = FakeModel()
    batcher = make_batcher(model)
    sent = rows(2)

    await within(batcher.submit({"x": sent}))

    assert model.batches[0]["x"] is sent


async def test_batch_never_exceeds_max_batch_size_in_rows(make_batcher: MakeBatcher) -> None:
    model = FakeModel(gated=True)
    batcher = make_batcher(model, max_batch_size=4)
    first = await busy(batcher, model)
    waiting = [submit(batcher, size) for size in (3, 2, 1, 2, 4)]
    await settle()

    model.open()
    await within(asyncio.gather(first, *waiting))

    # 3 + 1 fill the first batch; the 2 that did not fit heads the next one.
    assert model.batch_rows() == [1, 4, 4, 4]
    assert [task.result().timings.batch_size for task in waiting] == [4, 4, 4, 4, 4]


async def test_only_requests_with_equal_inner_shapes_share_a_batch(make_batcher: MakeBatcher) -> None:
    model = FakeModel(gated=True)
    batcher = make_batcher(model)
    first = await busy(batcher, model)
    narrow = [batcher.submit({"x": rows(1, features=2)}) for _ in range(2)]
    wide = [batcher.submit({"x": rows(1, features=3)}) for _ in range(2)]
    tasks = [asyncio.ensure_future(coro) for pair in zip(narrow, wide, strict=True) for coro in pair]
    await settle()

    model.open()
    await within(asyncio.gather(first, *tasks))

    assert [batch["x"].shape for batch in model.batches[1:]] == [(2, 2), (2, 3)]


async def test_only_requests_with_equal_dtypes_share_a_batch(make_batcher: MakeBatcher) -> None:
    model = FakeModel(gated=True)
    batcher = make_batcher(model)
    first = await busy(batcher, model)
    tasks = [
        asyncio.ensure_future(batcher.submit({"x": rows(1, dtype=dtype)}))
        for dtype in (np.float32, np.float64, np.float32)
    ]
    await settle()

    model.open()
    await within(asyncio.gather(first, *tasks))

    assert [(len(b["x"]), b["x"].dtype) for b in model.batches[1:]] == [
        (2, np.dtype(np.float32)),
        (1, np.dtype(np.float64)),
    ]


async def test_skipped_request_heads_the_next_batch(make_batcher: MakeBatcher) -> None:
    model = FakeModel(gated=True)
    batcher = make_batcher(model, max_batch_size=2)
    first = await busy(batcher, model)
    order = [2, 3, 2, 2]  # feature counts in arrival order
    tasks = [asyncio.ensure_future(batcher.submit({"x": rows(1, features=f)})) for f in order]
    await settle()

    model.open()
    await within(asyncio.gather(first, *tasks))

    # The 3-wide request is older than the last 2-wide one, so it is not passed over again.
    assert [batch["x"].shape for batch in model.batches[1:]] == [(2, 2), (1, 3), (1, 2)]


# -- instances ---------------------------------------------------------------------------------


async def test_up_to_max_in_flight_batches_run_at_once(make_batcher: MakeBatcher) -> None:
    model = FakeModel(gated=True)
    batcher = make_batcher(model, max_batch_size=2, max_in_flight=2)
    tasks = [submit(batcher, 2, first=i * 10) for i in range(3)]
    await eventually(lambda: len(model.batches) == 2)
    await settle()
    assert (model.running, batcher.in_flight, batcher.queue_depth) == (2, 2, 1)

    model.release()
    await eventually(lambda: len(model.batches) == 3)
    model.open()
    await within(asyncio.gather(*tasks))

    assert model.max_running == 2
    assert batcher.in_flight == 0


# -- preferred batch sizes and the queue delay -------------------------------------------------


async def test_preferred_size_holds_requests_until_reached(make_batcher: MakeBatcher) -> None:
    model = FakeModel()
    batcher = make_batcher(model, clock=FakeClock(), preferred_batch_sizes=(4,), max_queue_delay_us=10_000_000)
    tasks = [submit(batcher, 1, first=i) for i in range(3)]
    await settle()
    assert model.batches == []

    tasks.append(submit(batcher, 1, first=3))
    await within(asyncio.gather(*tasks))

    assert model.batch_rows() == [4]


async def test_held_requests_go_once_the_delay_from_the_oldest_expires(make_batcher: MakeBatcher) -> None:
    model = FakeModel()
    clock = FakeClock()
    batcher = make_batcher(model, clock=clock, preferred_batch_sizes=(4,), max_queue_delay_us=1_000_000)
    oldest = submit(batcher, 1)
    await settle()
    clock.now = 600_000_000  # 0.6 s: still inside the delay
    middle = submit(batcher, 1)
    await settle()
    assert model.batches == []

    clock.now = 1_000_000_000  # 1 s after the oldest, 0.4 s after the middle one
    newest = submit(batcher, 1)
    await within(asyncio.gather(oldest, middle, newest))

    assert model.batch_rows() == [3]


async def test_hold_timer_releases_requests_without_another_event(make_batcher: MakeBatcher) -> None:
    model = FakeModel()
    delay_us = 20_000
    batcher = make_batcher(model, preferred_batch_sizes=(4,), max_queue_delay_us=delay_us)
    started = time.monotonic_ns()

    await within(batcher.submit({"x": rows(1)}))

    # The scheduler decides on the same monotonic clock, so this lower bound cannot flake.
    assert time.monotonic_ns() - started >= delay_us * 1000
    assert model.batch_rows() == [1]


async def test_preferred_size_is_sent_at_once_and_the_rest_held(make_batcher: MakeBatcher) -> None:
    model = FakeModel(gated=True)
    batcher = make_batcher(model, clock=FakeClock(), preferred_batch_sizes=(4,), max_queue_delay_us=10_000_000)
    first = submit(batcher, 4)  # a preferred size itself: not held
    await eventually(lambda: len(model.batches) == 1)
    waiting = [submit(batcher, 1, first=i) for i in range(6)]
    await settle()

    model.open()
    await within(asyncio.gather(first, *waiting[:4]))
    await settle()

    assert model.batch_rows() == [4, 4]
    assert batcher.queue_depth == 2


async def test_close_sends_held_requests_without_waiting_for_the_delay(make_batcher: MakeBatcher) -> None:
    model = FakeModel()
    batcher = make_batcher(model, clock=FakeClock(), preferred_batch_sizes=(4,), max_queue_delay_us=10_000_000)
    held = submit(batcher, 1)
    await settle()
    assert model.batches == []

    await within(batcher.close(grace_s=5.0))

    assert (await within(held)).timings.batch_size == 1


# -- when Triton sends at once (PROTOCOL.md section 5) -------------------------------------------
# A frozen clock and a 10 s delay: whatever runs, ran without waiting for the delay.
TRITON_HOLD = {"preferred_batch_sizes": (2, 6), "max_queue_delay_us": 10_000_000}


@pytest.mark.parametrize(
    ("policy", "count"),
    [(TRITON_HOLD, 7), (TRITON_HOLD, 6), ({"max_queue_delay_us": 10_000_000}, 8)],
    ids=["above-largest-preferred", "at-largest-preferred", "max-batch-size-without-preferred"],
)
async def test_rule_a_batch_reaching_the_largest_preferred_size_runs_at_once(
    make_batcher: MakeBatcher, policy: dict[str, Any], count: int
) -> None:
    model = FakeModel()
    batcher = make_batcher(model, clock=FakeClock(), **policy)

    result = await within(batcher.submit({"x": rows(count)}))

    assert result.timings.batch_size == count
    assert model.batch_rows() == [count]


async def test_rule_b_request_that_would_pass_the_largest_preferred_size_sends_the_held_batch(
    make_batcher: MakeBatcher,
) -> None:
    model = FakeModel()
    batcher = make_batcher(model, clock=FakeClock(), **TRITON_HOLD)
    held = submit(batcher, 3)
    await settle()
    assert model.batches == []

    second = submit(batcher, 4)  # 3 + 4 > 6: the 3 go now; the 4 alone reach no preferred size
    await within(held)
    await settle()

    assert model.batch_rows() == [3]
    assert not second.done()
    assert batcher.queue_depth == 1


async def test_rule_b_then_a_both_requests_run_at_once(make_batcher: MakeBatcher) -> None:
    model = FakeModel()
    batcher = make_batcher(model, clock=FakeClock(), **TRITON_HOLD)
    held = submit(batcher, 3)
    await settle()

    big = submit(batcher, 7)
    await within(asyncio.gather(held, big))

    assert model.batch_rows() == [3, 7]


async def test_rule_c_request_of_another_shape_sends_the_held_batch(make_batcher: MakeBatcher) -> None:
    model = FakeModel()
    batcher = make_batcher(model, clock=FakeClock(), **TRITON_HOLD)
    held = asyncio.ensure_future(batcher.submit({"x": rows(1, features=2)}))
    await settle()
    assert model.batches == []

    other = asyncio.ensure_future(batcher.submit({"x": rows(1, features=3)}))
    await within(held)
    await settle()

    assert [batch["x"].shape for batch in model.batches] == [(1, 2)]
    assert not other.done()


async def test_batch_below_every_preferred_size_waits_for_the_delay(make_batcher: MakeBatcher) -> None:
    model = FakeModel()
    delay_us = 20_000
    batcher = make_batcher(model, preferred_batch_sizes=(2, 6), max_queue_delay_us=delay_us)
    started = time.monotonic_ns()

    result = await within(batcher.submit({"x": rows(3)}))

    # The scheduler decides on the same monotonic clock, so this lower bound cannot flake.
    assert time.monotonic_ns() - started >= delay_us * 1000
    assert result.timings.batch_size == 3


async def test_delay_without_preferred_sizes_holds_for_max_batch_size(make_batcher: MakeBatcher) -> None:
    model = FakeModel()
    batcher = make_batcher(model, clock=FakeClock(), max_batch_size=8, max_queue_delay_us=10_000_000)
    first = submit(batcher, 3)
    await settle()
    assert model.batches == []

    second = submit(batcher, 5)
    await within(asyncio.gather(first, second))

    assert model.batch_rows() == [8]


async def test_without_a_delay_a_batch_stops_at_the_largest_preferred_size(make_batcher: MakeBatcher) -> None:
    model = FakeModel(gated=True)
    batcher = make_batcher(model, preferred_batch_sizes=(4,))
    first = submit(batcher, 4)
    await eventually(lambda: len(model.batches) == 1)
    waiting = [submit(batcher, 1, first=i) for i in range(6)]
    await settle()

    model.open()
    await within(asyncio.gather(first, *waiting))

    assert model.batch_rows() == [4, 4, 2]


async def test_expired_delay_sends_up_to_max_batch_size_past_the_preferred_sizes(make_batcher: MakeBatcher) -> None:
    model = FakeModel(gated=True)
    clock = FakeClock()
    batcher = make_batcher(model, clock=clock, preferred_batch_sizes=(4,), max_queue_delay_us=1_000_000)
    first = submit(batcher, 4)
    await eventually(lambda: len(model.batches) == 1)
    waiting = [submit(batcher, 1, first=i) for i in range(6)]
    await settle()
    clock.now = 2_000_000_000  # the oldest waiting request has waited past the delay

    model.open()
    await within(asyncio.gather(first, *waiting))

    assert model.batch_rows() == [4, 6]


# -- queue policy ------------------------------------------------------------------------------


async def test_full_queue_rejects_at_once(make_batcher: MakeBatcher) -> None:
    model = FakeModel(gated=True)
    batcher = make_batcher(model, default_queue_policy=QueuePolicy(max_queue_size=2))
    first = await busy(batcher, model)  # executing, so not counted as waiting
    waiting = [submit(batcher, 1), submit(batcher, 1)]
    await settle()

    with pytest.raises(QueueFull):
        await within(batcher.submit({"x": rows(1)}))

    model.open()
    await within(asyncio.gather(first, *waiting))


async def test_queue_size_is_limited_per_priority_level(make_batcher: MakeBatcher) -> None:
    model = FakeModel(gated=True)
    batcher = make_batcher(model, priority_levels=2, priority_queue_policies={1: QueuePolicy(max_queue_size=1)})
    first = await busy(batcher, model)
    high = submit(batcher, 1, priority=1)
    await settle()

    with pytest.raises(QueueFull):
        await within(batcher.submit({"x": rows(1)}, priority=1))
    low = submit(batcher, 1, priority=2)
    await settle()
    assert batcher.queue_depth == 2

    model.open()
    await within(asyncio.gather(first, high, low))


async def test_request_past_its_deadline_in_the_queue_never_runs(make_batcher: MakeBatcher) -> None:
    model = FakeModel(gated=True)
    batcher = make_batcher(model)
    first = await busy(batcher, model)

    with pytest.raises(DeadlineExceeded):
        await within(batcher.submit({"x": rows(1, first=7)}, timeout_us=10_000))
    # Answered while the instance is still busy: at its deadline, not when a batch next forms.
    assert len(model.batches) == 1
    assert batcher.queue_depth == 0

    model.open()
    await within(first)
    await settle()
    assert model.batch_rows() == [1]


async def test_default_queue_timeout_applies_without_a_requested_one(make_batcher: MakeBatcher) -> None:
    model = FakeModel(gated=True)
    batcher = make_batcher(model, default_queue_policy=QueuePolicy(default_timeout_us=10_000))
    first = await busy(batcher, model)

    with pytest.raises(DeadlineExceeded):
        await within(batcher.submit({"x": rows(1)}))

    model.open()
    await within(first)


async def test_deadline_no_longer_applies_once_the_batch_started(make_batcher: MakeBatcher) -> None:
    model = FakeModel(gated=True)
    clock = FakeClock()
    batcher = make_batcher(model, clock=clock)
    task = submit(batcher, 1, timeout_us=1_000)
    await eventually(lambda: len(model.batches) == 1)

    clock.now = 10_000_000_000
    # Real time too, so a deadline timer that was left running would have fired by now.
    await asyncio.sleep(0.01)
    model.open()

    assert (await within(task)).timings.batch_size == 1


@pytest.mark.parametrize(
    ("default_us", "allow_override", "requested_us", "expected_us"),
    [
        (0, False, 0, 0),
        (0, False, 500, 500),  # no default: the request's own timeout applies
        (1000, False, 500, 1000),  # override not allowed
        (1000, True, 500, 500),  # override may shorten
        (1000, True, 2000, 1000),  # ... but never lengthen
        (1000, True, 0, 1000),
    ],
)
def test_effective_queue_timeout(default_us: int, allow_override: bool, requested_us: int, expected_us: int) -> None:
    policy = QueuePolicy(default_timeout_us=default_us, allow_timeout_override=allow_override)

    assert policy.timeout_us(requested_us) == expected_us


# -- priorities --------------------------------------------------------------------------------


async def test_higher_priority_level_runs_first(make_batcher: MakeBatcher) -> None:
    model = FakeModel(gated=True)
    batcher = make_batcher(model, max_batch_size=1, priority_levels=2)
    first = await busy(batcher, model)
    low = submit(batcher, 1, first=20, priority=2)
    high = submit(batcher, 1, first=10, priority=1)
    await settle()

    model.open()
    await within(asyncio.gather(first, low, high))

    assert [int(batch["x"][0, 0]) for batch in model.batches[1:]] == [10, 20]


async def test_priority_zero_uses_the_default_level(make_batcher: MakeBatcher) -> None:
    model = FakeModel(gated=True)
    batcher = make_batcher(model, max_batch_size=1, priority_levels=3, default_priority_level=1)
    first = await busy(batcher, model)
    low = submit(batcher, 1, first=20, priority=2)
    default = submit(batcher, 1, first=10)
    await settle()

    model.open()
    await within(asyncio.gather(first, low, default))

    assert [int(batch["x"][0, 0]) for batch in model.batches[1:]] == [10, 20]


async def test_priority_zero_means_the_lowest_level_without_a_default(make_batcher: MakeBatcher) -> None:
    model = FakeModel(gated=True)
    batcher = make_batcher(model, max_batch_size=1, priority_levels=2)
    first = await busy(batcher, model)
    default = submit(batcher, 1, first=20)
    lowest_named = submit(batcher, 1, first=30, priority=2)
    high = submit(batcher, 1, first=10, priority=1)
    await settle()

    model.open()
    await within(asyncio.gather(first, default, lowest_named, high))

    assert [int(batch["x"][0, 0]) for batch in model.batches[1:]] == [10, 20, 30]


@pytest.mark.parametrize(("levels", "priority"), [(2, 3), (2, -1)])
async def test_priority_outside_the_levels_is_rejected(make_batcher: MakeBatcher, levels: int, priority: int) -> None:
    batcher = make_batcher(FakeModel(), priority_levels=levels)

    with pytest.raises(InvalidInput, match="priority"):
        await within(batcher.submit({"x": rows(1)}, priority=priority))


async def test_priority_is_ignored_by_a_model_without_priority_levels(make_batcher: MakeBatcher) -> None:
    batcher = make_batcher(FakeModel(), priority_levels=0)

    result = await within(batcher.submit({"x": rows(1)}, priority=5))

    assert result.timings.batch_size == 1


# -- cancellation ------------------------------------------------------------------------------


async def test_cancelling_one_caller_mid_batch_leaves_the_others_answered(make_batcher: MakeBatcher) -> None:
    model = FakeModel(gated=True)
    batcher = make_batcher(model)
    first = await busy(batcher, model)
    a, b, c = submit(batcher, 2, first=0), submit(batcher, 1, first=10), submit(batcher, 3, first=20)
    await settle()
    model.release()
    await eventually(lambda: len(model.batches) == 2)  # a, b and c are executing together

    b.cancel()
    with pytest.raises(asyncio.CancelledError):
        await within(b)
    model.open()
    await within(asyncio.gather(first, a, c))

    assert model.batch_rows() == [1, 6]
    np.testing.assert_array_equal(a.result().outputs["y"], rows(2, first=0) * 2)
    np.testing.assert_array_equal(c.result().outputs["y"], rows(3, first=20) * 2)


async def test_cancelled_request_is_dropped_before_its_batch_starts(make_batcher: MakeBatcher) -> None:
    model = FakeModel(gated=True)
    batcher = make_batcher(model)
    first = await busy(batcher, model)
    a, b, c = submit(batcher, 2, first=0), submit(batcher, 1, first=10), submit(batcher, 3, first=20)
    await settle()

    b.cancel()
    with pytest.raises(asyncio.CancelledError):
        await within(b)
    assert batcher.queue_depth == 2
    model.open()
    await within(asyncio.gather(first, a, c))

    assert model.batch_rows() == [1, 5]
    np.testing.assert_array_equal(c.result().outputs["y"], rows(3, first=20) * 2)


async def test_caller_timing_out_drops_its_request(make_batcher: MakeBatcher) -> None:
    model = FakeModel(gated=True)
    batcher = make_batcher(model)
    first = await busy(batcher, model)

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(batcher.submit({"x": rows(1)}), timeout=0.01)
    assert batcher.queue_depth == 0

    model.open()
    await within(first)
    await settle()
    assert model.batch_rows() == [1]


# -- failure isolation -------------------------------------------------------------------------


async def test_failing_execution_fails_only_its_own_batch(make_batcher: MakeBatcher) -> None:
    model = FakeModel(gated=True)
    calls = 0

    async def fail_second_batch(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        nonlocal calls
        calls += 1
        if 2 <= calls <= 4:  # the batch of two, then each of them alone
            raise RuntimeError("boom")
        return await model(inputs)

    batcher = make_batcher(fail_second_batch)
    first = await busy(batcher, model)
    doomed = [submit(batcher, 1), submit(batcher, 2)]
    await settle()

    model.open()
    assert (await within(first)).timings.batch_size == 1
    for task in doomed:
        with pytest.raises(ModelExecutionError, match="RuntimeError: boom"):
            await within(task)
    assert (await within(batcher.submit({"x": rows(2)}))).timings.batch_size == 2


async def test_a_caller_whose_rows_break_the_model_fails_alone(make_batcher: MakeBatcher) -> None:
    model = FakeModel(gated=True)

    async def reject_negative(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if (inputs["x"] < 0).any():
            raise RuntimeError("index out of range")
        return await model(inputs)

    batcher = make_batcher(reject_negative)
    first = await busy(batcher, model)
    poisoned = asyncio.ensure_future(batcher.submit({"x": -np.ones((1, 2), np.float32)}))
    good = submit(batcher, 2, first=5)
    await settle()

    model.open()
    await within(first)
    with pytest.raises(ModelExecutionError, match="index out of range"):
        await within(poisoned)
    result = await within(good)
    assert result.outputs["y"][:, 0].tolist() == [10, 12]  # its own rows, doubled


async def test_serve_error_from_execute_reaches_callers_unchanged(make_batcher: MakeBatcher) -> None:
    raised = InvalidInput("value out of range")

    async def reject(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise raised

    batcher = make_batcher(reject)

    with pytest.raises(InvalidInput) as caught:
        await within(batcher.submit({"x": rows(1)}))
    assert caught.value is raised


async def test_failing_concatenation_fails_the_batch_and_the_loop_lives_on(
    make_batcher: MakeBatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = FakeModel(gated=True)
    batcher = make_batcher(model)
    first = await busy(batcher, model)
    doomed = [submit(batcher, 1), submit(batcher, 1)]
    await settle()

    def refuse(*args: Any, **kwargs: Any) -> np.ndarray:
        raise ValueError("cannot concatenate")

    monkeypatch.setattr(np, "concatenate", refuse)
    model.open()
    await within(first)
    for task in doomed:
        with pytest.raises(ModelExecutionError, match="cannot concatenate"):
            await within(task)
    monkeypatch.undo()

    assert model.batch_rows() == [1]  # execute never saw the batch
    assert (await within(batcher.submit({"x": rows(1)}))).timings.batch_size == 1


async def test_output_with_wrong_first_dimension_fails_the_batch(make_batcher: MakeBatcher) -> None:
    calls = 0

    async def wrong_rows_once(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        nonlocal calls
        calls += 1
        extra = 1 if calls == 1 else 0
        return {"y": np.zeros((len(inputs["x"]) + extra, 2), np.float32)}

    batcher = make_batcher(wrong_rows_once)

    with pytest.raises(ModelExecutionError, match="first dimension"):
        await within(batcher.submit({"x": rows(2)}))
    assert (await within(batcher.submit({"x": rows(2)}))).timings.batch_size == 2


async def test_observer_sees_each_execution_once_with_its_error(make_batcher: MakeBatcher) -> None:
    observer = RecordingObserver()
    failure = RuntimeError("boom")
    calls = 0

    async def fail_first(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise failure
        return {"y": inputs["x"]}

    batcher = make_batcher(fail_first, observer=observer)
    with pytest.raises(ModelExecutionError):
        await within(batcher.submit({"x": rows(1)}))
    await within(batcher.submit({"x": rows(3)}))

    assert observer.calls == [(1, 1, failure), (3, 1, None)]


async def test_observer_sees_each_executed_batchs_tensors_once(make_batcher: MakeBatcher) -> None:
    model = FakeModel(gated=True)
    observer = RecordingObserver()
    batcher = make_batcher(model, observer=observer)
    first = await busy(batcher, model)
    together = [submit(batcher, 2, first=0), submit(batcher, 1, first=10)]
    await settle()

    model.open()
    await within(asyncio.gather(first, *together))

    seen = [(e.inputs["x"], e.outputs["y"]) for e in observer.executions]
    assert [len(x) for x, _ in seen] == [1, 3]
    np.testing.assert_array_equal(seen[1][1], seen[1][0] * 2)


async def test_failing_observer_never_fails_callers(make_batcher: MakeBatcher) -> None:
    class Broken(Observer):
        def on_execution(self, execution: Execution) -> None:
            raise RuntimeError("statistics bug")

    batcher = make_batcher(FakeModel(), observer=Broken())

    result = await within(batcher.submit({"x": rows(2)}))

    assert result.timings.batch_size == 2


async def test_result_carries_the_timings_of_its_batch(make_batcher: MakeBatcher) -> None:
    clock = FakeClock()

    def take_7_us() -> None:
        clock.now += 7_000

    model = FakeModel(gated=True, on_call=take_7_us)
    batcher = make_batcher(model, clock=clock)
    first = submit(batcher, 1)
    await eventually(lambda: len(model.batches) == 1)  # started at 0; the clock now reads 7 us
    second = submit(batcher, 2)
    await settle()

    clock.now = 10_000
    model.open()
    await within(asyncio.gather(first, second))

    timings = second.result().timings
    assert (timings.queue_ns, timings.compute_input_ns, timings.compute_infer_ns) == (3_000, 0, 7_000)
    assert (timings.compute_output_ns, timings.batch_size) == (0, 2)
    assert first.result().timings.compute_infer_ns == 10_000


# -- shutdown ----------------------------------------------------------------------------------


async def test_close_runs_queued_requests_within_the_grace_period(make_batcher: MakeBatcher) -> None:
    model = FakeModel(gated=True)
    batcher = make_batcher(model)
    first = await busy(batcher, model)
    waiting = [submit(batcher, 1, first=i) for i in range(2)]
    await settle()

    closing = asyncio.ensure_future(batcher.close(grace_s=5.0))
    await settle()
    model.open()
    await within(closing)

    results = await within(asyncio.gather(first, *waiting))
    assert [result.timings.batch_size for result in results] == [1, 2, 2]


async def test_close_fails_what_is_left_after_the_grace_period(make_batcher: MakeBatcher) -> None:
    model = FakeModel(gated=True)  # never released
    batcher = make_batcher(model)
    running = await busy(batcher, model)
    queued = submit(batcher, 1)
    await settle()

    await within(batcher.close(grace_s=0.05))

    for task in (running, queued):
        with pytest.raises(ShuttingDown):
            await within(task)
    assert (batcher.queue_depth, batcher.in_flight) == (0, 0)


async def test_close_answers_callers_even_if_execute_ignores_cancellation(make_batcher: MakeBatcher) -> None:
    started, may_stop = asyncio.Event(), asyncio.Event()

    async def stubborn(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        started.set()
        while not may_stop.is_set():
            try:
                await may_stop.wait()
            except asyncio.CancelledError:
                continue  # swallowed, as a badly behaved runtime might
        return {"y": inputs["x"]}

    batcher = make_batcher(stubborn)
    running = submit(batcher, 1)
    await within(started.wait())
    closing = asyncio.ensure_future(batcher.close(grace_s=0.01))
    try:
        with pytest.raises(ShuttingDown):
            await within(running)
        assert not closing.done()
    finally:
        may_stop.set()  # so that a failure here cannot leave a task the loop is unable to cancel
    await within(closing)


async def test_submit_after_close_is_refused(make_batcher: MakeBatcher) -> None:
    batcher = make_batcher(FakeModel())
    await within(batcher.close())

    with pytest.raises(ShuttingDown):
        await within(batcher.submit({"x": rows(1)}))


# -- models that do not batch, and batching switched off ---------------------------------------


async def test_model_without_batching_runs_each_request_alone_as_sent(make_batcher: MakeBatcher) -> None:
    model = FakeModel(gated=True)
    batcher = make_batcher(model, max_batch_size=0)
    first = await busy(batcher, model)
    sent = [np.ones((3, 4), np.float32), np.ones((5,), np.float32), np.array(2.0, np.float32)]
    tasks = [asyncio.ensure_future(batcher.submit({"x": array})) for array in sent]
    await settle()

    model.open()
    await within(asyncio.gather(first, *tasks))

    assert all(model.batches[i + 1]["x"] is array for i, array in enumerate(sent))
    assert [task.result().outputs["y"].shape for task in tasks] == [(3, 4), (5,), ()]


async def test_dynamic_batching_off_runs_one_request_per_execution(make_batcher: MakeBatcher) -> None:
    model = FakeModel(gated=True)
    batcher = make_batcher(model, dynamic=False)
    first = await busy(batcher, model)
    waiting = [submit(batcher, 2), submit(batcher, 1)]
    await settle()

    model.open()
    await within(asyncio.gather(first, *waiting))

    assert model.batch_rows() == [1, 2, 1]


async def test_dynamic_batching_off_still_runs_max_in_flight_at_once(make_batcher: MakeBatcher) -> None:
    model = FakeModel(gated=True)
    batcher = make_batcher(model, dynamic=False, max_in_flight=3)
    tasks = [submit(batcher, 1) for _ in range(3)]

    await eventually(lambda: model.running == 3)
    assert batcher.in_flight == 3
    model.open()
    await within(asyncio.gather(*tasks))


@pytest.mark.parametrize("path", ["task", "dispatch pass"])
async def test_a_bug_while_answering_leaves_no_caller_waiting_on_either_path(
    make_batcher: MakeBatcher, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    def broken(*args: Any) -> None:
        raise RuntimeError("a bug in splitting or answering")

    monkeypatch.setattr(BatchExecution, "_finish", broken)
    inline = FakeInlineModel() if path == "dispatch pass" else None
    batcher = make_batcher(FakeModel(), execute_now=inline)
    tasks = [submit(batcher, 2), submit(batcher, 1)]

    with caplog.at_level(logging.CRITICAL):  # the bug is logged; the callers are what this test is about
        results = await within(asyncio.gather(*tasks, return_exceptions=True))

    assert [type(r) for r in results] == [ModelExecutionError, ModelExecutionError]
    assert all("ended without an answer" in str(r) for r in results)
    assert batcher.in_flight == 0
    monkeypatch.undo()
    assert (await within(batcher.submit({"x": rows(1)}))).outputs["y"].shape == (1, 2)  # it goes on


# -- batches run in the dispatch pass (execute_now) --------------------------------------------


class FakeInlineModel:
    """An execute_now() that doubles its inputs, records each batch, and may decline or raise."""

    def __init__(
        self, *, decline: bool = False, fail: Callable[[np.ndarray], bool] | None = None, on_call: Any = None
    ) -> None:
        self.decline = decline
        self.fail = fail
        self.on_call = on_call
        self.batches: list[dict[str, np.ndarray]] = []

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        self.batches.append(inputs)
        if self.on_call is not None:
            self.on_call()
        if self.fail is not None and self.fail(inputs["x"]):
            raise RuntimeError("index out of range")
        return None if self.decline else {"y": inputs["x"] * 2}

    def batch_rows(self) -> list[int]:
        return [len(batch["x"]) for batch in self.batches]


async def test_batch_taken_by_execute_now_never_reaches_execute(make_batcher: MakeBatcher) -> None:
    model, inline = FakeModel(), FakeInlineModel()
    batcher = make_batcher(model, execute_now=inline)

    result = await within(batcher.submit({"x": rows(3)}))

    assert (inline.batch_rows(), model.batch_rows()) == ([3], [])
    assert result.timings.batch_size == 3
    np.testing.assert_array_equal(result.outputs["y"], rows(3) * 2)
    assert batcher.in_flight == 0


async def test_requests_submitted_in_one_loop_turn_share_one_execute_now_batch(make_batcher: MakeBatcher) -> None:
    inline = FakeInlineModel()
    batcher = make_batcher(FakeModel(), execute_now=inline)

    tasks = [submit(batcher, size, first=10 * i) for i, size in enumerate((2, 1, 3))]
    await within(asyncio.gather(*tasks))

    assert inline.batch_rows() == [6]
    for i, (size, task) in enumerate(zip((2, 1, 3), tasks, strict=True)):
        np.testing.assert_array_equal(task.result().outputs["y"], rows(size, first=10 * i) * 2)


async def test_batch_declined_by_execute_now_runs_in_execute_gathered_once(make_batcher: MakeBatcher) -> None:
    model, inline = FakeModel(), FakeInlineModel(decline=True)
    batcher = make_batcher(model, execute_now=inline)

    tasks = [submit(batcher, 2, first=0), submit(batcher, 1, first=10)]
    await within(asyncio.gather(*tasks))

    assert (inline.batch_rows(), model.batch_rows()) == ([3], [3])
    assert model.batches[0]["x"] is inline.batches[0]["x"]  # concatenated once, in the pass
    np.testing.assert_array_equal(tasks[1].result().outputs["y"], rows(1, first=10) * 2)


async def test_execute_now_failing_on_several_callers_runs_each_alone(make_batcher: MakeBatcher) -> None:
    model = FakeModel()

    async def reject_negative(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if (inputs["x"] < 0).any():
            raise RuntimeError("index out of range")
        return await model(inputs)

    inline = FakeInlineModel(fail=lambda x: bool((x < 0).any()))
    batcher = make_batcher(reject_negative, execute_now=inline)
    poisoned = asyncio.ensure_future(batcher.submit({"x": -np.ones((1, 2), np.float32)}))
    good = submit(batcher, 2, first=5)

    with pytest.raises(ModelExecutionError, match="index out of range"):
        await within(poisoned)
    result = await within(good)

    assert inline.batch_rows() == [3]
    assert result.outputs["y"][:, 0].tolist() == [10, 12]  # its own rows, doubled, run alone
    assert batcher.in_flight == 0


async def test_execute_now_failing_a_lone_caller_fails_it_and_the_batcher_goes_on(make_batcher: MakeBatcher) -> None:
    inline = FakeInlineModel(fail=lambda x: bool((x < 0).any()))
    batcher = make_batcher(FakeModel(), execute_now=inline)

    with pytest.raises(ModelExecutionError, match="RuntimeError: index out of range"):
        await within(batcher.submit({"x": -np.ones((1, 2), np.float32)}))
    assert (await within(batcher.submit({"x": rows(2)}))).timings.batch_size == 2


async def test_serve_error_from_execute_now_reaches_callers_unchanged(make_batcher: MakeBatcher) -> None:
    raised = InvalidInput("value out of range")

    def reject(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        raise raised

    batcher = make_batcher(FakeModel(), execute_now=reject)

    with pytest.raises(InvalidInput) as caught:
        await within(batcher.submit({"x": rows(1)}))
    assert caught.value is raised


async def test_execute_now_output_with_wrong_first_dimension_fails_the_batch(make_batcher: MakeBatcher) -> None:
    def one_row_too_many(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        return {"y": np.zeros((len(inputs["x"]) + 1, 2), np.float32)}

    batcher = make_batcher(FakeModel(), execute_now=one_row_too_many)

    with pytest.raises(ModelExecutionError, match="first dimension"):
        await within(batcher.submit({"x": rows(2)}))


async def test_caller_gone_before_the_pass_never_reaches_execute_now(make_batcher: MakeBatcher) -> None:
    inline = FakeInlineModel()
    batcher = make_batcher(FakeModel(), execute_now=inline)
    gone = asyncio.ensure_future(batcher.submit({"x": rows(1)}, client_gone=lambda: True))
    stays = submit(batcher, 2)

    with pytest.raises(RequestCancelled):
        await within(gone)
    await within(stays)

    assert inline.batch_rows() == [2]


async def test_observer_sees_an_execute_now_batch_once_with_its_tensors(make_batcher: MakeBatcher) -> None:
    observer = RecordingObserver()
    batcher = make_batcher(FakeModel(), execute_now=FakeInlineModel(), observer=observer)

    await within(asyncio.gather(submit(batcher, 2), submit(batcher, 1, first=5)))

    assert observer.calls == [(3, 2, None)]
    execution = observer.executions[0]
    np.testing.assert_array_equal(execution.outputs["y"], execution.inputs["x"] * 2)


async def test_execute_now_result_carries_the_timings_of_its_batch(make_batcher: MakeBatcher) -> None:
    clock = FakeClock()

    def take_7_us() -> None:
        clock.now += 7_000

    batcher = make_batcher(FakeModel(), execute_now=FakeInlineModel(on_call=take_7_us), clock=clock)

    result = await within(batcher.submit({"x": rows(2)}))

    timings = result.timings
    assert (timings.queue_ns, timings.compute_infer_ns, timings.batch_size) == (0, 7_000, 2)


async def test_close_runs_requests_queued_for_execute_now(make_batcher: MakeBatcher) -> None:
    inline = FakeInlineModel()
    batcher = make_batcher(FakeModel(), execute_now=inline)
    waiting = [submit(batcher, 1, first=i) for i in range(2)]
    await asyncio.sleep(0)  # both submitted, their pass not yet run

    await within(batcher.close(grace_s=5.0))

    assert [r.timings.batch_size for r in await within(asyncio.gather(*waiting))] == [2, 2]
    assert (batcher.queue_depth, batcher.in_flight) == (0, 0)


# -- policy validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"max_batch_size": 4, "preferred_batch_sizes": (8,)},
        {"max_batch_size": 4, "max_in_flight": 0},
        {"max_batch_size": 4, "priority_levels": 2, "default_priority_level": 3},
        {"max_batch_size": 4, "priority_levels": 2, "priority_queue_policies": {3: QueuePolicy()}},
        {"max_batch_size": -1},
    ],
)
def test_inconsistent_policy_is_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        BatchingPolicy(**fields)
