"""The core's part of every version's life: a batcher and a checked signature per loaded version.

Attached by the repository once a version is loaded and warmed, before it takes traffic;
detached once it takes no more, which drains its queue before the version's sessions close.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from serve.batching.batcher import Batcher
from serve.batching.config import batching_policy
from serve.core.validation import ModelSignature
from serve.errors import ModelNotReady
from serve.events import Observer, VersionKey
from serve.repository.repository import ModelVersion, VersionListener


@dataclass(frozen=True, slots=True)
class ServedVersion:
    model: ModelVersion
    signature: ModelSignature
    batcher: Batcher


class ServedVersions(VersionListener):
    def __init__(self, observer: Observer, *, grace_s: float) -> None:
        self._observer = observer
        self._grace_s = grace_s
        self._served: dict[VersionKey, ServedVersion] = {}

    def attached(self, version: ModelVersion) -> None:
        assert version.runner is not None and version.config is not None
        # A policy the batcher cannot honour raises ModelLoadError here, which fails the load.
        policy = batching_policy(version.config, version.runner.instance_count)
        runner = version.runner
        batcher = Batcher(runner.run, policy, key=version.key, observer=self._observer, execute_now=runner.run_now)
        batcher.start()
        signature = ModelSignature.of(version.name, version.max_batch_size, version.inputs, version.outputs)
        self._served[version.key] = ServedVersion(version, signature, batcher)

    async def detached(self, version: ModelVersion) -> None:
        served = self._served.get(version.key)
        if served is None:
            return
        try:
            await served.batcher.close(self._grace_s)
        finally:
            del self._served[version.key]

    def get(self, version: ModelVersion) -> ServedVersion:
        served = self._served.get(version.key)
        if served is None:  # between the repository's READY and our attach; cannot happen on one loop
            raise ModelNotReady(f"model '{version.name}' version {version.version} is not ready")
        return served

    def __iter__(self) -> Iterator[ServedVersion]:
        return iter(list(self._served.values()))
