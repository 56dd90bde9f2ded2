"""One input-statistics document for the whole server, made of every worker's.

Each worker records its own rows in its own StatsRecorder, as its own instance. A reader (the
monitor) must see the server as one instance whose rows are counted exactly once, and must be
able to ask for ``since=<seq>`` as it does of any server. So the supervisor keeps, per model
version, the newest full document of every worker instance (kept after the worker dies or is
replaced, until its windows leave the horizon: those rows happened), merges them with the same
``schema.merge`` the monitor uses for replicas, and numbers changes in its own sequence: a
window whose contributors changed gets the next number. The result has the shape of a single
server's document, under the supervisor's own instance.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypedDict

import orjson

from serve.input_stats import schema
from serve.input_stats.windows import ServerInstance


class _Model(TypedDict):
    name: str
    version: str


class _Instance(TypedDict):
    id: str


class _Window(TypedDict):
    start: float
    end: float
    closed: bool
    seq: int


class _MergedWindow(TypedDict):
    start: float
    instances: list[str]  # the worker instances that contributed


class WorkerDocument(TypedDict):
    """What the supervisor reads of a worker's document (input_stats/schema.py); the rest goes to schema.merge."""

    model: _Model
    instance: _Instance
    window_s: float
    horizon_s: float
    counters: dict[str, int]
    windows: list[_Window]
    sampling: object  # the same in every worker's document: passed on as it is
    baseline: object
    features: object


@dataclass
class _Version:
    """What the supervisor holds for one model version."""

    documents: dict[str, WorkerDocument] = field(default_factory=dict)  # worker instance id -> newest document
    # window start -> (worker instance, seq, closed) of each contributor
    fingerprints: dict[float, tuple[tuple[str, int, bool], ...]] = field(default_factory=dict)
    stamps: dict[float, int] = field(default_factory=dict)  # window start -> our seq of its last change


class WorkerDocuments:
    def __init__(self, instance: ServerInstance, clock: Callable[[], float] = time.time) -> None:
        self.instance = instance
        self._clock = clock
        self._seq = itertools.count(1)
        self._versions: dict[tuple[str, str], _Version] = {}

    def combine(self, fetched: Iterable[bytes], since: int) -> bytes:
        """Take every live worker's newest document of one model version; answer ``since`` for the server."""
        fresh: list[WorkerDocument] = [orjson.loads(document) for document in fetched]
        if not fresh:
            raise ValueError("no worker document to combine")
        held = self._hold(fresh)
        # schema.merge reads documents that it has not typed: ours go in as they are.
        untyped: list[Any] = list(held.documents.values())
        merged = schema.merge(untyped)
        self._stamp_changed_windows(held, merged["windows"])
        seq = next(self._seq)
        since_reset = since >= seq
        if since_reset:
            since = 0
        windows = [
            {**{key: value for key, value in window.items() if key != "instances"}, "seq": held.stamps[window["start"]]}
            for window in merged["windows"]
            if held.stamps[window["start"]] > since
        ]
        counters = dict(merged["counters"])
        for counter in ("queue_depth", "queue_size"):
            counters[counter] = sum(d["counters"].get(counter, 0) for d in fresh)
        total = {**merged["total"], "start": self.instance.start_time, "seq": seq}
        return orjson.dumps(
            {
                "format": schema.FORMAT,
                "format_version": schema.FORMAT_VERSION,
                "model": fresh[0]["model"],
                "instance": self.instance.to_json(),
                "generated_at": self._clock(),
                "seq": seq,
                "since": since,
                "since_reset": since_reset,
                "window_s": fresh[0]["window_s"],
                "horizon_s": merged["horizon_s"],
                "sampling": fresh[0]["sampling"],
                "baseline": fresh[0]["baseline"],
                "features": fresh[0]["features"],
                "counters": counters,
                "total": total,
                "windows": windows,
                "workers": len(fresh),
            }
        )

    def _hold(self, fresh: list[WorkerDocument]) -> _Version:
        """Keep the fresh documents in place of their workers' older ones; bring the gone workers' up to now."""
        model = fresh[0]["model"]
        held = self._versions.setdefault((str(model["name"]), str(model["version"])), _Version())
        for document in fresh:
            held.documents[document["instance"]["id"]] = document
        live = {document["instance"]["id"] for document in fresh}
        self._close_ended_windows_of_gone_workers(held, live)
        self._forget_old_windows(held, max(d["horizon_s"] for d in fresh))
        return held

    def _stamp_changed_windows(self, held: _Version, merged_windows: Iterable[_MergedWindow]) -> None:
        """A merged window whose contributors changed gets the next number of our sequence."""
        for window in merged_windows:
            start = window["start"]
            # A contributor's window changes when its seq does, closing included; a merged window is closed
            # when every contributor's is, so that change too gets a stamp of its own.
            fingerprint = tuple(
                sorted((iid, *_window_state(held.documents[iid], start)) for iid in window["instances"])
            )
            if held.fingerprints.get(start) != fingerprint:
                held.fingerprints[start] = fingerprint
                held.stamps[start] = next(self._seq)

    def _close_ended_windows_of_gone_workers(self, held: _Version, live: set[str]) -> None:
        """A worker that died or was replaced closes none of its windows any more; what it recorded is final,
        so its ended windows count as closed (else the merged window would stay open forever)."""
        now = self._clock()
        for iid, document in held.documents.items():
            if iid in live:
                continue
            for window in document["windows"]:
                if not window["closed"] and window["end"] <= now:
                    window["closed"] = True

    def _forget_old_windows(self, held: _Version, horizon_s: float) -> None:
        """Windows past the horizon leave every worker's ring; a gone worker's must leave too."""
        cutoff = self._clock() - horizon_s
        for document in held.documents.values():
            document["windows"] = [w for w in document["windows"] if w["end"] > cutoff]
        window_s = float(next(iter(held.documents.values()))["window_s"])
        for start in [s for s in held.stamps if s + window_s <= cutoff]:
            held.stamps.pop(start, None)
            held.fingerprints.pop(start, None)


def _window_state(document: WorkerDocument, start: float) -> tuple[int, bool]:
    for window in document["windows"]:
        if window["start"] == start:
            return int(window["seq"]), bool(window["closed"])
    return 0, False
