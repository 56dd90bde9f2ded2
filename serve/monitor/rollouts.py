"""``serve monitor --rollouts``: one decision for several replicas, on the evidence of all of them.

A server decides its rollouts alone (its worker 0, on the evidence of every worker). Several replicas
behind one Service would each judge their own share of the traffic and could decide differently, so
replicas run with ``--rollout-decider monitor``: they still route, mirror and evaluate, but change no
plan. The monitor, which already finds every replica, judges each model with the same driver and
analyser a server uses (serve/rollout/driver.py) on the evidence of every replica summed, and applies
its decision to every replica (``POST /v2/models/{m}/rollout/apply``, admin scope).

- The plan judged is the one with the highest revision among the replicas. A replica found with an
  older revision (it was down during an apply, or is new) is given the newest plan at the next refresh,
  so the replicas disagree for at most one refresh interval.
- A replica's evidence counts from its start. When it restarts, its counts start again from zero; the
  monitor carries what it had counted before, as Prometheus does for a counter reset, so that a step's
  evidence never goes backwards.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol, TypedDict

import orjson
from prometheus_client import CollectorRegistry

from serve.errors import ServeError
from serve.metrics.rollout_gauges import RolloutGauges
from serve.monitor.fetch import http_response
from serve.rollout.analyser import EvaluationJson
from serve.rollout.documents import PlanDocument, StatusDocument
from serve.rollout.driver import DecisionGauges, RolloutDriver
from serve.rollout.evidence import RolloutEvidence, evidence_from_bytes
from serve.rollout.plan_file import plan_document, plan_from_json
from serve.rollout.spec import RolloutPlan
from serve.types import JsonObject

log = logging.getLogger("serve.monitor")

# How often the replicas' plans are read (and a lagging replica given the newest); the driver's own
# ticks decide when each model's evidence is read, every ``gates.interval_s``.
REFRESH_S = 2.0


class Replica(Protocol):
    """A replica the monitor polls (serve/monitor/polling.py ServerStatus)."""

    @property
    def url(self) -> str: ...

    @property
    def up(self) -> bool: ...

    @property
    def tls_name(self) -> str | None: ...


# (url, body or None for GET, tls name) -> the response's bytes; raises OSError / HTTPError.
Fetch = Callable[[str, bytes | None, str | None], bytes]


@dataclass(slots=True)
class _Counts:
    """One replica's evidence for one model: what it said last, and what it counted before it restarted."""

    last: RolloutEvidence = field(default_factory=RolloutEvidence)
    carried: RolloutEvidence = field(default_factory=RolloutEvidence)

    def update(self, now: RolloutEvidence) -> RolloutEvidence:
        if _went_back(now, self.last):
            self.carried.merge(self.last)
        self.last = now
        total = RolloutEvidence()
        total.merge(self.carried)
        total.merge(now)
        return total


def _went_back(now: RolloutEvidence, before: RolloutEvidence) -> bool:
    """Whether any arm counted fewer requests (or any comparison fewer rows) than before: a restart."""
    if any(now.arm(k.version, k.role).requests < arm.requests for k, arm in before.arms.items()):
        return True
    return any(
        key not in now.comparisons or now.comparisons[key].rows < c.rows for key, c in before.comparisons.items()
    )


