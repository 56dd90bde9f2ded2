"""What the analyser judges: per arm of a model's rollout, the requests it answered, how many failed
and how long they took, plus the shadow's output comparisons. Cumulative since the process started
and made of counts only, so that the workers' and replicas' evidence merges by summing and the
evidence since a step began is ``now.minus(at_step_start)``.

**What is an error.** The arm is judged on what it can be blamed for. Its failures are the outcomes
the monitor's SLO counts as the server's (serve/monitor/slo.py ``ERROR_OUTCOMES``): ``model_error``
and ``error`` (the run failed), ``timeout`` (the deadline passed, in the queue or running: a slow arm
causes it), ``rejected`` (its queue was full: a slow arm fills its own queue first) and ``unavailable``.
Client mistakes (``invalid_input``) and callers who gave up (``cancelled``) say nothing about the
version and are left out of both the requests and the errors. Latency is recorded for every judged
request, failures included: a timeout is the slowest answer a client got.

**Labels.** Per version, the rows labelled through the feedback API and how many of them its prediction
got wrong (serve/ground_truth: a label joins the version that answered its request, a shadow's copy too). A
version has one role in a plan, so its labels are its arm's. Counted by the join stores, not here: the core
adds them to the evidence it reads (serve/core/cluster.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NotRequired, TypedDict

import orjson

from serve.events import Observer, RequestEvent
from serve.rollout.comparison import ComparisonDocument, OutputComparison, comparison_key
from serve.rollout.latency import LatencyHistogram

ERROR_OUTCOMES = frozenset({"model_error", "error", "timeout", "rejected", "unavailable"})
SUCCESS = "success"


class ArmJson(TypedDict):
    version: int
    role: str
    requests: int
    errors: int
    latency_counts: list[int]  # serve/rollout/latency.py buckets


class LabelsJson(TypedDict):
    version: int
    labelled: int
    wrong: int


class RolloutEvidenceJson(TypedDict):
    arms: list[ArmJson]
    comparisons: dict[str, ComparisonDocument]  # comparison_key(primary, shadow) -> comparison
    labels: NotRequired[list[LabelsJson]]  # where the model's versions keep predictions to join labels to


@dataclass(frozen=True, slots=True)
class Labelled:
    """A version's labelled rows and how many of its predictions were wrong."""

    rows: int = 0
    wrong: int = 0

    def __add__(self, other: Labelled) -> Labelled:
        return Labelled(self.rows + other.rows, self.wrong + other.wrong)

    def minus(self, earlier: Labelled) -> Labelled:
        # A window of predictions leaving retention takes its labels with it: never below nothing.
        return Labelled(
            max(0, self.rows - earlier.rows), max(0, min(self.wrong - earlier.wrong, self.rows - earlier.rows))
        )


@dataclass(frozen=True, slots=True)
class ArmKey:
    version: int
    role: str  # serve/rollout/spec.py Role, never ""


@dataclass(slots=True)
class ArmEvidence:
    requests: int = 0  # judged: successes and errors
    errors: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def record(self, outcome: str, duration_ns: int) -> None:
        if outcome in ERROR_OUTCOMES:
            self.errors += 1
        elif outcome != SUCCESS:
            return  # the client's doing, not the arm's
        self.requests += 1
        self.latency.record(duration_ns)

    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    def merge(self, other: ArmEvidence) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.latency.merge(other.latency)

    def minus(self, earlier: ArmEvidence) -> ArmEvidence:
        return ArmEvidence(
            self.requests - earlier.requests, self.errors - earlier.errors, self.latency.minus(earlier.latency)
        )

    def copy(self) -> ArmEvidence:
        return ArmEvidence(self.requests, self.errors, LatencyHistogram(list(self.latency.counts)))


