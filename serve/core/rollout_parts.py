"""What rollouts add to a server, built in one place for the composition root: the evidence each
arm leaves (an observer), the shadow's mirror (built on the core's observers, so that its copies are
observed as role "shadow"), and the driver that judges the evidence and changes the plans."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from serve.core.service import InferenceService
from serve.core.shadow import ShadowMirror
from serve.events import Observer
from serve.metrics.rollout_gauges import RolloutGauges
from serve.rollout.driver import RolloutDriver
from serve.rollout.evidence import EvidenceRecorder


class RolloutParts:
    def __init__(self, registry: CollectorRegistry, *, shadow_max_in_flight: int) -> None:
        self.evidence = EvidenceRecorder()  # one of the server's observers
        self.mirror: ShadowMirror | None = None
        self.driver: RolloutDriver | None = None
        self._registry = registry
        self._shadow_max_in_flight = shadow_max_in_flight

    def mirror_of(self, observer: Observer) -> ShadowMirror:
        """InferenceService.create's ``mirror_of``: the mirror, on the core's own observers."""
        self.mirror = ShadowMirror(observer, max_in_flight=self._shadow_max_in_flight, registry=self._registry)
        self.evidence.comparisons = self.mirror.comparisons
        return self.mirror

    def attach(self, service: InferenceService, gauges: RolloutGauges, *, decides: bool) -> None:
        """The driver, on the plans and the evidence merged over the workers. Every process evaluates,
        so that any worker's status answer shows the evaluation; only a deciding one changes plans."""
        service.rollouts.evidence_source = self.evidence.evidence_json
        self.driver = RolloutDriver(
            service.rollouts, service.cluster, decides=decides, gauges=gauges, audit=service.audit
        )
        service.rollouts.extras = self.driver

    def start(self) -> None:
        if self.driver is not None:
            self.driver.start()

    async def close(self) -> None:
        """Before the core drains: no decision during shutdown, and copies end as copies."""
        if self.driver is not None:
            await self.driver.close()
        if self.mirror is not None:
            await self.mirror.close()
