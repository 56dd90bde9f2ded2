"""What the monitor has received from the servers' ``/input-stats`` endpoints, without double counting.

Per model version and per server *instance* (a process: random id, replica name, start
time) the collector keeps the newest snapshot of every window it has seen. A server marks a
window closed once no row it accepted can still fall in it, and closing is a change with its
own ``seq``: a window seen open arrives once more, closed, on the first poll after it closes.
Windows of a process that is gone (another instance answers at its URL, or its replica left)
are final: those that ended count as closed. A poll asks
``since=<last seq>`` and gets only windows that changed, each a complete cumulative
snapshot that replaces the one held for ``(instance, window start)`` — so polling twice
adds nothing, a lost poll is made up by the next one, and a restarted server (a new
instance id at the same URL) contributes its new windows next to the old ones, each
counted once. Across instances, ``serve.input_stats.schema.merge`` adds the windows up.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NotRequired, TypedDict, cast

from serve.input_stats import schema
from serve.input_stats.blocks import Block
from serve.input_stats.document import FeatureMeta

Key = tuple[str, str]  # (model, version)


class InstanceJson(TypedDict):
    """A server process (serve.input_stats.windows.ServerInstance)."""

    id: str
    replica: str
    start_time: float


class InstanceSeen(InstanceJson):
    source: str  # the server URL it answered at
    seq: int  # the newest document's


class StatsWindow(TypedDict):
    """A window of the statistics document (serve.input_stats.schema), as far as the monitor reads it."""

    start: float
    end: float
    seq: int
    closed: NotRequired[bool]
    rows: int
    features: dict[str, Block]


class BaselineRef(TypedDict):
    sha256: NotRequired[str]


class StatsDocument(TypedDict):
    """The statistics document of one server process (serve.input_stats.schema), as far as the monitor reads it."""

    model: dict[str, str]
    instance: InstanceJson
    generated_at: float
    seq: int
    since: NotRequired[int]
    since_reset: NotRequired[bool]
    baseline: BaselineRef | None
    features: list[FeatureMeta]
    window_s: float
    windows: list[StatsWindow]


class MergedWindow(TypedDict):
    """A window summed across instances (schema.merge), as far as the evaluation reads it."""

    start: float
    end: float
    rows: int
    features: dict[str, Block]


class RestartJson(TypedDict):
    replica: str
    instances: list[str]
    start_times: list[float]


@dataclass(slots=True)
class _Instance:
    header: StatsDocument  # the newest document, its windows left out
    windows: dict[float, StatsWindow] = field(default_factory=dict)
    source: str = ""  # the server URL it came from


@dataclass(slots=True)
class Collected:
    """The merged live view of one model version over a time range."""

    windows: list[MergedWindow]  # merged across instances, by start time
    restarts: list[RestartJson]
    baseline_sha256: str | None
    problems: list[str]


class StatsCollector:
    def __init__(self) -> None:
        self._instances: dict[Key, dict[str, _Instance]] = {}
        self._since: dict[tuple[str, str, str], tuple[str, int]] = {}  # (url, model, version) → (instance id, seq)

    def since(self, url: str, model: str, version: str) -> int:
        held = self._since.get((url, model, version))
        return held[1] if held else 0

    def ingest(self, url: str, raw: Any) -> bool:
        """Take one server document (answer to ``since=...``, as parsed). True when the URL now answers from a new
        instance that may have skipped windows (its seq passed our ``since``): ask again with ``since=0``."""
        schema.check_document(raw)
        document = cast(StatsDocument, raw)  # checked: an input-stats document of a version we read
        model = document["model"]["name"]
        version = str(document["model"]["version"])
        iid = document["instance"]["id"]
        previous = self._since.get((url, model, version))
        restarted = previous is not None and previous[0] != iid
        instances = self._instances.setdefault((model, version), {})
        if restarted and previous is not None and previous[0] in instances:
            # The process that was here is gone and will close none of its windows: what it sent is final.
            _close_ended(instances[previous[0]], float(document["generated_at"]))
        inst = instances.get(iid)
        header: StatsDocument = {**document, "windows": []}
        if inst is None:
            inst = instances[iid] = _Instance(header, source=url)
        elif document["seq"] >= inst.header["seq"]:
            inst.header = header
        for w in document["windows"]:
            held = inst.windows.get(w["start"])
            if held is None or w["seq"] > held["seq"]:
                inst.windows[w["start"]] = w
        self._since[(url, model, version)] = (iid, document["seq"])
        return restarted and document.get("since", 0) > 0 and not document.get("since_reset", False)

    def close_ended_from(self, url: str, now: float) -> None:
        """A replica at ``url`` is gone: its windows that ended by ``now`` count as closed (it sent its last)."""
        for instances in self._instances.values():
            for inst in instances.values():
                if inst.source == url:
                    _close_ended(inst, now)

    def models(self) -> list[Key]:
        return sorted(self._instances)

    def forget_before(self, t: float) -> None:
        """Drop windows that ended before ``t`` and instances left with nothing newer."""
        for key, instances in list(self._instances.items()):
            for iid, inst in list(instances.items()):
                for start in [s for s, w in inst.windows.items() if w["end"] < t]:
                    del inst.windows[start]
                if not inst.windows and inst.header["generated_at"] < t:
                    del instances[iid]
            if not instances:
                del self._instances[key]

    def collected(
        self, model: str, version: str, start: float, *, include_open: bool, baseline_sha256: str | None
    ) -> Collected:
        """Windows of ``model`` ``version`` that end after ``start`` (closed ones only unless ``include_open``),
        from instances binning against ``baseline_sha256`` (others are reported, not mixed in)."""
        instances = self._instances.get((model, version), {})
        problems: list[str] = []
        docs: list[StatsDocument] = []
        for iid, inst in instances.items():
            served = _baseline_sha256(inst.header)
            if served != baseline_sha256:
                replica = inst.header["instance"].get("replica", iid)
                problems.append(
                    f"replica {replica} ({inst.source}) bins against "
                    + (f"baseline {served[:12]}…" if served else "no baseline")
                    + (f", not {baseline_sha256[:12]}…" if baseline_sha256 else "")
                )
                continue
            windows = [w for w in inst.windows.values() if w["end"] > start and (include_open or w.get("closed", True))]
            docs.append({**inst.header, "windows": windows})
        if not docs:
            return Collected([], [], baseline_sha256, problems)
        merged = _merge_compatible(docs, problems)
        return Collected(merged["windows"], merged["restarts"], baseline_sha256, problems)

    def baseline_shas(self, model: str, version: str) -> list[str]:
        """Hashes of the baselines this version's instances bin against: the most common first, newest on ties."""
        seen: dict[str, tuple[int, float]] = {}
        for inst in self._instances.get((model, version), {}).values():
            sha = _baseline_sha256(inst.header)
            if sha:
                count, newest = seen.get(sha, (0, 0.0))
                seen[sha] = (count + 1, max(newest, float(inst.header["generated_at"])))
        return sorted(seen, key=lambda s: seen[s], reverse=True)

    def features(self, model: str, version: str, baseline_sha256: str | None) -> list[FeatureMeta]:
        """The features (names, roles, kinds, bin edges) the newest instance binning against ``baseline_sha256``
        records for this version; [] when none does."""
        headers = [
            inst.header
            for inst in self._instances.get((model, version), {}).values()
            if _baseline_sha256(inst.header) == baseline_sha256
        ]
        return max(headers, key=lambda h: h["generated_at"])["features"] if headers else []

    def instances(self, model: str, version: str) -> Iterable[InstanceSeen]:
        for inst in self._instances.get((model, version), {}).values():
            yield {**inst.header["instance"], "source": inst.source, "seq": inst.header["seq"]}


def _baseline_sha256(document: StatsDocument) -> str | None:
    baseline = document.get("baseline")
    return baseline.get("sha256") if baseline else None


def _close_ended(inst: _Instance, now: float) -> None:
    for start, w in inst.windows.items():
        if not w.get("closed", True) and w["end"] <= now:
            inst.windows[start] = {**w, "closed": True}


class _Merged(TypedDict):
    windows: list[MergedWindow]
    restarts: list[RestartJson]


def _merge_compatible(docs: Sequence[StatsDocument], problems: list[str]) -> _Merged:
    """schema.merge, leaving out instances whose feature lists or window sizes disagree with the newest one."""
    try:
        return _merge(docs)
    except ValueError:
        newest = max(docs, key=lambda d: d["generated_at"])
        keep = [d for d in docs if d["features"] == newest["features"] and d["window_s"] == newest["window_s"]]
        for d in docs:
            if d not in keep:
                problems.append(f"replica {d['instance'].get('replica')} records other features or windows; left out")
        return _merge(keep)


def _merge(docs: Sequence[StatsDocument]) -> _Merged:
    # schema.merge reads and writes the documents as plain JSON; the monitor reads back the windows and restarts.
    return cast(_Merged, schema.merge(cast(list[Any], docs)))
