"""What the payload log is asked to do, from the flags: checked by `serve run` before anything starts (this module
imports no metrics library: the supervisor must import prometheus_client only once its multiprocess directory is
set)."""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from typing import Final, Literal

from serve.payload_log.http_sink import SinkMode
from serve.payload_log.redaction import RedactionPolicy, load_key, parse_redact_flag
from serve.settings import ServerSettings

Mode = Literal["requests", "responses", "all"]

# Credentials: never in a payload log, whatever the allowlist says (issue 22: "authorization never logged").
NEVER_LOGGED_HEADERS: Final[frozenset[str]] = frozenset({"authorization", "cookie", "proxy-authorization", "x-api-key"})
# RFC 9110's token characters, lower-cased: what an HTTP field name or a gRPC metadata key may be.
_HEADER_NAME = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")


@dataclass(frozen=True, slots=True)
class PayloadLogOptions:
    mode: Mode
    sample: float
    redaction: RedactionPolicy
    namespace: str
    max_tensor_bytes: int
    replica: str
    headers: tuple[str, ...] = ()  # lower-case names logged in the request event's "metadata" extension
    data_classification: str | None = None
    http_mode: SinkMode = "structured"


def payload_log_options(settings: ServerSettings) -> PayloadLogOptions:
    """The options the flags give; ValueError naming the flag that is wrong (serve run checks this at start)."""
    rules = dict(parse_redact_flag(raw) for raw in settings.payload_log_redact)
    if "hash" in rules.values() and settings.payload_log_hash_key_file is None:
        raise ValueError("--payload-log-redact INPUT=hash needs --payload-log-hash-key-file (the HMAC key)")
    key = load_key(settings.payload_log_hash_key_file) if settings.payload_log_hash_key_file is not None else None
    return PayloadLogOptions(
        mode=settings.payload_log_mode,
        sample=settings.payload_log_sample,
        redaction=RedactionPolicy(rules, key),
        namespace=settings.payload_log_namespace or os.environ.get("POD_NAMESPACE", ""),
        max_tensor_bytes=settings.payload_log_max_tensor_bytes,
        replica=socket.gethostname(),
        headers=header_allowlist(settings.payload_log_headers),
        data_classification=settings.payload_log_data_classification,
        http_mode=settings.payload_log_http_mode,
    )


def header_allowlist(values: list[str]) -> tuple[str, ...]:
    """``--payload-log-headers`` values (each ``NAME,...``) as lower-case names, in order, each once."""
    names: dict[str, None] = {}
    for value in values:
        for raw in value.split(","):
            name = raw.strip().lower()
            if not name:
                continue  # "a,,b" or a trailing comma: nothing was named
            if name in NEVER_LOGGED_HEADERS:
                raise ValueError(
                    f"--payload-log-headers {raw.strip()!r}: credentials are never logged "
                    f"({', '.join(sorted(NEVER_LOGGED_HEADERS))}); remove it from the list"
                )
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(
                    f"--payload-log-headers {raw.strip()!r} is not a header name (letters, digits and -_.!#$%&'*+^`|~)"
                )
            names[name] = None
    return tuple(names)
