"""Every model's rollout plan in this process, and the changes to it.

The plan's source of truth is ``<model>/rollout.yaml``: a change (the admin API, the analyser) writes
the file and then asks every worker, through the Cluster, to re-read it; poll mode re-reads it on every
replica. The core reads ``routing(name)`` on every request: one dict lookup, None for a model without
a rollout.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import replace
from typing import Protocol

from serve.errors import InvalidInput, ModelNotFound, ModelNotReady, ServeError
from serve.repository.repository import READY, LoadOutcome, ModelRepository, VersionListener
from serve.rollout.documents import EvaluationDocument, StatusDocument
from serve.rollout.plan_file import plan_document, read_plan, routing_document, utc_now, write_plan
from serve.rollout.spec import RolloutPlan, RolloutSpec, Routing
from serve.types import JsonObject

log = logging.getLogger(__name__)

EvidenceSource = Callable[[str], bytes]  # a model's rollout evidence in this process, as JSON


class RolloutChanges(Protocol):
    """Who makes every worker re-read a changed rollout.yaml (serve/core/cluster.py's Cluster)."""

    async def rollout_changed(self, name: str) -> None: ...


class RolloutStatusExtras(Protocol):
    """What the analyser (serve/rollout, work package C) adds to the status document."""

    def evaluation(self, name: str) -> EvaluationDocument | None: ...

    def evidence(self, name: str) -> JsonObject: ...


class Rollouts(VersionListener):
    """The plans of this process; a VersionListener so that a model's (re)load reads its rollout.yaml."""

    def __init__(self, *, clock: Callable[[], str] = utc_now) -> None:
        self._clock = clock
        self._plans: dict[str, RolloutPlan] = {}
        self._routings: dict[str, Routing] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._warned: set[tuple[str, int]] = set()
        self._repository: ModelRepository | None = None
        self._changes: RolloutChanges | None = None
        self.extras: RolloutStatusExtras | None = None
        self.evidence_source: EvidenceSource | None = None

    def bind(self, repository: ModelRepository, changes: RolloutChanges) -> None:
        """Where the models are, and who applies a change on every worker (InferenceService calls this)."""
        self._repository = repository
        self._changes = changes

    @property
    def repository(self) -> ModelRepository:
        assert self._repository is not None, "Rollouts.bind() has not been called"
        return self._repository

    # ---- reading: the hot path and the status ------------------------------------------------------
    @property
    def routings(self) -> Mapping[str, Routing]:
        """The routing of every model with a rollout: the core keeps this (live) mapping and looks a
        request's model up in it, one dict lookup on the hot path."""
        return self._routings

    def routing(self, name: str) -> Routing | None:
        return self._routings.get(name)

    def plan(self, name: str) -> RolloutPlan | None:
        return self._plans.get(name)

    def names(self) -> list[str]:
        return sorted(self._plans)

    def status(self, name: str) -> StatusDocument:
        """The status document of ``name`` (ModelNotFound for a model that is not served)."""
        self.repository.get(name)
        plan = self._plans.get(name)
        extras = self.extras
        return {
            "model": name,
            "plan": plan_document(plan) if plan is not None else None,
            "routing": routing_document(plan.routing()) if plan is not None else None,
            "evaluation": extras.evaluation(name) if extras is not None and plan is not None else None,
            "evidence": extras.evidence(name) if extras is not None and plan is not None else {},
        }

    def local_evidence(self, name: str) -> bytes:
        return self.evidence_source(name) if self.evidence_source is not None else b"{}"

    def not_served(self, name: str, version: int) -> None:
        """A plan names ``version`` but it does not serve: the primary answers; said once per version."""
        if (name, version) not in self._warned:
            self._warned.add((name, version))
            log.warning(
                "model %s: its rollout names version %d, which is not loaded and ready; the primary answers "
                "in its place (keep the version loaded with version_policy in config.pbtxt)",
                name,
                version,
            )

    # ---- following the file ------------------------------------------------------------------------
    def reload(self, name: str) -> bool:
        """Re-read ``<model>/rollout.yaml``; True if the plan in force changed. A file that is not valid
        is logged and the plan in force stays; a removed file ends the rollout."""
        try:
            plan = read_plan(self.repository.model_dir(name))
        except ModelNotFound:
            plan = None
        except ServeError as exc:
            log.error("model %s: %s; the rollout in force stays", name, exc.message)
            return False
        return self._put(name, plan)

    def _put(self, name: str, plan: RolloutPlan | None) -> bool:
        current = self._plans.get(name)
        if plan == current:
            return False
        if plan is None:
            del self._plans[name]
            self._routings.pop(name, None)
            log.info("model %s: rollout ended (its rollout.yaml is gone); the default version answers", name)
            return True
        self._plans[name] = plan
        self._routings[name] = plan.routing()
        self._warned = {w for w in self._warned if w[0] != name}
        log.info(
            "model %s: rollout revision %d, phase %s, routing %s (%s)",
            name,
            plan.revision,
            plan.phase,
            routing_document(plan.routing()),
            plan.reason or plan.actor,
        )
        return True

    def load_finished(self, outcome: LoadOutcome) -> None:
        if outcome.after:
            self.reload(outcome.name)
        else:
            self._put(outcome.name, None)

    # ---- changing ----------------------------------------------------------------------------------
    async def set(self, name: str, spec: RolloutSpec, actor: str) -> RolloutPlan:
        async with self._changing(name):
            current = self._current(name)
            self._check_served(name, spec)
            revision = current.revision + 1 if current is not None else 1
            plan = RolloutPlan(spec, reason=f"set by {actor}", actor=actor, revision=revision)
            return await self._apply_locked(name, plan)

    async def promote(self, name: str, version: int | None, actor: str) -> RolloutPlan:
        async with self._changing(name):
            current = self._require(name)
            if version is None:
                candidates = current.spec.candidates
                if len(candidates) != 1:
                    raise InvalidInput(
                        f"model '{name}' has {len(candidates)} candidates: say which version to promote "
                        '(the body {"version": V}, or --version V)'
                    )
                version = candidates[0].version
            if version not in current.spec.versions():
                raise InvalidInput(
                    f"version {version} is not in the rollout of model '{name}' (it names "
                    f"{', '.join(map(str, current.spec.versions()))}); promote one of those, or set a new rollout"
                )
            spec = RolloutSpec(version, key=current.spec.key, gates=current.spec.gates)
            self._check_served(name, spec)
            plan = current.changed(spec=spec, step=0, phase="promoted", reason=f"promoted by {actor}", actor=actor)
            return await self._apply_locked(name, plan)

    async def abort(self, name: str, actor: str) -> RolloutPlan:
        async with self._changing(name):
            current = self._require(name)
            plan = current.changed(phase="aborted", reason=f"aborted by {actor}", actor=actor)
            return await self._apply_locked(name, plan)

    async def apply(self, name: str, plan: RolloutPlan, actor: str) -> RolloutPlan:
        """Persist ``plan`` and apply it on every worker (the analyser's decisions come this way). A plan
        made from one that has since been replaced (its revision is not above the file's: an API call or
        another process changed the rollout meanwhile) is not applied; the plan in force is returned."""
        async with self._changing(name):
            current = self._current(name)
            if current is not None and plan.revision <= current.revision:
                log.info(
                    "model %s: %s's change to rollout revision %d was not applied: revision %d is in force",
                    name,
                    actor,
                    plan.revision,
                    current.revision,
                )
                return current
            return await self._apply_locked(name, replace(plan, actor=actor))

    async def _apply_locked(self, name: str, plan: RolloutPlan) -> RolloutPlan:
        plan = replace(plan, updated_at=self._clock())
        directory = self.repository.model_dir(name)
        await asyncio.to_thread(write_plan, directory, plan)
        self._put(name, plan)
        assert self._changes is not None
        await self._changes.rollout_changed(name)
        return plan

    @contextlib.asynccontextmanager
    async def _changing(self, name: str) -> AsyncIterator[None]:
        """One change of ``name``'s rollout at a time: in this process, and across the workers and
        replicas that share its directory (an flock on the directory), so that each change reads the
        revision the last one wrote."""
        self.repository.get(name)  # ModelNotFound / ModelNotReady before anything is locked or written
        async with self._locks.setdefault(name, asyncio.Lock()):
            fd = os.open(self.repository.model_dir(name), os.O_RDONLY)
            try:
                await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # which releases the lock

    def _current(self, name: str) -> RolloutPlan | None:
        """The plan as the file has it now (another worker or replica may have changed it)."""
        self.repository.get(name)  # ModelNotFound / ModelNotReady for a model that does not serve
        self.reload(name)
        return self._plans.get(name)

    def _require(self, name: str) -> RolloutPlan:
        current = self._current(name)
        if current is None:
            raise InvalidInput(
                f"model '{name}' has no rollout: set one first (PUT /v2/models/{name}/rollout or `serve rollout set`)"
            )
        return current

    def _check_served(self, name: str, spec: RolloutSpec) -> None:
        for version in spec.versions():
            try:
                model = self.repository.get(name, str(version))
            except ModelNotFound:
                raise InvalidInput(
                    f"version {version} of model '{name}' is not loaded: a rollout names loaded versions only; "
                    "keep it loaded with version_policy (e.g. version_policy { all {} } in config.pbtxt)"
                ) from None
            if model.state != READY:
                raise ModelNotReady(f"version {version} of model '{name}' is not ready ({model.state.lower()})")
