"""Whether and how the server traces, from ``--trace`` and the standard ``OTEL_*`` variables; checked by `serve run`
before anything starts. Imports no OpenTelemetry package: with tracing off, none is ever loaded."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from serve.extras import missing_modules
from serve.tracing.sampling import SamplerSpec

Exporter = Literal["otlp", "console"]
Protocol = Literal["http/protobuf", "grpc"]

_EXPORTERS: Final = ("otlp", "console", "none")
_PROTOCOLS: Final = ("http/protobuf", "grpc")


@dataclass(frozen=True, slots=True)
class TracingOptions:
    exporters: tuple[Exporter, ...]  # empty: spans are made (their ids reach the logs) but not exported
    protocol: Protocol
    sampler: SamplerSpec
    # OTEL_SEMCONV_STABILITY_OPT_IN=rpc/dup: the RPC attributes of semantic conventions <= 1.37 as well.
    old_rpc_attributes: bool


def tracing_options(trace_flag: bool, env: Mapping[str, str]) -> TracingOptions | None:
    """None when tracing is off (no --trace, and OTEL_TRACES_EXPORTER unset or "none"); ValueError naming the
    variable that is wrong, or the extra to install."""
    named = [part.strip().lower() for part in env.get("OTEL_TRACES_EXPORTER", "").split(",") if part.strip()]
    for name in named:
        if name not in _EXPORTERS:
            raise ValueError(
                f"OTEL_TRACES_EXPORTER={name!r} is not an exporter this server has: use otlp, console or none"
            )
    if not trace_flag and (not named or named == ["none"]):
        return None
    exporters: tuple[Exporter, ...] = tuple(
        "otlp" if name == "otlp" else "console" for name in (named or ["otlp"]) if name != "none"
    )
    protocol_text = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
    ).strip()
    if protocol_text not in _PROTOCOLS:
        raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol_text!r} is not supported: use http/protobuf or grpc")
    protocol: Protocol = "grpc" if protocol_text == "grpc" else "http/protobuf"
    missing = missing_modules("tracing")
    if missing:
        raise ValueError(
            f"tracing needs the optional dependencies 'serve[tracing]' ({', '.join(missing)} not installed): "
            "pip install 'serve[tracing]'"
        )
    opt_in = {part.strip() for part in env.get("OTEL_SEMCONV_STABILITY_OPT_IN", "").split(",")}
    return TracingOptions(exporters, protocol, SamplerSpec.from_env(env), "rpc/dup" in opt_in)
