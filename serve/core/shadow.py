"""The shadow: a copy of a client's request, run on another version after the client has its answer.

``ShadowMirror.offer`` starts the copy as a task on the running loop and returns at once; nobody
awaits it but ``close``. Copies are the first thing shed under load, before they cost anything:

- at most ``max_in_flight`` copies run at once, for the whole mirror (it bounds the memory held by
  copies whatever the number of models);
- none is started while the shadow version's queue is longer than its shed bound (``shed_bound``),
  so that a slow shadow never builds a queue that its own clients, if any, would wait behind;
- a copy goes in at the lowest priority level the shadow's batcher has, with no deadline of its own.

Each shed copy is counted per (model, shadow version), here and in ``serve_shadow_dropped_total``.
Each copy that ran is observed once as a RequestEvent with role "shadow" (so client-facing series
leave it out), and its outputs are compared with the primary's into an OutputComparison per
(model, primary version, shadow version). Nothing here raises into the caller or logs per request:
a copy that fails is an event with its outcome, as a client request would be.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import orjson
from prometheus_client import CollectorRegistry, Counter

from serve.batching.config import batching_policy
from serve.batching.policy import BatchingPolicy
from serve.core.served_versions import ServedVersion
from serve.errors import QueueFull
from serve.events import BatchTimings, Observer, RequestEvent, VersionKey, outcome_of
from serve.rollout.comparison import OutputComparison, ShadowDocument, compare, comparison_key
from serve.tracing.request import TracedRequest

DEFAULT_MAX_IN_FLIGHT = 64
# On close: how long copies still running may finish before they are cancelled, and how long the
# cancelled ones then get to unwind.
DEFAULT_GRACE_S = 1.0
_CANCEL_WAIT_S = 1.0
# Batching policies remembered for shadow versions; more than this (reloads) and the memo starts afresh.
_POLICY_MEMO = 256


# Mirrored requests whose outputs wait to be compared together (see ShadowMirror._unjudged).
JUDGE_EVERY = 64

Outputs = Mapping[str, np.ndarray]


def shed_bound(policy: BatchingPolicy, rows: int) -> int:
    """Requests waiting in a shadow version's queue from which a copy of ``rows`` rows is shed: half the
    queue its lowest level may hold, or, with an unbounded queue, two full batches' worth of such copies
    (two batches per instance for a model that does not batch)."""
    max_queue = policy.queue_policy(policy.level_count).max_queue_size
    if max_queue:
        return max(1, max_queue // 2)
    if policy.max_batch_size:
        return max(1, 2 * policy.max_batch_size // max(1, rows))
    return 2 * policy.max_in_flight


@dataclass(frozen=True, slots=True)
class _Copy:
    """One mirrored request: what the shadow runs and what its answer is compared with."""

    shadow: ServedVersion
    feeds: dict[str, np.ndarray]
    rows: int
    priority: int
    primary: VersionKey
    primary_outputs: Mapping[str, np.ndarray]
    primary_ns: int
    protocol: str
    request_id: str  # the client request's: the copy's event joins it
    trace: TracedRequest | None  # the client request's span, when traced: the shadow's batch links to it


class ShadowMirror:
    """The core's Mirror (serve/core/mirror.py)."""

    def __init__(
        self,
        observer: Observer,
        *,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        registry: CollectorRegistry | None = None,
        grace_s: float = DEFAULT_GRACE_S,
        clock: Callable[[], int] = time.perf_counter_ns,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self._observer = observer
        self._max_in_flight = max_in_flight
        self._grace_s = grace_s
        self._clock = clock
        self._running: set[asyncio.Task[None]] = set()
        self._closing = False
        self._policies: dict[VersionKey, BatchingPolicy] = {}
        self._dropped: dict[tuple[str, str], int] = {}
        # model -> comparison_key(primary version, shadow version) -> comparison since start
        self._comparisons: dict[str, dict[str, OutputComparison]] = {}
        # model -> comparison key -> the pairs of outputs not compared yet: compared together, JUDGE_EVERY at a time
        # or when the comparison is read, since comparing one request's rows costs numpy's per-call overhead many
        # times over (~60 % of a copy's CPU on the loop, profiled).
        self._unjudged: dict[str, dict[str, list[tuple[Outputs, Outputs]]]] = {}
        self._dropped_total = (
            Counter(
                "serve_shadow_dropped",
                "Mirrored copies of requests shed instead of run on the shadow version (at capacity or its queue long)",
                ("model", "version"),
                registry=registry,
            )
            if registry is not None
            else None
        )

    @property
    def in_flight(self) -> int:
        return len(self._running)

    def offer(
        self,
        shadow: ServedVersion,
        feeds: Mapping[str, np.ndarray],
        primary: VersionKey,
        primary_outputs: Mapping[str, np.ndarray],
        primary_ns: int,
        protocol: str,
        *,
        request_id: str = "",
        trace: TracedRequest | None = None,
    ) -> bool:
        try:
            copy = self._admitted(shadow, feeds, primary, primary_outputs, primary_ns, protocol, request_id, trace)
            if copy is None:
                self._drop(shadow.model.key)
                return False
            task = asyncio.get_running_loop().create_task(self._mirror(copy), name=f"shadow {shadow.model.name}")
        except Exception:  # no loop, a version without a runner: the copy is shed, the client unaffected
            self._drop(shadow.model.key)
            return False
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return True

    def dropped(self, key: VersionKey) -> int:
        """Copies for ``key``'s model and version shed since the start (any load of that version)."""
        return self._dropped.get((key.name, key.version), 0)

    def comparisons(self, name: str) -> dict[str, OutputComparison]:
        """Model ``name``'s comparisons since the start, by comparison_key(primary version, shadow version);
        copies, so the caller may merge into them."""
        self._judge_model(name)
        return {key: held.copy() for key, held in self._comparisons.get(name, {}).items()}

    def document(self, name: str) -> ShadowDocument:
        self._judge_model(name)
        held = self._comparisons.get(name, {})
        return {
            "model": name,
            "comparisons": {key: held[key].to_json() for key in sorted(held)},
            "dropped": {version: n for (model, version), n in sorted(self._dropped.items()) if model == name},
        }

    def comparison_json(self, name: str) -> bytes:
        return orjson.dumps(self.document(name))

    async def wait_idle(self) -> None:
        """Until every copy started so far has ended (tests, and a caller that wants settled comparisons)."""
        while self._running:
            await asyncio.wait(list(self._running))
        for name in list(self._unjudged):
            self._judge_model(name)

    async def close(self) -> None:
        """Start no more copies; let the running ones finish within the grace period, then cancel them.
        Call it before the batchers close, so that copies end as copies, not as shutdown errors."""
        self._closing = True
        if not self._running:
            return
        _, late = await asyncio.wait(list(self._running), timeout=max(0.0, self._grace_s))
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late, timeout=_CANCEL_WAIT_S)

    # -- admission -------------------------------------------------------------------------------

    def _admitted(
        self,
        shadow: ServedVersion,
        feeds: Mapping[str, np.ndarray],
        primary: VersionKey,
        primary_outputs: Mapping[str, np.ndarray],
        primary_ns: int,
        protocol: str,
        request_id: str,
        trace: TracedRequest | None,
    ) -> _Copy | None:
        """The copy to run, or None when it is shed."""
        if self._closing or len(self._running) >= self._max_in_flight:
            return None
        policy = self._policy(shadow)
        rows = next(iter(feeds.values())).shape[0] if policy.max_batch_size and feeds else 1
        if shadow.batcher.queue_depth >= shed_bound(policy, rows):
            return None
        # As in Triton, level 1 is the highest: the copy goes in at the largest level number.
        priority = policy.priority_levels
        return _Copy(
            shadow, dict(feeds), rows, priority, primary, primary_outputs, primary_ns, protocol, request_id, trace
        )

    def _policy(self, shadow: ServedVersion) -> BatchingPolicy:
        key = shadow.model.key
        policy = self._policies.get(key)
        if policy is None:
            model = shadow.model
            assert model.config is not None and model.runner is not None, "a served version is loaded"
            if len(self._policies) >= _POLICY_MEMO:
                self._policies.clear()
            policy = self._policies[key] = batching_policy(model.config, model.runner.instance_count)
        return policy

    def _drop(self, key: VersionKey) -> None:
        label = (key.name, key.version)
        self._dropped[label] = self._dropped.get(label, 0) + 1
        if self._dropped_total is not None:
            self._dropped_total.labels(*label).inc()

    # -- the copy's run --------------------------------------------------------------------------

    async def _mirror(self, copy: _Copy) -> None:
        key = copy.shadow.model.key
        started = self._clock()
        try:
            trace = copy.trace.context if copy.trace is not None else None
            result = await copy.shadow.batcher.submit(copy.feeds, priority=copy.priority, trace=trace)
        except QueueFull:  # the queue filled between the offer and the submit: shed after all
            self._drop(key)
            return
        except BaseException as exc:
            # A cancellation (close() ran out of grace) is observed too, and still ends the task.
            self._observe(copy, outcome_of(exc), self._clock() - started)
            if not isinstance(exc, Exception):
                raise
            return
        duration_ns = self._clock() - started
        self._observe(copy, "success", duration_ns, result.timings, result.outputs)
        self._compare(copy, result.outputs, duration_ns)

    def _observe(
        self,
        copy: _Copy,
        outcome: str,
        duration_ns: int,
        timings: BatchTimings | None = None,
        outputs: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        key = copy.shadow.model.key
        event = RequestEvent(
            key,
            copy.protocol,
            outcome,
            duration_ns,
            timings,
            role="shadow",
            rows=copy.rows,
            request_id=copy.request_id,
            outputs=outputs if outputs is not None else {},
            traceparent=copy.trace.traceparent if copy.trace is not None else "",
        )
        try:
            self._observer.on_request(event)
        except Exception:  # the observer's own failure (Observers logs and skips those already)
            pass

    def _compare(self, copy: _Copy, shadow_outputs: Mapping[str, np.ndarray], shadow_ns: int) -> None:
        name = copy.primary.name
        key = comparison_key(copy.primary.version, copy.shadow.model.key.version)
        self._comparisons.setdefault(name, {}).setdefault(key, OutputComparison()).add_latency(
            copy.primary_ns, shadow_ns
        )
        unjudged = self._unjudged.setdefault(name, {}).setdefault(key, [])
        unjudged.append((copy.primary_outputs, shadow_outputs))
        if len(unjudged) >= JUDGE_EVERY:
            self._judge(name, key)

    def _judge_model(self, name: str) -> None:
        for key in list(self._unjudged.get(name, ())):
            self._judge(name, key)

    def _judge(self, name: str, key: str) -> None:
        """Compare the pairs waiting for (``name``, ``key``): all at once when their outputs stack (the same names,
        dtypes and shapes past the first dimension: every measure adds up over rows), else one by one."""
        pairs = self._unjudged.get(name, {}).pop(key, [])
        if not pairs:
            return
        held = self._comparisons.setdefault(name, {}).setdefault(key, OutputComparison())
        stacked = _stacked(pairs)
        for primary, shadow, count in [stacked] if stacked is not None else [(p, s, 1) for p, s in pairs]:
            try:
                measured = compare(primary, shadow)
            except Exception:  # outputs compare() does not understand: counted, never raised or logged per request
                measured = OutputComparison(incomparable=1)
            if measured.incomparable:
                measured.incomparable = count
            held.merge(measured)


def _stacked(pairs: Sequence[tuple[Outputs, Outputs]]) -> tuple[Outputs, Outputs, int] | None:
    """The primary's and the shadow's outputs of every pair, each output concatenated along the first dimension;
    None when they do not stack."""
    if len(pairs) == 1:
        primary, shadow = pairs[0]
        return primary, shadow, 1
    try:
        stacked = tuple(
            {name: np.concatenate([outputs[name] for outputs in side]) for name in side[0]}
            for side in ([p for p, _ in pairs], [s for _, s in pairs])
        )
    except (KeyError, ValueError):  # an output missing from one pair, or shapes past the first dimension differ
        return None
    return stacked[0], stacked[1], len(pairs)
