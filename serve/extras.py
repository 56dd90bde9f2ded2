"""The optional dependency groups (``pyproject.toml`` extras) and the error a command gives when its group is
missing, so that the serving install (and image) can leave out what only the drift tools use."""

from __future__ import annotations

import importlib.util

# extra -> the modules it brings (one per distribution); keep in step with [project.optional-dependencies].
EXTRAS: dict[str, tuple[str, ...]] = {
    "baseline": ("pyarrow", "tqdm"),
    "monitor": ("matplotlib",),
    "grpc-native": ("pygrpc_native",),
    "tracing": (
        "opentelemetry.sdk",
        "opentelemetry.exporter.otlp.proto.http",
        "opentelemetry.exporter.otlp.proto.grpc",
    ),
}


class MissingExtraError(Exception):
    def __init__(self, extra: str, missing: list[str]) -> None:
        self.extra = extra
        self.missing = missing
        super().__init__(
            f"this needs the optional dependencies 'serve[{extra}]' ({', '.join(missing)} not installed); "
            f"install them with: pip install 'serve[{extra}]'"
        )


def missing_modules(extra: str) -> list[str]:
    # find_spec only locates the module; importing pyarrow or matplotlib here would cost a second for nothing.
    return [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]


def require_extra(extra: str) -> None:
    missing = missing_modules(extra)
    if missing:
        raise MissingExtraError(extra, missing)
