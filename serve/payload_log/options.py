"""What the payload log is asked to do, from the flags: checked by `serve run` before anything starts (this module
imports no metrics library: the supervisor must import prometheus_client only once its multiprocess directory is
set)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Literal

from serve.payload_log.redaction import RedactionPolicy, load_key, parse_redact_flag
from serve.settings import ServerSettings

Mode = Literal["requests", "responses", "all"]


@dataclass(frozen=True, slots=True)
class PayloadLogOptions:
    mode: Mode
    sample: float
    redaction: RedactionPolicy
    namespace: str
    max_tensor_bytes: int
    replica: str


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
    )
