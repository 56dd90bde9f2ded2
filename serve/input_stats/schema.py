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
is listed under ``restarts``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from serve.input_stats.blocks import Block, merge_blocks

FORMAT = "serve.input-stats"
FORMAT_VERSION = 1

_WINDOW_COUNTERS = ("batches", "rows", "rows_sampled_out", "batches_dropped", "rows_dropped")
_ADDITIVE_COUNTERS = (
    "batches_submitted", "rows_submitted", "batches_dropped", "rows_dropped", "batches_recorded",
    "rows_recorded", "rows_sampled_out", "tensors_skipped", "errors",
)  # fmt: skip


def encode(document: dict[str, Any]) -> bytes:
    return orjson.dumps(document)


def check_document(document: dict[str, Any]) -> None:
    if document.get("format") != FORMAT:
        raise ValueError(f"not an input-stats document (format {document.get('format')!r})")
    if document.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"input-stats format_version {document.get('format_version')!r} is not supported")


def _merge_features(a: dict[str, Block], b: dict[str, Block]) -> dict[str, Block]:
    if a.keys() != b.keys():
        raise ValueError("documents list different features")
    return {name: merge_blocks(a[name], b[name]) for name in a}


def _merge_windows(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = {key: a.get(key, 0) + b.get(key, 0) for key in _WINDOW_COUNTERS}
    out["features"] = _merge_features(a["features"], b["features"])
    return out


def _same(documents: Sequence[dict[str, Any]], key: str) -> Any:
    values = [orjson.dumps(d.get(key)) for d in documents]
    if len(set(values)) > 1:
        raise ValueError(f"documents disagree on {key!r}; merge only one model version with one baseline")
    return documents[0].get(key)


def merge(documents: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Merge server documents (any replicas, any number of polls each, any order) into one.

    The result has the same windows/total/features layout, with ``instances`` (one
    entry per process seen, with the newest ``seq``), ``restarts`` and per window the
    ``instances`` that contributed. Already merged documents are rejected.
    """
    docs = list(documents)
    if not docs:
        raise ValueError("nothing to merge")
    for d in docs:
        check_document(d)
        if d.get("merged"):
            raise ValueError("merge takes server documents, not merged ones")
    for key in ("model", "window_s", "baseline", "features"):
        _same(docs, key)

    # Per instance: the newest snapshot of every window and of the total.
    newest_total: dict[str, dict[str, Any]] = {}
    newest_window: dict[tuple[str, float], tuple[int, dict[str, Any]]] = {}
    instances: dict[str, dict[str, Any]] = {}
    for d in docs:
        inst = d["instance"]
        iid = inst["id"]
        known = instances.get(iid)
        if known is None or d["seq"] > known["seq"]:
            instances[iid] = {
                **inst,
                "seq": d["seq"],
                "generated_at": d["generated_at"],
                "counters": d["counters"],
            }
            newest_total[iid] = d["total"]
        for w in d["windows"]:
            window_key = (iid, w["start"])
            held = newest_window.get(window_key)
            if held is None or w["seq"] > held[0]:
                newest_window[window_key] = (w["seq"], w)

    windows: dict[float, dict[str, Any]] = {}
    for (iid, start), (_, w) in sorted(newest_window.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if start in windows:
            merged = windows[start]
            combined = _merge_windows(merged, w)
            combined["instances"] = [*merged["instances"], iid]
            combined["closed"] = merged["closed"] and w["closed"]
        else:
            combined = {key: w.get(key, 0) for key in _WINDOW_COUNTERS}
            combined["features"] = w["features"]
            combined["instances"] = [iid]
            combined["closed"] = w["closed"]
        combined["start"], combined["end"] = start, w["end"]
        windows[start] = combined

    totals = list(newest_total.values())
    total = {key: totals[0].get(key, 0) for key in _WINDOW_COUNTERS}
    total["features"] = totals[0]["features"]
    for t in totals[1:]:
        total = _merge_windows(total, t)
    ordered = sorted(instances.values(), key=lambda i: (i["replica"], i["start_time"]))
    total["start"] = min(i["start_time"] for i in ordered)
    total["end"] = max(i["generated_at"] for i in ordered)

    by_replica: dict[str, list[dict[str, Any]]] = {}
    for inst in ordered:
        by_replica.setdefault(inst["replica"], []).append(inst)
    restarts = [
        {
            "replica": replica,
            "instances": [i["id"] for i in seen],
            "start_times": [i["start_time"] for i in seen],
        }
        for replica, seen in by_replica.items()
        if len(seen) > 1
    ]
    counters = {key: sum(i["counters"].get(key, 0) for i in ordered) for key in _ADDITIVE_COUNTERS}
    first = docs[0]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "merged": True,
        "model": first["model"],
        "instances": [{key: i[key] for key in ("id", "replica", "start_time", "seq", "generated_at")} for i in ordered],
        "restarts": restarts,
        "generated_at": total["end"],
        "window_s": first["window_s"],
        "horizon_s": max(d["horizon_s"] for d in docs),
        "baseline": first["baseline"],
        "features": first["features"],
        "counters": counters,
        "total": total,
        "windows": [windows[s] for s in sorted(windows)],
    }
