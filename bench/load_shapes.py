"""Traffic plans for locust: a staircase (step test) and ramp-hold-spike-recover (spike test).

Users are closed-loop: each sends a request, waits for the answer, then ``--think-time`` seconds. So the
offered rate of one user is about 1 / (latency + think time), and a plan in users is a plan in rate.

This module is plain Python (importing locust monkey-patches the whole process with gevent); the
locustfile wraps a plan in a ``LoadTestShape``, chosen with ``--shape step|spike``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

SHAPES = ("none", "step", "spike")


@dataclass(frozen=True)
class Stage:
    name: str
    duration_s: float
    users: int
    spawn_rate: float  # users started (or stopped) per second on the way to ``users``


@dataclass(frozen=True)
class LoadPlan:
    stages: Sequence[Stage]

    def stage_at(self, elapsed_s: float) -> Stage | None:
        end = 0.0
        for stage in self.stages:
            end += stage.duration_s
            if elapsed_s < end:
                return stage
        return None

    def tick(self, elapsed_s: float) -> tuple[int, float] | None:
        """What ``LoadTestShape.tick`` returns: (users, spawn rate), or None once the plan is over."""
        stage = self.stage_at(elapsed_s)
        return None if stage is None else (stage.users, stage.spawn_rate)

    @property
    def total_s(self) -> float:
        return sum(s.duration_s for s in self.stages)

    def describe(self) -> str:
        return ", ".join(f"{s.name}: {s.users} users for {s.duration_s:g}s" for s in self.stages)


def step_plan(users: int = 10, steps: int = 5, step_time_s: float = 30.0) -> LoadPlan:
    """``steps`` equal steps up to ``users``, each held ``step_time_s``: where does latency bend?"""
    if users < 1 or steps < 1 or step_time_s <= 0:
        raise ValueError("a step test needs users >= 1, steps >= 1 and a positive step time")
    steps = min(steps, users)
    # Each step's users start within about a second, so that the hold measures the step, not the ramp.
    rate = max(1.0, users / steps)
    return LoadPlan([Stage(f"step {i}", step_time_s, round(users * i / steps), rate) for i in range(1, steps + 1)])


def spike_plan(
    users: int = 10, spike_users: int | None = None, step_time_s: float = 30.0, spike_time_s: float = 0.0
) -> LoadPlan:
    """Ramp to ``users``, hold, jump to ``spike_users`` (default 3x), back to ``users``: does it recover?"""
    spike = spike_users if spike_users is not None else users * 3
    if users < 1 or spike < users or step_time_s <= 0 or spike_time_s < 0:
        raise ValueError("a spike test needs users >= 1, spike users >= users and positive times")
    ramp_rate = max(1.0, users / step_time_s)
    # The spike arrives all at once (a tenth of a second): that is what makes it a spike.
    spike_rate = max(1.0, float(spike - users) * 10)
    # Equal rates where the user count stays put: a changed tick makes locust dispatch users again.
    return LoadPlan([
        Stage("ramp", step_time_s, users, ramp_rate),
        Stage("hold", step_time_s, users, ramp_rate),
        Stage("spike", spike_time_s or step_time_s / 2, spike, spike_rate),
        Stage("recover", step_time_s, users, spike_rate),
    ])  # fmt: skip


def make_plan(
    kind: str,
    users: int = 10,
    steps: int = 5,
    step_time_s: float = 30.0,
    spike_users: int | None = None,
    spike_time_s: float = 0.0,
) -> LoadPlan | None:
    """The plan for ``--shape``: None for ``none`` (locust's own -u/-r/-t apply)."""
    if kind == "none":
        return None
    if kind == "step":
        return step_plan(users, steps, step_time_s)
    if kind == "spike":
        return spike_plan(users, spike_users, step_time_s, spike_time_s)
    raise ValueError(f"unknown shape '{kind}'; expected one of {', '.join(SHAPES)}")
