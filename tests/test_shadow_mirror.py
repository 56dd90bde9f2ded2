"""ShadowMirror (serve/core/shadow.py): copies run after the client's answer, shed first, observed as
role "shadow", and compared with the primary's outputs exactly as an offline comparison would.

Versions are loaded by a real ModelRepository into real batchers (ServedVersions); where a test needs
a shadow that stays busy, the loaded version's batcher is swapped for one whose model waits on an
asyncio.Event, so no test depends on timing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper
from prometheus_client import CollectorRegistry

from serve.batching.batcher import Batcher
from serve.batching.policy import BatchingPolicy
from serve.core.mirror import Mirror
from serve.core.served_versions import ServedVersion, ServedVersions
from serve.core.shadow import ShadowMirror, _stacked, shed_bound
from serve.events import Observer, Observers, RequestEvent
from serve.metrics.triton_statistics import TritonStatistics
from serve.modelgen import build, dense_stack, mlp, save, tensor
from serve.repository.repository import ModelRepository
from serve.rollout.comparison import ABS_DELTA_EDGES, OutputComparison, compare, comparison_key
from serve.settings import ServerSettings

CONFIG = """\
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 16
version_policy: {{ all: {{}} }}
dynamic_batching {{ {dynamic} }}
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""
ROWS = 8


def classifier(seed: int) -> object:
    nodes, weights = dense_stack("x", [4, 8, 3], np.random.default_rng(seed), output="logits")
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
    nodes.append(helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=1))
    outputs = [tensor("probabilities", "FP32", ["batch", 3]), tensor("label", "INT64", ["batch", 1])]
    return build("classifier", nodes, [tensor("x", "FP32", ["batch", 4])], outputs, weights)


def regressor(seed: int) -> object:
    return mlp([4, 8, 1], seed=seed, input_name="x", output_name="y")


def write_model(root: Path, name: str, build_version: object, dynamic: str = "") -> None:
    (root / name).mkdir(parents=True)
    (root / name / "config.pbtxt").write_text(CONFIG.format(name=name, dynamic=dynamic))
    for version in (1, 2):
        save(build_version(seed=version), root / name / str(version) / "model.onnx")  # type: ignore[operator]


@dataclass
class Recorder(Observer):
    events: list[RequestEvent] = field(default_factory=list)

    def on_request(self, event: RequestEvent) -> None:
        self.events.append(event)


@dataclass
class Loaded:
    root: Path
    repository: ModelRepository
    served: ServedVersions
    recorder: Recorder
    statistics: TritonStatistics

    def version(self, name: str, version: str) -> ServedVersion:
        return self.served.get(self.repository.get(name, version))


@pytest.fixture
async def loaded(tmp_path: Path) -> AsyncIterator[Loaded]:
    write_model(tmp_path, "classifier", classifier)
    write_model(tmp_path, "regressor", regressor)
    write_model(tmp_path, "prioritised", regressor, dynamic="priority_levels: 2 default_priority_level: 1")
    recorder, statistics = Recorder(), TritonStatistics()
    served = ServedVersions(Observers([recorder, statistics]), grace_s=1.0)
    repository = ModelRepository(tmp_path, ServerSettings(), listeners=[statistics, served])
    await repository.load_all()
    try:
        yield Loaded(tmp_path, repository, served, recorder, statistics)
    finally:
        await repository.close()


class HeldModel:
    """A model run that waits until released, answering y = x[:, :1]."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.batches: list[int] = []  # rows of each batch, in the order they started

    async def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.batches.append(inputs["x"].shape[0])
        self.started.set()
        await self.release.wait()
        return {"y": inputs["x"][:, :1]}


def held(version: ServedVersion, model: HeldModel, observer: Observer, priority_levels: int = 0) -> ServedVersion:
    """``version`` with a batcher that runs ``model`` instead of its session, one batch at a time; with
    priority levels, a request that names none gets the highest, as the "prioritised" model's config says."""
    policy = BatchingPolicy(
        max_batch_size=16,
        max_in_flight=1,
        priority_levels=priority_levels,
        default_priority_level=1 if priority_levels else 0,
    )
    batcher = Batcher(model.run, policy, key=version.model.key, observer=observer)
    return ServedVersion(version.model, version.signature, batcher)


def features(rows: int = ROWS, seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((rows, 4)).astype(np.float32)}


