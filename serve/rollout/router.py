"""Which version answers an unversioned request, and whether the shadow gets a copy of it.

Without a routing key the split is random. With one, a stable hash of the key's value picks the arm,
so that a user lands on the same version on every worker and every replica (Python's ``hash`` is
salted per process; blake2b is not). The shadow decision hashes the value with a salt of its own, so
that being mirrored is independent of the arm that answered.

On the hot path: models without a rollout never get here (the core's one dict lookup says so).
"""

from __future__ import annotations

import random
from hashlib import blake2b

from serve.rollout.spec import Role, Routing

_SCALE = float(1 << 64)
_SHADOW_SALT = b"rollout:shadow"  # blake2b takes up to 16 bytes of salt


def unit_hash(value: str, salt: bytes = b"") -> float:
    """``value`` mapped uniformly onto [0, 1), the same in every process."""
    digest = blake2b(value.encode("utf-8"), digest_size=8, salt=salt[:16]).digest()
    return int.from_bytes(digest, "big") / _SCALE


def pick(routing: Routing, key_value: str | None) -> tuple[int, Role]:
    """(version, role) for an unversioned request; ``key_value`` is the routing key's value, if any."""
    if not routing.candidates:
        return routing.primary, "primary"
    point = (random.random() if key_value is None else unit_hash(key_value)) * 100.0
    # Candidates take [0, p1), [p1, p1 + p2), ...; the primary answers the rest.
    edge = 0.0
    for arm in routing.candidates:
        edge += arm.percent
        if point < edge:
            return arm.version, "candidate"
    return routing.primary, "primary"


def mirrors(routing: Routing, key_value: str | None) -> bool:
    """Whether this request's copy goes to the shadow."""
    shadow = routing.shadow
    if shadow is None:
        return False
    if shadow.percent >= 100.0:
        return True
    point = random.random() if key_value is None else unit_hash(key_value, _SHADOW_SALT)
    return point * 100.0 < shadow.percent
