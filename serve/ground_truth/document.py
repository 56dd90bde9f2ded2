"""The performance document (``GET /v2/models/{m}[/versions/{v}]/performance``) and its merge.

One document per model: for every version that keeps predictions, its target, what its join store
holds, and the performance of every window of prediction time still within retention. Windows are
cumulative and change whenever a late label joins, so a reader replaces what it had from a server
with the newest document rather than adding documents up; documents of *different* processes
(workers of one server, replicas) hold different predictions, and merge by summing window by window.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypedDict, cast

import orjson

from serve.ground_truth.performance import WindowPerformance, WindowPerformanceJson
from serve.ground_truth.targets import TargetJson

FORMAT = "serve.performance"
FORMAT_VERSION = 1


class HeldJson(TypedDict):
    """What the join stores hold, summed over the processes merged."""

    rows: int
    predictions: int
    dropped_for_age: int
    dropped_for_space: int
    memory_bytes: int


class VersionPerformanceJson(TypedDict):
    version: str
    target: TargetJson
    held: HeldJson
    windows: list[WindowPerformanceJson]


class PerformanceDocumentJson(TypedDict):
    format: str
    format_version: int
    model: str
    window_s: float
    retention_s: float
    versions: list[VersionPerformanceJson]


def empty_document(model: str, window_s: float, retention_s: float) -> PerformanceDocumentJson:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model,
        "window_s": window_s,
        "retention_s": retention_s,
        "versions": [],
    }


def parse_document(data: bytes) -> PerformanceDocumentJson:
    """A document another process wrote; ValueError when it is not one this code reads."""
    doc = orjson.loads(data)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} document")
    if doc.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{FORMAT} format_version {doc.get('format_version')!r}, this code reads {FORMAT_VERSION}")
    return cast(PerformanceDocumentJson, doc)


def merge_documents(documents: Sequence[PerformanceDocumentJson]) -> PerformanceDocumentJson:
    """Several processes' documents of one model as one: windows with the same start add up."""
    if not documents:
        raise ValueError("nothing to merge")
    first = documents[0]
    merged = empty_document(first["model"], first["window_s"], first["retention_s"])
    by_version: dict[str, list[VersionPerformanceJson]] = {}
    for doc in documents:
        for entry in doc["versions"]:
            by_version.setdefault(entry["version"], []).append(entry)
    for version in sorted(by_version, key=_version_order):
        merged["versions"].append(_merge_version(by_version[version]))
    return merged


def _version_order(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (0, version)


def _merge_version(entries: Sequence[VersionPerformanceJson]) -> VersionPerformanceJson:
    first = entries[0]
    held: HeldJson = {"rows": 0, "predictions": 0, "dropped_for_age": 0, "dropped_for_space": 0, "memory_bytes": 0}
    for entry in entries:
        for field in held:
            held[field] += entry["held"][field]  # type: ignore[literal-required]
    labels = tuple(first["target"]["class_labels"])
    windows = merge_windows((w for entry in entries for w in entry["windows"]), labels)
    return {
        "version": first["version"],
        "target": first["target"],
        "held": held,
        "windows": [w.to_json() for w in windows],
    }


def merge_windows(
    windows: Iterable[WindowPerformanceJson], class_labels: tuple[str, ...] = ()
) -> list[WindowPerformance]:
    """Windows of the same start summed, oldest first (``class_labels`` name the classes in per_class metrics)."""
    by_start: dict[float, WindowPerformance] = {}
    for doc in windows:
        window = WindowPerformance.from_json(doc, class_labels=class_labels)
        held = by_start.get(window.start)
        if held is None:
            by_start[window.start] = window
        else:
            held.merge(window)
    return [by_start[start] for start in sorted(by_start)]


def encode(document: PerformanceDocumentJson) -> bytes:
    return orjson.dumps(document)
