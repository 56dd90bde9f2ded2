"""Whether the server is ready, and why not: the one answer HTTP ``/v2/health/ready``, gRPC
``ServerReady`` and the gRPC health service all give (InferenceService.readiness).

Ready means: not shutting down, and every model serves some version (Triton's strict readiness).
``ReadinessSignal`` wakes whoever follows the answer (the health service's Watch streams) whenever it
may have changed: a version's state, the end of a load, the start of shutting down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from serve.repository.repository import LoadOutcome, ModelVersion, VersionListener

SHUTTING_DOWN = "the server is shutting down and takes no new requests"


@dataclass(frozen=True, slots=True)
class NotServing:
    """A model that serves no version, one row per version (or one for the model, version "")."""

    name: str
    version: str
    state: str
    reason: str


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    error: str = ""  # why not, for people: names each model that is not ready and its reason
    models: tuple[NotServing, ...] = ()

    @classmethod
    def of(cls, shutting_down: bool, not_serving: list[dict[str, str]]) -> Readiness:
        models = tuple(NotServing(r["name"], r["version"], r["state"], r["reason"]) for r in not_serving)
        if shutting_down:
            return cls(False, SHUTTING_DOWN, models)
        if not models:
            return cls(True)
        return cls(False, "; ".join(_why(name, models) for name in dict.fromkeys(m.name for m in models)), models)

    def as_json(self) -> dict[str, object]:
        return {
            "ready": self.ready,
            "error": self.error,
            "models": [
                {"name": m.name, "version": m.version, "state": m.state, "reason": m.reason} for m in self.models
            ],
        }


def _why(name: str, models: tuple[NotServing, ...]) -> str:
    parts = [
        (f"version {m.version} is {m.state}" if m.version else m.state) + (f": {m.reason}" if m.reason else "")
        for m in models
        if m.name == name
    ]
    return f"model '{name}' is not ready ({'; '.join(parts)})"


class ReadinessSignal(VersionListener):
    """Wakes every subscriber when readiness may have changed; they read it again themselves."""

    def __init__(self) -> None:
        self._waiters: set[asyncio.Event] = set()

    def changed(self, version: ModelVersion) -> None:
        self.notify()

    def load_finished(self, outcome: LoadOutcome) -> None:
        self.notify()  # a model whose config failed changes no version's state

    def notify(self) -> None:
        for waiter in self._waiters:
            waiter.set()

    @contextmanager
    def subscribe(self) -> Iterator[asyncio.Event]:
        """An event set at every possible change; the subscriber clears it before reading again."""
        waiter = asyncio.Event()
        self._waiters.add(waiter)
        try:
            yield waiter
        finally:
            self._waiters.discard(waiter)
