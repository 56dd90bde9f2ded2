"""Whether a request is traced, decided before any OpenTelemetry object exists.

The SDK's own sampler runs inside ``start_span``, which costs ~6 us even for a span it drops, and reading the
``traceparent`` with its propagator ~5 us more: 5 % of a small model's request. So the decision is made here, from
the same ``OTEL_TRACES_SAMPLER`` the SDK reads (same names, same rules), with Triton's per-model trace settings on
top, and the SDK is called only for requests that are traced (its own sampler then always agrees).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from serve.trace_context import Parent
from serve.tracing.settings import TraceSettings

Root = Literal["always_on", "always_off", "ratio"]

_SAMPLERS: Final[dict[str, tuple[Root, bool]]] = {
    "always_on": ("always_on", False),
    "always_off": ("always_off", False),
    "traceidratio": ("ratio", False),
    "parentbased_always_on": ("always_on", True),
    "parentbased_always_off": ("always_off", True),
    "parentbased_traceidratio": ("ratio", True),
}
_RATIO_BOUND: Final = 1 << 64


@dataclass(frozen=True, slots=True)
class SamplerSpec:
    """``OTEL_TRACES_SAMPLER`` and its argument, as the SDK reads them."""

    root: Root
    parent_based: bool
    ratio: float = 1.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SamplerSpec:
        """The sampler the variables name (the SDK's default, parentbased_always_on, when unset); ValueError for a
        sampler this server does not know, naming the ones it does."""
        name = env.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower() or "parentbased_always_on"
        if name not in _SAMPLERS:
            raise ValueError(
                f"OTEL_TRACES_SAMPLER={name!r} is not a sampler this server knows: use one of {', '.join(_SAMPLERS)}"
            )
        root, parent_based = _SAMPLERS[name]
        ratio = 1.0
        if root == "ratio":
            text = env.get("OTEL_TRACES_SAMPLER_ARG", "1.0").strip() or "1.0"
            try:
                ratio = float(text)
            except ValueError:
                raise ValueError(f"OTEL_TRACES_SAMPLER_ARG={text!r} is not a number between 0 and 1") from None
            if not 0.0 <= ratio <= 1.0:
                raise ValueError(f"OTEL_TRACES_SAMPLER_ARG={text!r} is not between 0 and 1")
        return cls(root, parent_based, ratio)

    @property
    def root_ratio(self) -> float:
        """The share of requests without a parent that the sampler traces."""
        return {"always_on": 1.0, "always_off": 0.0, "ratio": self.ratio}[self.root]


class Sampling:
    """The decision for each request: Triton's settings for its model (level, rate, count), then the parent's
    flag under a parent-based sampler, else the sampler's root rule."""

    def __init__(self, spec: SamplerSpec, settings: TraceSettings, *, uniform: random.Random | None = None) -> None:
        self.spec = spec
        self.settings = settings
        self._random = (uniform or random.Random()).random

    def decide(self, model: str, parent: Parent | None) -> bool:
        effective = self.settings.effective(model)
        if not effective.traced:
            return False
        spec = self.spec
        if parent is not None and spec.parent_based:
            sampled = parent.sampled
        elif effective.rate is not None:
            # Triton's trace_rate: every N-th request of the model (per process).
            effective.arrivals += 1
            sampled = effective.rate > 0 and effective.arrivals % effective.rate == 0
        elif spec.root == "always_on":
            sampled = True
        elif spec.root == "always_off":
            sampled = False
        elif parent is not None:
            # TraceIdRatioBased on a trace that started elsewhere: decided by its id, so every service agrees.
            sampled = (parent.trace_id & (_RATIO_BOUND - 1)) < spec.ratio * _RATIO_BOUND
        else:
            sampled = self._random() < spec.ratio
        return sampled and self.settings.take_count(model, effective)
