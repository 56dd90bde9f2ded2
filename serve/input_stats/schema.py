"""The statistics document (``GET …/input-stats``, ``serve.monitoring.Monitoring/InputStats``) and its merge.

One document describes one model version on one server process::

    {
      "format": "serve.input-stats", "format_version": 1,
      "model": {"name": "churn", "version": "3"},
      "instance": {"id": "9f0c…", "replica": "pod-a", "start_time": 1735689600.0},
      "generated_at": 1735693207.5,
      "seq": 4711,                 # high-water mark: every change shown here has seq <= 4711
      "since": 4650,               # echo of the request; windows with seq <= since are left out
      "since_reset": false,        # true when since was above this instance's seq (another instance's)
      "window_s": 60.0, "horizon_s": 3600.0,
      "sampling": {"sample_rate": 1.0, "max_rows_per_batch": null},
      "baseline": {"sha256": "…", "format_version": 1, "model": {…}} | null,
      "features": [{"name": "x[0]", "role": "input", "tensor": "x", "column": 0, "view": null,
                    "kind": "numeric", "edges": […] | null, "sketch": "kll" | null}, …],
      "counters": {"batches_submitted", "rows_submitted", "batches_dropped", "rows_dropped",
                   "batches_recorded", "rows_recorded", "rows_sampled_out", "tensors_skipped",
                   "errors", "queue_depth", "queue_size"},
      "total": {"start", "end", "seq", "batches", "rows", "rows_sampled_out", "batches_dropped",
                "rows_dropped", "features": {name: block}},
      "windows": [{"start", "end", "closed", "seq", "batches", "rows", "rows_sampled_out",
                   "batches_dropped", "rows_dropped", "features": {name: block}}, …]
    }

Blocks are described in blocks.py. A window's ``seq`` is the sequence number of its
last change; a reader remembers the document's ``seq`` and asks ``since=<seq>`` next
time to get only windows that changed, each as a complete cumulative snapshot that
*replaces* what it had for ``(instance id, window start)``. Nothing is ever counted
twice that way, and a lost poll is made up by the next one while the window is within
the horizon. ``total`` covers everything since the process started, including windows
already evicted from the ring.

``merge`` combines documents from several replicas and successive polls: per instance
it keeps the newest version of every window and the newest total, then adds across
instances; a replica that shows up with more than one instance id has restarted and
is listed under ``restarts``. The JSON types are in document.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict, cast

import orjson

from serve.input_stats.blocks import Block, merge_feature_blocks
from serve.input_stats.document import (
    Counters,
    InstanceJson,
    InstanceSeen,
    MergedDocument,
    MergedTotal,
    MergedWindow,
    Restart,
    StatsDocument,
    TotalJson,
    WindowJson,
)

FORMAT = "serve.input-stats"
FORMAT_VERSION = 1


def encode(document: StatsDocument | MergedDocument) -> bytes:
    return orjson.dumps(document)


def check_document(document: Mapping[str, object]) -> None:
    if document.get("format") != FORMAT:
        raise ValueError(f"not an input-stats document (format {document.get('format')!r})")
    if document.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"input-stats format_version {document.get('format_version')!r} is not supported")


def merge(documents: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """``merge_documents`` for callers that hold documents as parsed JSON (the monitor, the supervisor)."""
    return cast(dict[str, Any], merge_documents(cast(list[StatsDocument], list(documents))))


def merge_documents(documents: Iterable[StatsDocument]) -> MergedDocument:
    """Merge server documents (any replicas, any number of polls each, any order) into one.

    The result has the same windows/total/features layout, with ``instances`` (one
    entry per process seen, with the newest ``seq``), ``restarts`` and per window the
    ``instances`` that contributed. Already merged documents are rejected.
    """
    docs = list(documents)
    _check_mergeable(docs)
    newest = _Newest.of(docs)
    ordered = sorted(newest.instances.values(), key=lambda i: (i.instance["replica"], i.instance["start_time"]))
    first = docs[0]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "merged": True,
        "model": first["model"],
        "instances": [i.to_json() for i in ordered],
        "restarts": _restarts(ordered),
        "generated_at": max(i.generated_at for i in ordered),
        "window_s": first["window_s"],
        "horizon_s": max(d["horizon_s"] for d in docs),
        "baseline": first["baseline"],
        "features": first["features"],
        "counters": _add_counters([i.counters for i in ordered]),
        "total": _merge_totals(list(newest.totals.values()), ordered),
        "windows": _merge_windows(newest.windows),
    }


def _check_mergeable(docs: Sequence[StatsDocument]) -> None:
    if not docs:
        raise ValueError("nothing to merge")
    # Read as plain JSON: what is checked here is whether they are the documents the types say.
    raw: list[Mapping[str, object]] = list(docs)
    for d in raw:
        check_document(d)
        if d.get("merged"):
            raise ValueError("merge takes server documents, not merged ones")
    for key in ("model", "window_s", "baseline", "features"):
        if len({orjson.dumps(d.get(key)) for d in raw}) > 1:
            raise ValueError(f"documents disagree on {key!r}; merge only one model version with one baseline")


@dataclass(slots=True)
class _Seen:
    """One server process, as its newest document shows it."""

    instance: InstanceJson
    seq: int
    generated_at: float
    counters: Counters

    def to_json(self) -> InstanceSeen:
        i = self.instance
        return {
            "id": i["id"], "replica": i["replica"], "start_time": i["start_time"], "seq": self.seq,
            "generated_at": self.generated_at,
        }  # fmt: skip


@dataclass(slots=True)
class _Newest:
    """Per instance, the newest snapshot of every window and of the total (by seq: polls may come in any order)."""

    instances: dict[str, _Seen] = field(default_factory=dict)
    totals: dict[str, TotalJson] = field(default_factory=dict)  # in the order instances were first seen
    windows: dict[tuple[str, float], WindowJson] = field(default_factory=dict)

    @classmethod
    def of(cls, docs: Iterable[StatsDocument]) -> _Newest:
        newest = cls()
        for d in docs:
            iid = d["instance"]["id"]
            known = newest.instances.get(iid)
            if known is None or d["seq"] > known.seq:
                newest.instances[iid] = _Seen(d["instance"], d["seq"], d["generated_at"], d["counters"])
                newest.totals[iid] = d["total"]
            for w in d["windows"]:
                held = newest.windows.get((iid, w["start"]))
                if held is None or w["seq"] > held["seq"]:
                    newest.windows[(iid, w["start"])] = w
        return newest


class _WindowCounts(TypedDict):
    batches: int
    rows: int
    rows_sampled_out: int
    batches_dropped: int
    rows_dropped: int


def _add_counts(parts: Sequence[WindowJson | TotalJson]) -> _WindowCounts:
    return {
        "batches": sum(p.get("batches", 0) for p in parts),
        "rows": sum(p.get("rows", 0) for p in parts),
        "rows_sampled_out": sum(p.get("rows_sampled_out", 0) for p in parts),
        "batches_dropped": sum(p.get("batches_dropped", 0) for p in parts),
        "rows_dropped": sum(p.get("rows_dropped", 0) for p in parts),
    }


def _features(parts: Sequence[WindowJson | TotalJson]) -> dict[str, Block]:
    """The parts' feature blocks added up; one part's are taken as they are."""
    if len(parts) == 1:
        return parts[0]["features"]
    return merge_feature_blocks([p["features"] for p in parts])


def _merge_windows(windows: Mapping[tuple[str, float], WindowJson]) -> list[MergedWindow]:
    """The windows of every instance added up by start time (instances in id order)."""
    by_start: dict[float, list[tuple[str, WindowJson]]] = {}
    for (iid, start), w in sorted(windows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        by_start.setdefault(start, []).append((iid, w))
    merged: list[MergedWindow] = []
    for start in sorted(by_start):
        parts = [w for _, w in by_start[start]]
        merged.append(
            {
                **_add_counts(parts),
                "features": _features(parts),
                "instances": [iid for iid, _ in by_start[start]],
                "closed": all(w["closed"] for w in parts),
                "start": start,
                "end": parts[-1]["end"],
            }
        )
    return merged


def _merge_totals(totals: Sequence[TotalJson], ordered: Sequence[_Seen]) -> MergedTotal:
    return {
        **_add_counts(totals),
        "features": _features(totals),
        "start": min(i.instance["start_time"] for i in ordered),
        "end": max(i.generated_at for i in ordered),
    }


def _add_counters(counters: Sequence[Counters]) -> Counters:
    return {
        "batches_submitted": sum(c.get("batches_submitted", 0) for c in counters),
        "rows_submitted": sum(c.get("rows_submitted", 0) for c in counters),
        "batches_dropped": sum(c.get("batches_dropped", 0) for c in counters),
        "rows_dropped": sum(c.get("rows_dropped", 0) for c in counters),
        "batches_recorded": sum(c.get("batches_recorded", 0) for c in counters),
        "rows_recorded": sum(c.get("rows_recorded", 0) for c in counters),
        "rows_sampled_out": sum(c.get("rows_sampled_out", 0) for c in counters),
        "tensors_skipped": sum(c.get("tensors_skipped", 0) for c in counters),
        "errors": sum(c.get("errors", 0) for c in counters),
    }


def _restarts(ordered: Sequence[_Seen]) -> list[Restart]:
    """Replicas seen with more than one instance id: they restarted."""
    by_replica: dict[str, list[InstanceJson]] = {}
    for seen in ordered:
        by_replica.setdefault(seen.instance["replica"], []).append(seen.instance)
    return [
        {"replica": replica, "instances": [i["id"] for i in seen], "start_times": [i["start_time"] for i in seen]}
        for replica, seen in by_replica.items()
        if len(seen) > 1
    ]
