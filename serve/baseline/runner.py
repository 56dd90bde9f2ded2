"""The model, run on the held-out sample the way the server runs it (its graph, one CPU session)."""

from __future__ import annotations

import numpy as np

from serve.baseline.chunks import rows_of
from serve.baseline.model import ModelInfo, open_session
from serve.baseline.sources import Chunk
from serve.datatypes import numpy_dtype

RUN_ROWS = 4096


class ModelRunner:
    def __init__(self, info: ModelInfo) -> None:
        self.info = info
        graph = info.graph if info.graph is not None else info.onnx_path.read_bytes()
        self.session = open_session(graph, info.onnx_path)

    def _feeds(self, chunk: Chunk) -> dict[str, np.ndarray]:
        feeds = {}
        for spec in self.info.inputs:
            array = chunk[spec.name]
            if spec.datatype == "BYTES":
                flat = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in array.reshape(-1)]
                text = np.empty(len(flat), dtype=object)
                text[:] = flat
                feeds[spec.name] = text.reshape(array.shape)
            else:
                feeds[spec.name] = np.asarray(array).astype(numpy_dtype(spec.datatype), copy=False)
        return feeds

    def run(self, chunk: Chunk) -> dict[str, np.ndarray]:
        names = [s.name for s in self.info.outputs]
        feeds = self._feeds(chunk)
        rows = rows_of(feeds)
        parts: list[list[np.ndarray]] = []
        # Batching models take any number of rows; others take groups of their own first dimension
        # (a remainder that does not fill one is left out).
        fixed = self.info.max_batch_size == 0 and self.info.first_dim not in (None, -1)
        step = int(self.info.first_dim) if fixed and self.info.first_dim else RUN_ROWS
        stop = rows - rows % step if fixed else rows
        for start in range(0, stop, step):
            parts.append(self.session.run(names, {k: v[start : start + step] for k, v in feeds.items()}))
        return {n: np.concatenate([p[j] for p in parts]) for j, n in enumerate(names)} if parts else {}
