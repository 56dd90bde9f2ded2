"""Labels and their outcomes as bytes, for the hand-off between processes (serve/workers): every worker
joins the labels of a call that reached one of them, since the prediction may be any worker's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import get_args

import orjson

from serve.ground_truth.labels import Label
from serve.ground_truth.outcomes import Outcome

_OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)
_CODE = {outcome: index for index, outcome in enumerate(_OUTCOMES)}


def encode_labels(labels: Sequence[Label]) -> bytes:
    """A JSON array in the feedback API's own format: what parse_feedback reads back as ``labels``."""
    items = []
    for label in labels:
        item: dict[str, object] = {"id": label.request_id, "row": label.row}
        if label.value is not None:
            item["value"] = label.value
        else:
            item["label"] = label.label
        if label.time is not None:
            item["time"] = label.time
        items.append(item)
    return orjson.dumps(items)


def encode_outcomes(outcomes: Sequence[Outcome]) -> bytes:
    return bytes(_CODE[o] for o in outcomes)


def decode_outcomes(data: bytes) -> list[Outcome]:
    return [_OUTCOMES[b] for b in data]
