"""Request id -> sequence number, for up to millions of held predictions, in shards.

One dict of a million ids stops the event loop for 50-170 ms each time it grows or compacts (measured with
bench/join_store.py memory); 64 dicts chosen by the id's hash each hold a 64th, so each resize moves a 64th.
A str caches its hash, so picking the shard costs one lookup of it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

SHARDS = 64  # a power of two: the shard is the hash's low bits


class IdIndex:
    __slots__ = ("_shards",)

    def __init__(self) -> None:
        self._shards: list[dict[str, int]] = [{} for _ in range(SHARDS)]

    def __len__(self) -> int:
        return sum(map(len, self._shards))

    def get(self, request_id: str) -> int | None:
        return self._shards[hash(request_id) & (SHARDS - 1)].get(request_id)

    def set_many(self, pairs: Iterable[tuple[str, int]]) -> None:
        shards = self._shards
        for request_id, seq in pairs:
            shards[hash(request_id) & (SHARDS - 1)][request_id] = seq

    def drop_many(self, pairs: Iterable[tuple[str, int]]) -> None:
        """Forget each id that still maps to the given sequence number (not one a later request took over)."""
        shards = self._shards
        for request_id, seq in pairs:
            shard = shards[hash(request_id) & (SHARDS - 1)]
            if shard.get(request_id) == seq:
                del shard[request_id]

    def memory_bytes(self) -> int:
        """The shards' tables (not the keys, which the store counts, nor the int values)."""
        return sum(sys.getsizeof(shard) for shard in self._shards)
