"""What the core asks of the other worker processes when it is one of several behind one port.

With ``--workers N`` everything a client reads must describe the whole server, and model control
must reach every worker: the supervisor (serve/workers) answers these by asking every worker.
Without workers there is no Cluster and the core answers from this process alone.
"""

from __future__ import annotations

from typing import Any, Protocol

from serve.protocol import model_config_pb2 as mc


class Cluster(Protocol):
    async def model_statistics(self, name: str, version: str) -> list[dict[str, Any]]:
        """Triton's statistics of the model (or every model), summed over the workers."""
        ...

    async def load_model(
        self, name: str, config: mc.ModelConfig | None, files: dict[str, bytes] | None, actor: str
    ) -> None:
        """Load on every worker; answered once all have, or fails naming which worker failed and why."""
        ...

    async def unload_model(self, name: str, actor: str) -> None:
        """Unload on every worker."""
        ...

    async def input_stats(self, name: str, version: str, since: int) -> bytes:
        """The model version's statistics document, merged over the workers."""
        ...
