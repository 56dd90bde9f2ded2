"""The training data as one stream of chunks: several ``--data`` sources combined, cast as clients send them.

The labels (``--labels``) travel in the same chunks under ``sources.LABEL``, so they stay with their rows."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np

from serve.baseline.model import BaselineInputError
from serve.baseline.sources import Chunk, DataSource
from serve.input_stats.baseline import as_sent
from serve.types import TensorSpec


def _rechunk(chunks: Iterable[Chunk], rows: int) -> Iterator[Chunk]:
    """Chunks of exactly ``rows`` rows (the last may be shorter), whatever the source's own chunking."""
    pending: list[Chunk] = []
    held = 0
    for chunk in chunks:
        pending.append(chunk)
        held += rows_of(chunk)
        while held >= rows:
            joined = {k: np.concatenate([c[k] for c in pending]) for k in pending[0]}
            yield {k: v[:rows] for k, v in joined.items()}
            rest = {k: v[rows:] for k, v in joined.items()}
            held -= rows
            pending = [rest] if held else []
    if held:
        yield {k: np.concatenate([c[k] for c in pending]) for k in pending[0]}


def rows_of(chunk: Mapping[str, np.ndarray]) -> int:
    return int(next(iter(chunk.values())).shape[0]) if chunk else 0


def combined_chunks(sources: Sequence[DataSource], chunk_rows: int) -> Iterator[Chunk]:
    """Sources with the same inputs are shards (read one after another); sources with
    different inputs are columns of the same rows (read side by side, row counts must agree)."""
    groups: dict[tuple[str, ...], list[DataSource]] = {}
    for source in sources:
        groups.setdefault(tuple(sorted(source.tensors)), []).append(source)
    keys = list(groups)
    seen: set[str] = set()
    for key in keys:
        if seen & set(key):
            raise BaselineInputError(
                f"input(s) {sorted(seen & set(key))} appear in --data files with different sets of inputs; "
                "give each input's data once (shards must hold the same inputs)"
            )
        seen |= set(key)

    def stream(group: list[DataSource]) -> Iterator[Chunk]:
        for source in group:
            yield from source.chunks(chunk_rows)

    streams = [_rechunk(stream(groups[k]), chunk_rows) for k in keys]
    while True:
        parts = [next(s, None) for s in streams]
        if all(p is None for p in parts):
            return
        if any(p is None for p in parts) or len({rows_of(p) for p in parts if p is not None}) > 1:
            raise BaselineInputError("--data files that hold different inputs have different numbers of rows")
        out: Chunk = {}
        for p in parts:
            assert p is not None
            out.update(p)
        yield out


def check_labels(sources: Sequence[DataSource], column: str) -> None:
    """The label column must come with the rows exactly once: in every shard of one group of sources."""
    holders = [s for s in sources if s.label_column == column]
    if not holders:
        files = ", ".join(s.describe() for s in sources)
        raise BaselineInputError(f"--labels {column}: no such column (or .npz array) in the data ({files})")
    groups = {tuple(sorted(s.tensors)) for s in holders}
    group = [s for s in sources if tuple(sorted(s.tensors)) in groups]
    if len(groups) > 1 or len(group) != len(holders):
        raise BaselineInputError(
            f"--labels {column}: give the column in one file of the same rows, and in every shard of it "
            f"(found in {[s.describe() for s in holders]} of {[s.describe() for s in group]})"
        )


def served_chunks(sources: Sequence[DataSource], specs: Sequence[TensorSpec], chunk_rows: int) -> Iterator[Chunk]:
    """``combined_chunks`` as clients will send them: each input cast to its datatype (``as_sent``), so that
    every pass sees the values the server will bin (CSV and Parquet are read as float64)."""
    datatypes = {s.name: s.datatype for s in specs}
    for chunk in combined_chunks(sources, chunk_rows):
        # The labels (LABEL) are no input: they pass as read.
        yield {name: as_sent(array, datatypes[name]) if name in datatypes else array for name, array in chunk.items()}
