"""A bounded record of the request ids a join store dropped, to answer "expired" rather than "unknown".

Ids are kept as 64-bit digests: Python's ``hash`` of the id, which a ``str`` caches, so recording costs nothing
more. It is salted per process (PYTHONHASHSEED), which is right for a record that never leaves the process; two
ids share a digest with probability ~ capacity / 2**64 per lookup. The digests sit in a ring (oldest forgotten
first) and, for lookups, in a sorted snapshot plus the unsorted digests added since; the snapshot is rebuilt
once those pass an eighth of the capacity, so a forgotten id may still answer "expired" until then. 16 bytes
per id of capacity at most.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_INITIAL_CAPACITY = 1024


def digests(ids: Sequence[str]) -> np.ndarray:
    return np.fromiter(map(hash, ids), dtype=np.int64, count=len(ids))


class DroppedIds:
    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self._ring = np.zeros(min(self.capacity, _INITIAL_CAPACITY), np.int64)
        self._added = 0  # ever; the ring holds the last min(added, capacity)
        self._sorted = np.zeros(0, np.int64)
        self._sorted_at = 0  # _added when the snapshot was taken

    def __len__(self) -> int:
        return min(self._added, self.capacity)

    def add(self, new: np.ndarray) -> None:
        new = new[-self.capacity :]
        self._grow(len(self) + len(new))
        positions = (self._added + np.arange(len(new))) % len(self._ring)
        self._ring[positions] = new
        self._added += len(new)

    def contains(self, queries: np.ndarray) -> np.ndarray:
        since = self._added - self._sorted_at
        if since > min(self.capacity, max(_INITIAL_CAPACITY, self.capacity // 8)):
            self._sorted = np.sort(self._held())
            self._sorted_at, since = self._added, 0
        found = np.zeros(len(queries), bool)
        if len(self._sorted):
            at = np.minimum(np.searchsorted(self._sorted, queries), len(self._sorted) - 1)
            found = self._sorted[at] == queries
        if since:
            found |= np.isin(queries, self._held()[-since:])
        return found

    def memory_bytes(self) -> int:
        return self._ring.nbytes + self._sorted.nbytes + 200

    def _held(self) -> np.ndarray:
        """The digests held, oldest first."""
        n = len(self)
        return self._ring[(self._added - n + np.arange(n)) % len(self._ring)]

    def _grow(self, needed: int) -> None:
        size = len(self._ring)
        if needed <= size or size == self.capacity:
            return
        held = self._held()
        while size < needed:
            size *= 2
        self._ring = np.zeros(min(size, self.capacity), np.int64)
        self._ring[(self._added - len(held) + np.arange(len(held))) % len(self._ring)] = held
