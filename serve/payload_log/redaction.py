"""Per-input redaction of payload events: drop the tensor, hash its elements, or mask them.

A tensor's values reach the policy already normalised (serve/payload_log/events.py): numbers, or the
strings a BYTES tensor decodes to. So a value is hashed to the same digest whatever wire form carried it,
and two events can still be joined on a hashed value without revealing it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, get_args

import orjson

Redaction = Literal["drop", "hash", "mask"]
REDACTIONS: Final[tuple[Redaction, ...]] = get_args(Redaction)
MASK: Final[str] = "***"

# One element of a normalised tensor: a number, a boolean, the text of a BYTES element, or None where JSON
# has no spelling for the value (NaN and the infinities, as orjson writes them).
Element = int | float | bool | str | None


def load_key(path: str | Path) -> bytes:
    """The HMAC key in ``path``; one trailing newline (as ``echo`` and Kubernetes secrets leave) is not part of it."""
    try:
        key = Path(path).read_bytes()
    except FileNotFoundError:
        raise ValueError(f"payload log redaction key file {str(path)!r} does not exist") from None
    except OSError as e:
        raise ValueError(f"payload log redaction key file {str(path)!r} cannot be read: {e.strerror}") from None
    key = key.removesuffix(b"\n").removesuffix(b"\r")
    if not key:
        raise ValueError(f"payload log redaction key file {str(path)!r} is empty")
    return key


def parse_redact_flag(value: str) -> tuple[str, Redaction]:
    """``INPUT[=drop|hash|mask]`` (one ``--payload-log-redact``) -> (input, redaction); drop by default.

    The split is at the last ``=``, so an input whose name holds ``=`` is written with its redaction
    (``a=b=drop``).
    """
    name, sep, mode = value.rpartition("=")
    if not sep:
        name, mode = value, "drop"
    if not name:
        raise ValueError(f"--payload-log-redact {value!r}: no input name (expected INPUT[=drop|hash|mask])")
    for redaction in REDACTIONS:
        if mode == redaction:
            return name, redaction
    raise ValueError(
        f"--payload-log-redact {value!r}: unknown redaction {mode!r} for input {name!r} (expected drop, hash or mask)"
    )


@dataclass(frozen=True, slots=True)
class RedactionPolicy:
    """Which tensors (by name) are redacted and how; ``key`` is needed only when some rule hashes."""

    rules: Mapping[str, Redaction]
    key: bytes | None = field(default=None, repr=False)  # a secret: kept out of reprs and logs

    def __post_init__(self) -> None:
        for name, redaction in self.rules.items():
            if redaction not in REDACTIONS:
                raise ValueError(f"redaction of {name!r}: unknown {redaction!r} (expected drop, hash or mask)")
        hashed = sorted(name for name, redaction in self.rules.items() if redaction == "hash")
        if hashed and not self.key:
            raise ValueError(f"payload log redaction: hashing {', '.join(hashed)} needs a key (from a key file)")

    def drops(self, name: str) -> bool:
        """Whether tensor ``name`` is left out of events (so callers need not normalise it at all)."""
        return self.rules.get(name) == "drop"

    def apply(self, name: str, datatype: str, data: list[Element]) -> list[Element] | None:
        """The data to log for tensor ``name``; None when the tensor is dropped from the event."""
        redaction = self.rules.get(name)
        if redaction is None:
            return data
        if redaction == "drop":
            return None
        if redaction == "mask":
            masked: list[Element] = [MASK] * len(data)
            return masked
        assert self.key is not None  # checked in __post_init__
        key = self.key
        sha256 = hashlib.sha256
        hashed: list[Element] = [hmac.new(key, _canonical(item, datatype), sha256).hexdigest() for item in data]
        return hashed


def _canonical(item: Element, datatype: str) -> bytes:
    # A BYTES element as its text; a number or boolean as its JSON spelling ("0.1", "3", "true"), the
    # text the event would otherwise carry.
    if datatype == "BYTES" and isinstance(item, str):
        return item.encode("utf-8", "surrogatepass")
    return orjson.dumps(item)