async def primary_answer(primary: ServedVersion, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return (await primary.batcher.submit(dict(feeds))).outputs


def shadow_events(recorder: Recorder) -> list[RequestEvent]:
    return [e for e in recorder.events if e.role == "shadow"]


def test_the_shadow_mirror_is_the_mirror_the_core_calls() -> None:
    mirror: Mirror = ShadowMirror(Observer())  # mypy checks the protocol
    assert mirror.offer is not None


async def test_offer_returns_before_the_shadow_has_run(loaded: Loaded) -> None:
    model = HeldModel()
    shadow = held(loaded.version("regressor", "2"), model, loaded.recorder)
    primary = loaded.version("regressor", "1")
    mirror = ShadowMirror(loaded.recorder)
    feeds = features()
    outputs = await primary_answer(primary, feeds)

    assert mirror.offer(shadow, feeds, primary.model.key, outputs, 1000, "http") is True
    await model.started.wait()  # the copy reached the shadow's model, which holds it
    assert model.batches == [ROWS] and shadow_events(loaded.recorder) == []

    model.release.set()
    await mirror.wait_idle()
    assert [e.outcome for e in shadow_events(loaded.recorder)] == ["success"]


async def test_shadow_runs_are_observed_with_role_shadow_the_original_protocol_and_their_rows(
    loaded: Loaded,
) -> None:
    primary, shadow = loaded.version("regressor", "1"), loaded.version("regressor", "2")
    mirror = ShadowMirror(loaded.recorder)
    feeds = features(rows=5)
    mirror.offer(shadow, feeds, primary.model.key, await primary_answer(primary, feeds), 1000, "grpc")
    await mirror.wait_idle()

    (event,) = shadow_events(loaded.recorder)
    assert (event.key, event.protocol, event.outcome, event.rows) == (shadow.model.key, "grpc", "success", 5)
    assert event.timings is not None and event.duration_ns > 0


async def test_a_copy_is_observed_with_the_request_id_of_the_request_it_copies(loaded: Loaded) -> None:
    primary, shadow = loaded.version("regressor", "1"), loaded.version("regressor", "2")
    mirror = ShadowMirror(loaded.recorder)
    feeds = features(rows=2)
    outputs = await primary_answer(primary, feeds)
    mirror.offer(shadow, feeds, primary.model.key, outputs, 1000, "http", request_id="order-17")
    await mirror.wait_idle()

    (event,) = shadow_events(loaded.recorder)
    assert event.request_id == "order-17"


async def test_triton_statistics_count_the_copies_apart_from_client_requests(loaded: Loaded) -> None:
    primary, shadow = loaded.version("regressor", "1"), loaded.version("regressor", "2")
    mirror = ShadowMirror(Observers([loaded.recorder, loaded.statistics]))
    feeds = features(rows=5)
    mirror.offer(shadow, feeds, primary.model.key, await primary_answer(primary, feeds), 1000, "http")
    await mirror.wait_idle()

    document = loaded.statistics.as_dict(shadow.model)
    assert (document["inference_count"], document["inference_stats"]["success"]["count"]) == (0, 0)
    assert (document["shadow_stats"]["inference_count"], document["shadow_stats"]["success"]["count"]) == (5, 1)
    assert document["execution_count"] == 1


async def test_an_offer_outside_the_event_loop_is_shed_not_raised(loaded: Loaded) -> None:
    primary, shadow = loaded.version("regressor", "1"), loaded.version("regressor", "2")
    mirror = ShadowMirror(loaded.recorder)
    offer = mirror.offer
    assert await asyncio.to_thread(offer, shadow, features(), primary.model.key, {}, 1000, "http") is False
    assert mirror.dropped(shadow.model.key) == 1


async def test_copies_past_max_in_flight_are_shed_and_counted(loaded: Loaded) -> None:
    model = HeldModel()
    shadow = held(loaded.version("regressor", "2"), model, loaded.recorder)
    primary = loaded.version("regressor", "1")
    registry = CollectorRegistry()
    mirror = ShadowMirror(loaded.recorder, max_in_flight=2, registry=registry)
    feeds = features(rows=1)
    outputs = await primary_answer(primary, feeds)

    offered = [mirror.offer(shadow, feeds, primary.model.key, outputs, 1000, "http") for _ in range(3)]

    assert offered == [True, True, False]
    assert mirror.dropped(shadow.model.key) == 1
    labels = {"model": "regressor", "version": "2"}
    assert registry.get_sample_value("serve_shadow_dropped_total", labels) == 1
    model.release.set()
    await mirror.wait_idle()
    assert len(shadow_events(loaded.recorder)) == 2


async def test_copies_are_shed_while_the_shadow_queue_is_at_its_bound(loaded: Loaded) -> None:
    model = HeldModel()
    shadow = held(loaded.version("regressor", "2"), model, loaded.recorder)
    primary = loaded.version("regressor", "1")
    mirror = ShadowMirror(loaded.recorder)
    feeds = features(rows=ROWS)
    outputs = await primary_answer(primary, feeds)
    # The config's queue is unbounded: two batches of max_batch_size 16 rows, in copies of 8 rows.
    bound = 4
    offered = []
    for _ in range(bound + 2):
        offered.append(mirror.offer(shadow, feeds, primary.model.key, outputs, 1000, "http"))
        await asyncio.sleep(0)  # let the copy reach the shadow's queue

    # One copy runs (held), `bound` wait, and the next is shed.
    assert offered == [True] * (bound + 1) + [False]
    assert shadow.batcher.queue_depth == bound and mirror.dropped(shadow.model.key) == 1
    model.release.set()
    await mirror.wait_idle()


def test_the_shed_bound_is_half_a_bounded_queue_else_two_batches() -> None:
    assert shed_bound(BatchingPolicy(max_batch_size=16), rows=8) == 4
    assert shed_bound(BatchingPolicy(max_batch_size=16), rows=64) == 1
    assert shed_bound(BatchingPolicy(max_batch_size=0, max_in_flight=3), rows=1) == 6
    from serve.batching.policy import QueuePolicy

    bounded = BatchingPolicy(max_batch_size=16, default_queue_policy=QueuePolicy(max_queue_size=10))
    assert shed_bound(bounded, rows=1) == 5


async def test_copies_wait_behind_client_requests_at_the_lowest_priority_level(loaded: Loaded) -> None:
    model = HeldModel()
    shadow = held(loaded.version("prioritised", "2"), model, loaded.recorder, priority_levels=2)
    primary = loaded.version("prioritised", "1")
    mirror = ShadowMirror(loaded.recorder)
    blocker = asyncio.create_task(shadow.batcher.submit(features(rows=16)))  # occupies the only instance
    await asyncio.sleep(0)
    feeds = features(rows=8)
    mirror.offer(shadow, feeds, primary.model.key, await primary_answer(primary, feeds), 1000, "http")
    await asyncio.sleep(0)
    # 10 + 8 rows do not fit in one batch of 16: the two requests run one after the other.
    client = asyncio.create_task(shadow.batcher.submit(features(rows=10)))
    await asyncio.sleep(0)

    model.release.set()
    await asyncio.gather(blocker, client)
    await mirror.wait_idle()
    # The client's 10 rows ran before the copy's 8, though the copy was queued first.
    assert model.batches == [16, 10, 8]


async def test_close_cancels_copies_still_running_after_the_grace(loaded: Loaded) -> None:
    model = HeldModel()  # never released
    shadow = held(loaded.version("regressor", "2"), model, loaded.recorder)
    primary = loaded.version("regressor", "1")
    mirror = ShadowMirror(loaded.recorder, grace_s=0.0)
    feeds = features()
    mirror.offer(shadow, feeds, primary.model.key, await primary_answer(primary, feeds), 1000, "http")
    await asyncio.sleep(0)

    await mirror.close()

    assert mirror.in_flight == 0
    assert [e.outcome for e in shadow_events(loaded.recorder)] == ["cancelled"]
    assert mirror.offer(shadow, feeds, primary.model.key, {}, 1000, "http") is False  # closed: shed
    await shadow.batcher.close(0.0)


async def test_a_failing_shadow_is_an_error_event_and_never_raises(loaded: Loaded) -> None:
    primary, shadow = loaded.version("regressor", "1"), loaded.version("classifier", "2")
    mirror = ShadowMirror(loaded.recorder)
    feeds = {"x": np.zeros((2, 7), np.float32)}  # the wrong width for the shadow's model
    assert mirror.offer(shadow, feeds, primary.model.key, {}, 1000, "http") is True
    await mirror.wait_idle()
    (event,) = shadow_events(loaded.recorder)
    assert event.outcome == "model_error"
    assert mirror.comparisons("regressor") == {}


def offline(root: Path, name: str, version: int, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(root / name / str(version) / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


async def mirror_requests(loaded: Loaded, name: str, requests: list[dict[str, np.ndarray]]) -> ShadowMirror:
    """Each request answered by version 1 and mirrored to version 2, one at a time (a batch of the
    same rows as offline, so the float results are the same)."""
    primary, shadow = loaded.version(name, "1"), loaded.version(name, "2")
    mirror = ShadowMirror(loaded.recorder)
    for feeds in requests:
        assert mirror.offer(shadow, feeds, primary.model.key, await primary_answer(primary, feeds), 1000, "http")
        await mirror.wait_idle()
    return mirror


async def test_classifier_agreement_equals_an_offline_comparison_exactly(loaded: Loaded) -> None:
    requests = [features(rows=ROWS, seed=seed) for seed in range(25)]
    mirror = await mirror_requests(loaded, "classifier", requests)

    p = np.concatenate([offline(loaded.root, "classifier", 1, f)["label"] for f in requests]).ravel()
    s = np.concatenate([offline(loaded.root, "classifier", 2, f)["label"] for f in requests]).ravel()
    comparison = mirror.comparisons("classifier")[comparison_key("1", "2")]
    assert comparison.rows == len(p) == 25 * ROWS
    assert comparison.disagreements == int(np.count_nonzero(p != s)) > 0
    pairs, counts = np.unique(np.stack([p, s]), axis=1, return_counts=True)
    expected = {(str(a), str(b)): int(c) for (a, b), c in zip(pairs.T.tolist(), counts.tolist(), strict=True)}
    assert comparison.flips == expected
    assert comparison.latency_pairs == 25


async def test_regressor_deltas_equal_an_offline_comparison_exactly(loaded: Loaded) -> None:
    requests = [features(rows=ROWS, seed=seed) for seed in range(25)]
    mirror = await mirror_requests(loaded, "regressor", requests)

    p = np.concatenate([offline(loaded.root, "regressor", 1, f)["y"] for f in requests]).astype(np.float64)
    s = np.concatenate([offline(loaded.root, "regressor", 2, f)["y"] for f in requests]).astype(np.float64)
    delta = np.abs(p - s).ravel()
    positive = delta[delta > 0]
    expected = [int(np.count_nonzero(delta == 0))]
    expected += np.histogram(positive, bins=[0.0, *ABS_DELTA_EDGES, np.inf])[0].tolist()
    comparison = mirror.comparisons("regressor")[comparison_key("1", "2")]
    assert (comparison.kind, comparison.rows) == ("regression", 25 * ROWS)
    assert comparison.abs_delta_counts == expected
    assert comparison.abs_delta_max == delta.max()


async def test_the_comparison_document_holds_the_comparisons_and_the_drops(loaded: Loaded) -> None:
    mirror = await mirror_requests(loaded, "classifier", [features(seed=1)])
    document = mirror.document("classifier")
    assert document["model"] == "classifier" and list(document["comparisons"]) == ["1->2"]
    assert document["comparisons"]["1->2"]["rows"] == ROWS and document["dropped"] == {}
    assert mirror.comparison_json("classifier").startswith(b'{"model":"classifier"')


def test_outputs_that_stack_are_compared_together_and_count_as_each_pair_would() -> None:
    rng = np.random.default_rng(3)
    pairs = [({"y": rng.random((r, 3))}, {"y": rng.random((r, 3))}) for r in (1, 2, 5)]
    stacked = _stacked(pairs)
    assert stacked is not None and stacked[2] == 3
    together = compare(stacked[0], stacked[1])
    one_by_one = OutputComparison()
    for primary, shadow in pairs:
        one_by_one.merge(compare(primary, shadow))
    assert together.to_json() == one_by_one.to_json()


def test_outputs_whose_shapes_differ_past_the_first_dimension_do_not_stack() -> None:
    pairs = [({"y": np.zeros((1, 3))}, {"y": np.zeros((1, 3))}), ({"y": np.zeros((1, 4))}, {"y": np.zeros((1, 4))})]
    assert _stacked(pairs) is None
