"""The statistics document's JSON types (the layout is in schema.py): one server's, and a merge of several.

TypedDicts, not classes: these are the wire format, written with orjson and read back by the
monitor, the supervisor and servers of other releases, so their keys and key order are the contract.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

from serve.input_stats.block_json import Block


class ModelRef(TypedDict):
    name: str
    version: str


class InstanceJson(TypedDict):
    id: str
    replica: str
    start_time: float


class SamplingJson(TypedDict):
    sample_rate: float
    max_rows_per_batch: int | None


class BaselineModel(TypedDict, total=False):
    """What a baseline.json says it was computed for (each may be absent in a hand-written one)."""

    name: str
    version: str
    onnx_sha256: str


class BaselineRef(TypedDict):
    sha256: str | None
    format_version: int
    model: BaselineModel


class FeatureIdentity(TypedDict):
    """Which feature a document's entry is about; the statistics document and baseline.json both start so."""

    name: str
    role: str
    tensor: str
    column: int | None
    view: str | None
    kind: str


class FeatureMeta(FeatureIdentity, total=False):
    edges: list[float] | None  # numeric
    sketch: str | None  # numeric: "kll" when it has no edges and a sketch
    vocabulary: list[Any]  # categorical


class Counters(TypedDict):
    batches_submitted: int
    rows_submitted: int
    batches_dropped: int
    rows_dropped: int
    batches_recorded: int
    rows_recorded: int
    rows_sampled_out: int
    tensors_skipped: int
    errors: int
    queue_depth: NotRequired[int]  # one server's; a merge leaves them out
    queue_size: NotRequired[int]


class TotalJson(TypedDict):
    start: float
    end: float
    seq: int
    batches: int
    rows: int
    rows_sampled_out: int
    batches_dropped: int
    rows_dropped: int
    features: dict[str, Block]


class WindowJson(TotalJson):
    closed: bool


class StatsDocument(TypedDict):
    """One model version on one server process (``GET …/input-stats``)."""

    format: str
    format_version: int
    model: ModelRef
    instance: InstanceJson
    generated_at: float
    seq: int
    since: int
    since_reset: bool
    window_s: float
    horizon_s: float
    sampling: SamplingJson
    baseline: BaselineRef | None
    features: list[FeatureMeta]
    counters: Counters
    total: TotalJson
    windows: list[WindowJson]


class MergedWindow(TypedDict):
    batches: int
    rows: int
    rows_sampled_out: int
    batches_dropped: int
    rows_dropped: int
    features: dict[str, Block]
    instances: list[str]  # the instance ids that contributed
    closed: bool  # every contributor's copy is closed
    start: float
    end: float


class MergedTotal(TypedDict):
    batches: int
    rows: int
    rows_sampled_out: int
    batches_dropped: int
    rows_dropped: int
    features: dict[str, Block]
    start: float
    end: float


class InstanceSeen(TypedDict):
    id: str
    replica: str
    start_time: float
    seq: int
    generated_at: float


class Restart(TypedDict):
    replica: str
    instances: list[str]
    start_times: list[float]


class MergedDocument(TypedDict):
    """Documents of any replicas and polls merged into one (``schema.merge``)."""

    format: str
    format_version: int
    merged: bool
    model: ModelRef
    instances: list[InstanceSeen]
    restarts: list[Restart]
    generated_at: float
    window_s: float
    horizon_s: float
    baseline: BaselineRef | None
    features: list[FeatureMeta]
    counters: Counters
    total: MergedTotal
    windows: list[MergedWindow]