class ReplicaRollouts:
    """Every replica's plans and evidence as one: the plans and the evidence source the driver judges."""

    def __init__(self, replicas: Callable[[], Iterable[Replica]], models: Callable[[], Iterable[str]], fetch: Fetch):
        self._replicas = replicas
        self._models = models
        self._fetch = fetch
        self._plans: dict[str, RolloutPlan] = {}
        self._revisions: dict[tuple[str, str], int] = {}  # (replica url, model) -> the revision it has
        self._counts: dict[tuple[str, str], _Counts] = {}

    # ---- what the driver reads (serve/rollout/driver.py RolloutPlans, EvidenceSource) ------------------
    def names(self) -> list[str]:
        return sorted(self._plans)

    def plan(self, name: str) -> RolloutPlan | None:
        return self._plans.get(name)

    async def rollout_evidence(self, name: str) -> bytes:
        total = RolloutEvidence()
        for replica in self._up():
            try:
                body = await self._get(replica, f"/v2/models/{_quote(name)}/rollout/evidence")
            except (OSError, ServeError, ValueError) as exc:
                # Judged on the replicas that answered; the driver's bounds widen with fewer samples.
                log.warning("rollouts: %s: no evidence for model %s: %s", replica.url, name, exc)
                continue
            counts = self._counts.setdefault((replica.url, name), _Counts())
            total.merge(counts.update(evidence_from_bytes(body)))
        return orjson.dumps(total.to_json())

    async def apply(self, name: str, plan: RolloutPlan, actor: str) -> RolloutPlan:
        """``plan`` on every replica that is up; one that misses it is given it at the next refresh."""
        self._plans[name] = plan
        await asyncio.gather(*(self._give(replica, name, plan) for replica in self._up()))
        return plan

    # ---- the replicas' plans ---------------------------------------------------------------------------
    async def refresh(self) -> None:
        """Read every replica's plan of every model; judge the newest; bring lagging replicas up to it."""
        replicas = self._up()
        plans: dict[str, RolloutPlan] = {}
        for name in sorted(set(self._models())):
            found = await asyncio.gather(*(self._plan_of(replica, name) for replica in replicas))
            for replica, plan in zip(replicas, found, strict=True):
                if plan is None:
                    continue
                self._revisions[(replica.url, name)] = plan.revision
                if name not in plans or plan.revision > plans[name].revision:
                    plans[name] = plan
        self._plans = plans
        for name, plan in plans.items():
            lagging = [r for r in replicas if self._revisions.get((r.url, name), 0) < plan.revision]
            await asyncio.gather(*(self._give(replica, name, plan) for replica in lagging))

    async def _plan_of(self, replica: Replica, name: str) -> RolloutPlan | None:
        try:
            status: StatusDocument = orjson.loads(await self._get(replica, f"/v2/models/{_quote(name)}/rollout"))
            return None if status["plan"] is None else plan_from_json(status["plan"])
        except (OSError, ServeError, ValueError, KeyError, TypeError) as exc:
            log.warning("rollouts: %s: cannot read the rollout of model %s: %s", replica.url, name, exc)
            return None

    async def _give(self, replica: Replica, name: str, plan: RolloutPlan) -> None:
        body = orjson.dumps(plan_document(plan))
        try:
            await asyncio.to_thread(
                self._fetch, f"{replica.url}/v2/models/{_quote(name)}/rollout/apply", body, replica.tls_name
            )
        except (OSError, ValueError) as exc:
            log.warning("rollouts: %s: revision %d of model %s not applied: %s", replica.url, plan.revision, name, exc)
            return
        self._revisions[(replica.url, name)] = plan.revision

    async def _get(self, replica: Replica, path: str) -> bytes:
        return await asyncio.to_thread(self._fetch, f"{replica.url}{path}", None, replica.tls_name)

    def _up(self) -> list[Replica]:
        return [r for r in self._replicas() if r.up]


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


class RolloutJson(TypedDict):
    """One model in the monitor's ``/api/rollouts``."""

    model: str
    plan: PlanDocument
    evaluation: EvaluationJson | None
    evidence: JsonObject


class MonitorRollouts:
    """The refresh loop and the driver, run beside the monitor's polls; its gauges (the servers'
    ``serve_rollout_*``) join the monitor's /metrics through ``registry``."""

    def __init__(self, replicas: ReplicaRollouts, *, refresh_s: float = REFRESH_S) -> None:
        self.replicas = replicas
        self.registry = CollectorRegistry(auto_describe=True)
        gauges: DecisionGauges = RolloutGauges(self.registry)
        self.driver = RolloutDriver(replicas, replicas, decides=True, gauges=gauges)
        self._refresh_s = refresh_s

    @classmethod
    def polling(
        cls,
        servers: Callable[[], Iterable[Replica]],
        models: Callable[[], Iterable[str]],
        *,
        token: str | None,
        timeout_s: float,
    ) -> MonitorRollouts:
        """On the replicas the monitor polls, with its token (which must have the admin scope)."""

        def fetch(url: str, body: bytes | None, tls_name: str | None) -> bytes:
            return http_response(url, timeout_s, body, token, tls_name)[0]

        return cls(ReplicaRollouts(servers, models, fetch))

    def document(self) -> list[RolloutJson]:
        """Every model's plan as judged, its last evaluation and the evidence it judged."""
        return [
            {
                "model": name,
                "plan": plan_document(plan),
                "evaluation": self.driver.evaluation(name),
                "evidence": self.driver.evidence(name),
            }
            for name in self.replicas.names()
            if (plan := self.replicas.plan(name)) is not None
        ]

    async def run_forever(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.replicas.refresh()
                await self.driver.run_once()
            except Exception:
                log.exception("rollouts: the decision loop failed; it tries again")
            try:
                await asyncio.wait_for(stop.wait(), self._refresh_s)
            except TimeoutError:
                pass
