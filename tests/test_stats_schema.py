"""Merging statistics documents from several replicas, repeated polls and restarts (serve.input_stats.schema)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from serve.input_stats import schema
from serve.input_stats.baseline import Baseline, BaselineFeature
from serve.input_stats.blocks import kll_from_block
from serve.input_stats.document import MergedTotal, MergedWindow, TotalJson, WindowJson
from serve.input_stats.recorder import StatsRecorder
from serve.input_stats.windows import ServerInstance
from serve.types import TensorSpec

INPUTS = [TensorSpec("x", "FP32", (2,)), TensorSpec("s", "BYTES", ())]
OUTPUTS = [TensorSpec("p", "FP32", (3,))]
START = 6000.0


class Clock:
    def __init__(self) -> None:
        self.t = START

    def __call__(self) -> float:
        return self.t


def _baseline() -> Baseline:
    edges = np.linspace(-2, 2, 11)
    return Baseline(
        model={},
        features=[
            BaselineFeature("x[0]", "input", "x", 0, None, "numeric", edges=edges),
            BaselineFeature("x[1]", "input", "x", 1, None, "numeric", edges=edges),
            BaselineFeature("s", "input", "s", None, None, "categorical", vocabulary=("a", "b")),
        ],
        sha256="base",
    )


def _recorder(instance: ServerInstance, clock: Clock, baseline: Baseline | None = None) -> StatsRecorder:
    return StatsRecorder("m", 1, INPUTS, OUTPUTS, instance=instance, baseline=baseline or _baseline(), clock=clock)


def _batch(seed: int, rows: int = 16) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 2)).astype(np.float32)
    s = rng.choice(np.array([b"a", b"b", b"zz"], dtype=object), size=rows)
    p = rng.dirichlet([1, 1, 1], size=rows).astype(np.float32)
    return {"x": x, "s": s}, {"p": p}


def _drive(rec: StatsRecorder, clock: Clock, stream: list[tuple[float, int]]) -> None:
    for t, seed in stream:
        clock.t = t
        rec.submit(*_batch(seed))
        rec.flush(5)


STREAM_A = [(START + 1, 1), (START + 30, 2), (START + 61, 3), (START + 130, 4)]
STREAM_B = [(START + 5, 11), (START + 65, 12), (START + 70, 13)]


def _comparable(block: Mapping[str, Any]) -> dict[str, Any]:
    """A block with float fields rounded and sketches replaced by what they summarise."""
    out: dict[str, Any] = {}
    for key, value in block.items():
        if key == "kll":
            out[key] = kll_from_block({"kind": "numeric", "count": 0, "missing": 0, "kll": value}).n
        elif key in ("other_items", "items"):
            out[key] = value["top"]
        elif isinstance(value, float):
            out[key] = round(value, 9)
        elif isinstance(value, dict):
            out[key] = _comparable(value)
        elif isinstance(value, list):
            out[key] = [round(v, 9) if isinstance(v, float) else v for v in value]
        else:
            out[key] = value
    return out


def _features(window: WindowJson | TotalJson | MergedWindow | MergedTotal) -> dict[str, Any]:
    return {name: _comparable(block) for name, block in window["features"].items()}


def test_two_replicas_merged_equal_one_server_fed_both_streams() -> None:
    clock = Clock()
    a = _recorder(ServerInstance("A", "pod-a", START), clock)
    b = _recorder(ServerInstance("B", "pod-b", START), clock)
    both = _recorder(ServerInstance("AB", "pod-ab", START), clock)
    try:
        _drive(a, clock, STREAM_A)
        _drive(b, clock, STREAM_B)
        _drive(both, clock, sorted(STREAM_A + STREAM_B))
        clock.t = START + 200
        merged = schema.merge([a.export(), b.export()])
        single = both.export()
    finally:
        for rec in (a, b, both):
            rec.close()
    assert [w["start"] for w in merged["windows"]] == [w["start"] for w in single["windows"]]
    for mw, sw in zip(merged["windows"], single["windows"], strict=True):
        assert (mw["rows"], mw["batches"]) == (sw["rows"], sw["batches"])
        assert _features(mw) == _features(sw)
    assert _features(merged["total"]) == _features(single["total"])
    assert merged["windows"][0]["instances"] == ["A", "B"]
    assert merged["restarts"] == []
    assert merged["counters"]["rows_recorded"] == single["counters"]["rows_recorded"]


def test_repeated_polls_are_not_double_counted() -> None:
    clock = Clock()
    a = _recorder(ServerInstance("A", "pod-a", START), clock)
    try:
        _drive(a, clock, STREAM_A[:2])
        poll_1 = a.export()
        _drive(a, clock, STREAM_A[2:])
        poll_2 = a.export(since=poll_1["seq"])
        poll_3 = a.export(since=poll_2["seq"])
        final = a.export()
    finally:
        a.close()
    merged = schema.merge([poll_2, poll_1, poll_3, poll_1])
    assert [_features(w) for w in merged["windows"]] == [_features(w) for w in final["windows"]]
    assert _features(merged["total"]) == _features(final["total"])
    assert merged["total"]["rows"] == 64


def test_a_restart_is_flagged_and_both_lives_are_counted_once() -> None:
    clock = Clock()
    before = _recorder(ServerInstance("old", "pod-a", START), clock)
    _drive(before, clock, STREAM_A[:2])
    doc_before = before.export()
    before.close()
    after = _recorder(ServerInstance("new", "pod-a", START + 40), clock)
    try:
        _drive(after, clock, [(START + 45, 7), (START + 70, 8)])
        doc_after = after.export()
    finally:
        after.close()
    merged = schema.merge([doc_before, doc_after, doc_before])
    assert merged["restarts"] == [{"replica": "pod-a", "instances": ["old", "new"], "start_times": [START, START + 40]}]
    assert merged["total"]["rows"] == 64
    first = merged["windows"][0]
    assert (first["start"], first["rows"], first["instances"]) == (START, 48, ["new", "old"])


def test_merge_refuses_documents_of_different_baselines() -> None:
    clock = Clock()
    a = _recorder(ServerInstance("A", "r", START), clock)
    other = Baseline(model={}, features=[], sha256="other")
    b = _recorder(ServerInstance("B", "r2", START), clock, baseline=other)
    try:
        with pytest.raises(ValueError, match="baseline"):
            schema.merge([a.export(), b.export()])
    finally:
        a.close()
        b.close()


def test_merge_refuses_merged_documents_and_foreign_formats() -> None:
    clock = Clock()
    a = _recorder(ServerInstance("A", "r", START), clock)
    try:
        merged = schema.merge([a.export()])
    finally:
        a.close()
    with pytest.raises(ValueError, match="merged"):
        schema.merge([merged])
    with pytest.raises(ValueError, match="format"):
        schema.merge([{"format": "something-else"}])
