"""One feedback call's labels: parsed from JSON (an array of objects, or JSON lines), checked item by item, and
checked against the model's target before anything joins, so that a bad call is refused whole.

An item is ``{"id": str, "row"?: int, "label": int | str | bool}`` or ``{..., "value": number}``, with an
optional ``"time"`` (unix seconds, or an RFC 3339 string with its offset) when the truth was observed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

import orjson

from serve.errors import InvalidInput
from serve.ground_truth.targets import Target

MAX_ID_LENGTH = 256  # as request ids taken from an x-request-id header (serve/core/request_ids.py)
MAX_LISTED_CLASSES = 20
_KEYS = frozenset(("id", "row", "label", "value", "time"))


@dataclass(frozen=True, slots=True)
class Label:
    request_id: str
    row: int = 0
    label: int | str | None = None  # classification: a class index or a class label (bools arrive as ints)
    value: float | None = None  # regression
    time: float | None = None  # unix seconds when the truth was observed


MAX_LABELS = 100_000  # per feedback call


def check_request_id(value: str, index: int) -> str:
    """``value`` as a label's request id, or InvalidInput naming item ``index`` (gRPC labels come typed)."""
    return _request_id(index, value)


def parse_feedback(body: bytes, *, max_labels: int = MAX_LABELS) -> list[Label]:
    items = _items(body, max_labels)
    if not items:
        raise InvalidInput("feedback has no labels: send a JSON array of {id, row?, label | value, time?} objects")
    if len(items) > max_labels:
        raise InvalidInput(f"feedback has {len(items)} labels; at most {max_labels} per call: split it into calls")
    return [_label(i, item) for i, item in enumerate(items)]


def _items(body: bytes, max_labels: int) -> list[object]:
    text = body.strip()
    if text.startswith(b"["):
        try:
            doc = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"feedback is not valid JSON: {exc}") from None
        if not isinstance(doc, list):
            raise InvalidInput("feedback must be a JSON array of objects, or JSON lines")
        return doc
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) > max_labels:  # refused before parsing a body this large
        raise InvalidInput(f"feedback has {len(lines)} labels; at most {max_labels} per call: split it into calls")
    items: list[object] = []
    for i, line in enumerate(lines):
        try:
            items.append(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"feedback item {i}: not a valid JSON line ({exc})") from None
    return items


def _label(i: int, item: object) -> Label:
    if not isinstance(item, dict):
        raise InvalidInput(f"feedback item {i}: must be a JSON object, got {_kind(item)}")
    unknown = sorted(set(item) - _KEYS)
    if unknown:
        raise InvalidInput(f"feedback item {i}: unknown key {unknown[0]!r} (keys: id, row, label or value, time)")
    if ("label" in item) == ("value" in item):
        raise InvalidInput(f"feedback item {i}: give exactly one of 'label' (classification) or 'value' (regression)")
    return Label(
        request_id=_request_id(i, item.get("id")),
        row=_row(i, item.get("row", 0)),
        label=_class(i, item["label"]) if "label" in item else None,
        value=_value(i, item["value"]) if "value" in item else None,
        time=_time(i, item["time"]) if "time" in item else None,
    )


def _request_id(i: int, value: object) -> str:
    if not isinstance(value, str):
        what = "is missing" if value is None else f"must be a string, got {_kind(value)}"
        raise InvalidInput(f"feedback item {i}: 'id' {what}: give the request id the response carried")
    if not 1 <= len(value) <= MAX_ID_LENGTH or not (value.isascii() and value.isprintable()):
        raise InvalidInput(f"feedback item {i}: 'id' must be 1 to {MAX_ID_LENGTH} printable ASCII characters")
    return value


def _row(i: int, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"feedback item {i}: 'row' must be a non-negative integer, got {_show(value)}")
    return value


def _class(i: int, value: object) -> int | str:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | str):
        return value
    raise InvalidInput(
        f"feedback item {i}: 'label' must be a class (an integer, a string or a boolean), got "
        f"{_show(value)}; a regression model takes 'value'"
    )


def _value(i: int, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(f"feedback item {i}: 'value' must be a finite number, got {_show(value)}")
    return float(value)


def _time(i: int, value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            return parsed.timestamp()
    raise InvalidInput(
        f"feedback item {i}: 'time' must be unix seconds or an RFC 3339 time with its offset "
        f"(2026-12-07T10:00:00Z), got {_show(value)}"
    )


def _kind(value: object) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _show(value: object) -> str:
    text = orjson.dumps(value).decode() if isinstance(value, str | int | float | bool | None) else _kind(value)
    return text if len(text) <= 60 else text[:57] + "..."


@lru_cache(maxsize=256)
def _label_index(class_labels: tuple[str, ...]) -> dict[str, int]:
    index: dict[str, int] = {}
    for k, name in enumerate(class_labels):
        index.setdefault(name, k)  # the first of two equal labels wins, as argmax would
    return index


def class_index(label: int | str | bool, target: Target) -> int:
    """The class index a label names: a class label by its string form first (sklearn classes [0, 1] are
    labels "0" and "1"), else an integer as an index in 0..K-1. A boolean is 0 or 1."""
    if isinstance(label, bool):
        label = int(label)
    found = _label_index(target.class_labels).get(str(label))
    if found is not None:
        return found
    if isinstance(label, int) and 0 <= label < target.classes:
        return label
    raise InvalidInput(f"label {label!r} is not a class of output '{target.output}': {_known(target)}")


def _known(target: Target) -> str:
    if not target.class_labels:
        return f"give a class index in 0..{target.classes - 1}"
    listed = ", ".join(repr(c) for c in target.class_labels[:MAX_LISTED_CLASSES])
    more = f" and {target.classes - MAX_LISTED_CLASSES} more" if target.classes > MAX_LISTED_CLASSES else ""
    return f"its classes are {listed}{more} (or an index in 0..{target.classes - 1})"


def check_labels(labels: Sequence[Label], target: Target) -> None:
    """InvalidInput naming the first item that does not fit the target, before anything joins."""
    for i, item in enumerate(labels):
        if target.task == "regression":
            if item.value is None:
                raise InvalidInput(
                    f"feedback item {i}: the model is a regression on output '{target.output}': "
                    "give 'value', not 'label'"
                )
            continue
        if item.label is None:
            raise InvalidInput(
                f"feedback item {i}: the model classifies on output '{target.output}': give 'label', not 'value'"
            )
        try:
            class_index(item.label, target)
        except InvalidInput as exc:
            raise InvalidInput(f"feedback item {i}: {exc.message}") from None
