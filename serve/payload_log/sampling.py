"""Which requests the payload log keeps: a pure function of the request id.

Deciding by a hash of the id rather than by a random draw makes the decision the same everywhere the id is
seen: a request's request, response and shadow events are all logged or none, whichever worker or process
writes them, with no state shared between them.
"""

from __future__ import annotations

import hashlib
from typing import Final

_SPAN: Final[int] = 1 << 64


def sampled(request_id: str, rate: float) -> bool:
    """Whether the events of ``request_id`` are logged at ``rate`` (0 never, 1 always)."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"payload log sample rate must be within [0, 1], got {rate!r}")
    # Integers, not floats: (2**64 - 1) / 2**64 rounds to 1.0, which would let rate 1 miss the top hash.
    digest = hashlib.blake2b(request_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") < int(rate * _SPAN)