@dataclass(slots=True)
class RolloutEvidence:
    """One model's evidence: its arms by (version, role), and the shadows' comparisons with the primary."""

    arms: dict[ArmKey, ArmEvidence] = field(default_factory=dict)
    comparisons: dict[str, OutputComparison] = field(default_factory=dict)
    labels: dict[int, Labelled] = field(default_factory=dict)  # version -> its labelled rows

    def arm(self, version: int, role: str) -> ArmEvidence:
        """The arm's evidence; empty when it saw no request."""
        return self.arms.get(ArmKey(version, role)) or ArmEvidence()

    def labelled(self, version: int) -> Labelled:
        return self.labels.get(version) or Labelled()

    def comparison(self, primary: int, shadow: int) -> OutputComparison:
        return self.comparisons.get(comparison_key(str(primary), str(shadow))) or OutputComparison()

    def merge(self, other: RolloutEvidence) -> None:
        for key, arm in other.arms.items():
            mine = self.arms.get(key)
            if mine is None:
                self.arms[key] = arm.copy()
            else:
                mine.merge(arm)
        for name, comparison in other.comparisons.items():
            held = self.comparisons.get(name)
            if held is None:
                self.comparisons[name] = comparison.copy()
            else:
                held.merge(comparison)
        for version, counts in other.labels.items():
            self.labels[version] = self.labelled(version) + counts

    def minus(self, earlier: RolloutEvidence) -> RolloutEvidence:
        """What was added since ``earlier``: arms and comparisons with nothing new are left out."""
        arms = {}
        for key, arm in self.arms.items():
            added = arm.minus(earlier.arms[key]) if key in earlier.arms else arm.copy()
            if added.requests:
                arms[key] = added
        comparisons = {}
        for name, comparison in self.comparisons.items():
            before = earlier.comparisons.get(name)
            added_rows = comparison.since(before) if before is not None else comparison.copy()
            if added_rows.rows:
                comparisons[name] = added_rows
        labels = {v: c.minus(earlier.labelled(v)) for v, c in self.labels.items()}
        return RolloutEvidence(arms, comparisons, {v: c for v, c in labels.items() if c.rows})

    def to_json(self) -> RolloutEvidenceJson:
        return {
            "arms": [
                {
                    "version": key.version,
                    "role": key.role,
                    "requests": arm.requests,
                    "errors": arm.errors,
                    "latency_counts": list(arm.latency.counts),
                }
                for key, arm in sorted(self.arms.items(), key=lambda item: (item[0].version, item[0].role))
            ],
            "comparisons": {name: comparison.to_json() for name, comparison in sorted(self.comparisons.items())},
            "labels": [
                {"version": version, "labelled": counts.rows, "wrong": counts.wrong}
                for version, counts in sorted(self.labels.items())
            ],
        }

    @classmethod
    def from_json(cls, doc: RolloutEvidenceJson) -> RolloutEvidence:
        arms = {
            ArmKey(arm["version"], arm["role"]): ArmEvidence(
                arm["requests"], arm["errors"], LatencyHistogram.from_counts(arm["latency_counts"])
            )
            for arm in doc["arms"]
        }
        comparisons = {name: OutputComparison.from_json(c) for name, c in doc["comparisons"].items()}
        labels = {item["version"]: Labelled(item["labelled"], item["wrong"]) for item in doc.get("labels", [])}
        return cls(arms, comparisons, labels)


def evidence_from_bytes(doc: bytes) -> RolloutEvidence:
    parsed: RolloutEvidenceJson = orjson.loads(doc)
    return RolloutEvidence.from_json(parsed)


def merge_evidence_json(docs: list[bytes]) -> bytes:
    """The workers' (or replicas') evidence documents of one model, merged into one."""
    merged = RolloutEvidence()
    for doc in docs:
        merged.merge(evidence_from_bytes(doc))
    return orjson.dumps(merged.to_json())


ComparisonsProvider = Callable[[str], Mapping[str, OutputComparison]]


class EvidenceRecorder(Observer):
    """Records every request answered by an arm of a rollout (role "" is no rollout: skipped). Runs on
    the event loop that observes requests, so it needs no lock; O(1) per request. ``comparisons`` is the
    shadow mirror's ``comparisons(name)``, keyed by ``comparison_key``; None without a mirror. It may be
    set after construction: the mirror observes through the observers this recorder is one of."""

    def __init__(self, comparisons: ComparisonsProvider | None = None) -> None:
        self.comparisons = comparisons
        self._arms: dict[tuple[str, str, str], ArmEvidence] = {}  # (model, version, role): the hot path's lookup
        self._models: dict[str, RolloutEvidence] = {}

    def on_request(self, event: RequestEvent) -> None:
        role = event.role
        if not role:
            return
        key = event.key
        arm = self._arms.get((key.name, key.version, role))
        if arm is None:
            arm = self._new_arm(key.name, key.version, role)
        arm.record(event.outcome, event.duration_ns)

    def _new_arm(self, name: str, version: str, role: str) -> ArmEvidence:
        model = self._models.setdefault(name, RolloutEvidence())
        arm = model.arms.setdefault(ArmKey(int(version), role), ArmEvidence())
        self._arms[(name, version, role)] = arm
        return arm

    def evidence(self, name: str) -> RolloutEvidence:
        """A copy of the model's evidence in this process, the shadow's comparisons included."""
        evidence = RolloutEvidence()
        held = self._models.get(name)
        if held is not None:
            evidence.merge(held)
        if self.comparisons is not None:
            evidence.merge(RolloutEvidence(comparisons=dict(self.comparisons(name))))
        return evidence

    def evidence_json(self, name: str) -> bytes:
        return orjson.dumps(self.evidence(name).to_json())
