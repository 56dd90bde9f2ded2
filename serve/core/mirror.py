"""How the core hands a shadow its copy of a request (the shadow work package implements it)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np

from serve.core.served_versions import ServedVersion
from serve.events import VersionKey
from serve.tracing.request import TracedRequest


class Mirror(Protocol):
    def offer(
        self,
        shadow: ServedVersion,
        feeds: Mapping[str, np.ndarray],
        primary: VersionKey,
        primary_outputs: Mapping[str, np.ndarray],
        primary_ns: int,
        protocol: str,
        *,
        request_id: str = "",
        trace: TracedRequest | None = None,
    ) -> bool:
        """Run ``feeds`` on ``shadow`` in the background, never awaited by the client, and compare
        its outputs with the primary's; False when the copy was shed (counted). The copy's event carries
        the client request's ``request_id`` and ``trace``'s traceparent, so that it joins the request it copies;
        the shadow's batch span links to ``trace``."""
        ...
