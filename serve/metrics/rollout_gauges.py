"""The ``serve_rollout_*`` gauges: where each model's rollout stands and what its last evaluation
measured, each gate with its threshold, so that a dashboard and an alert show a decision beside its
reason. The rollout driver (serve/rollout/driver.py) sets them after every evaluation:

- ``serve_rollout_state{model}``: the last evaluation's verdict, 0 inconclusive, 1 healthy, 2 failing;
- ``serve_rollout_phase{model,phase}``: 1 for the plan's phase (running, promoted, rolled_back,
  aborted), 0 for the others;
- ``serve_rollout_weight{model,version,role}``: the percent of unversioned requests the version answers
  (``primary``, ``candidate``) or is mirrored (``shadow``); 0 once it no longer does;
- ``serve_rollout_gate_value{model,gate}`` and ``serve_rollout_gate_threshold{model,gate}``: each gate's
  measured value (NaN while it cannot be measured) and threshold;
- ``serve_rollout_gate_samples{model,gate,arm}``: the samples each arm (``primary``, ``candidate``) gave it.

Only the process that decides (the single process, or worker 0 of ``--workers N``) sets them, so with
workers they merge as ``livemostrecent``: the deciding worker's value, gone when it dies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final, Protocol

from prometheus_client import CollectorRegistry, Gauge

STATES = {"inconclusive": 0, "healthy": 1, "failing": 2}
PHASES = ("running", "promoted", "rolled_back", "aborted")
_MODE: Final = "livemostrecent"


class GateReading(Protocol):
    """One gate of an evaluation (serve/rollout/gates.py GateResult)."""

    @property
    def name(self) -> str: ...
    @property
    def value(self) -> float | None: ...
    @property
    def threshold(self) -> float: ...
    @property
    def samples_primary(self) -> int: ...
    @property
    def samples_candidate(self) -> int: ...


class RolloutGauges:
    def __init__(self, registry: CollectorRegistry) -> None:
        def gauge(name: str, documentation: str, labels: tuple[str, ...]) -> Gauge:
            return Gauge(name, documentation, labels, registry=registry, multiprocess_mode=_MODE)

        self.state = gauge(
            "serve_rollout_state", "Last rollout evaluation: 0 inconclusive, 1 healthy, 2 failing", ("model",)
        )
        self.phase = gauge("serve_rollout_phase", "1 for the rollout's phase, 0 for the others", ("model", "phase"))
        self.weight = gauge(
            "serve_rollout_weight",
            "Percent of unversioned requests a version answers (mirrored, for the shadow)",
            ("model", "version", "role"),
        )
        self.gate_value = gauge(
            "serve_rollout_gate_value", "A rollout gate's measured value (NaN: not measurable yet)", ("model", "gate")
        )
        self.gate_threshold = gauge("serve_rollout_gate_threshold", "A rollout gate's threshold", ("model", "gate"))
        self.gate_samples = gauge(
            "serve_rollout_gate_samples", "Samples per arm behind a rollout gate's value", ("model", "gate", "arm")
        )
        self._weights: dict[str, set[tuple[str, str]]] = {}  # model -> (version, role) set before
        self._gates: dict[str, set[str]] = {}  # model -> gates shown before

    def show_plan(self, model: str, phase: str, weights: Sequence[tuple[str, str, float]]) -> None:
        """The plan's phase and its weights as (version, role, percent); versions no longer weighted read 0."""
        for name in PHASES:
            self.phase.labels(model, name).set(1 if name == phase else 0)
        now = {(version, role) for version, role, _ in weights}
        for version, role in self._weights.get(model, set()) - now:
            self.weight.labels(model, version, role).set(0)
        for version, role, percent in weights:
            self.weight.labels(model, version, role).set(percent)
        self._weights[model] = now

    def show_evaluation(self, model: str, verdict: str, gates: Sequence[GateReading]) -> None:
        self.state.labels(model).set(STATES[verdict])
        for name in self._gates.get(model, set()) - {g.name for g in gates}:
            self.gate_value.labels(model, name).set(math.nan)  # switched off since
        for g in gates:
            self.gate_value.labels(model, g.name).set(math.nan if g.value is None else g.value)
            self.gate_threshold.labels(model, g.name).set(g.threshold)
            self.gate_samples.labels(model, g.name, "primary").set(g.samples_primary)
            self.gate_samples.labels(model, g.name, "candidate").set(g.samples_candidate)
        self._gates[model] = {g.name for g in gates}

    def forget(self, model: str) -> None:
        """The model has no rollout any more: no phase, no weight, no measured value."""
        self.show_plan(model, "", ())
        self.state.labels(model).set(math.nan)
        for name in self._gates.pop(model, set()):
            self.gate_value.labels(model, name).set(math.nan)
