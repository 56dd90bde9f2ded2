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
from typing import Any

import orjson

from serve.input_stats import schema
from serve.input_stats.windows import ServerInstance

Document = dict[str, Any]


@dataclass
class _Version:
    """What the supervisor holds for one model version."""

    documents: dict[str, Document] = field(default_factory=dict)  # worker instance id -> newest document
    # window start -> (worker instance, seq, closed) of each contributor
    fingerprints: dict[float, tuple[tuple[str, int, bool], ...]] = field(default_factory=dict)
    stamps: dict[float, int] = field(default_factory=dict)  # window start -> our seq of its last change


class WorkerDocuments:
    def __init__(self, instance: ServerInstance, clock: Callable[[], float] = time.time) -> None:
        self.instance = instance
        self._clock = clock
        self._seq = itertools.count(1)
        self._versions: dict[tuple[str, str], _Version] = {}

    def combine(self, fetched: Iterable[Document], since: int) -> bytes:
        """Take every live worker's newest document of one model version; answer ``since`` for the server."""
        fresh = list(fetched)
        if not fresh:
            raise ValueError("no worker document to combine")
        model = fresh[0]["model"]
        held = self._versions.setdefault((str(model["name"]), str(model["version"])), _Version())
        for document in fresh:
            held.documents[document["instance"]["id"]] = document
        live = {document["instance"]["id"] for document in fresh}
        self._close_ended_windows_of_gone_workers(held, live)
        self._forget_old_windows(held, max(d["horizon_s"] for d in fresh))
        merged = schema.merge(held.documents.values())
        for window in merged["windows"]:
            start = window["start"]
            # A contributor's window changes when its seq does, closing included; a merged window is closed
            # when every contributor's is, so that change too gets a stamp of its own.
            fingerprint = tuple(
                sorted((iid, *_window_state(held.documents[iid], start)) for iid in window["instances"])
            )
            if held.fingerprints.get(start) != fingerprint:
                held.fingerprints[start] = fingerprint
                held.stamps[start] = next(self._seq)
        seq = next(self._seq)
        since_reset = since >= seq
        if since_reset:
            since = 0
        windows = []
        for window in merged["windows"]:
            stamp = held.stamps[window["start"]]
            if stamp <= since:
                continue
            out = {key: value for key, value in window.items() if key != "instances"}
            out["seq"] = stamp
            windows.append(out)
        counters = dict(merged["counters"])
        counters["queue_depth"] = sum(d["counters"].get("queue_depth", 0) for d in fresh)
        counters["queue_size"] = sum(d["counters"].get("queue_size", 0) for d in fresh)
        total = dict(merged["total"])
        total["start"], total["seq"] = self.instance.start_time, seq
        first = fresh[0]
        return orjson.dumps(
            {
                "format": schema.FORMAT,
                "format_version": schema.FORMAT_VERSION,
                "model": model,
                "instance": self.instance.to_json(),
                "generated_at": self._clock(),
                "seq": seq,
                "since": since,
                "since_reset": since_reset,
                "window_s": first["window_s"],
                "horizon_s": merged["horizon_s"],
                "sampling": first["sampling"],
                "baseline": first["baseline"],
                "features": first["features"],
                "counters": counters,
                "total": total,
                "windows": windows,
                "workers": len(fresh),
            }
        )

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


def _window_state(document: Document, start: float) -> tuple[int, bool]:
    for window in document["windows"]:
        if window["start"] == start:
            return int(window["seq"]), bool(window["closed"])
    return 0, False
