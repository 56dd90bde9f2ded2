"""Ground truth as the server keeps it: one join store per model version whose outputs hold a
prediction (targets.py), fed every answered request, joined to the labels of feedback calls.

A store is kept by (model, version number), not by load: a version reloaded in place keeps the
predictions it answered before, and so does one unloaded, until they leave retention (its labels
still join). Everything runs on the event loop's thread, like the observers that feed it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import numpy as np

from serve.errors import InvalidInput
from serve.events import Observer, RequestEvent
from serve.ground_truth.document import (
    PerformanceDocumentJson,
    VersionPerformanceJson,
    empty_document,
)
from serve.ground_truth.labels import Label, check_labels
from serve.ground_truth.outcomes import Outcome, combine
from serve.ground_truth.store import JoinStore
from serve.ground_truth.targets import Target, target_of
from serve.repository.model_version import ModelVersion, VersionListener

log = logging.getLogger(__name__)


class GroundTruth(Observer, VersionListener):
    """This process's join stores, one per model version with a target."""

    def __init__(
        self,
        *,
        window_s: float,
        retention_s: float,
        max_rows: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.window_s = window_s
        self.retention_s = retention_s
        self.max_rows = max_rows
        self._clock = clock
        self._stores: dict[tuple[str, str], JoinStore] = {}

    @property
    def enabled(self) -> bool:
        return self.retention_s > 0

    # -- fed by the repository and by every request -------------------------------------------------

    def attached(self, version: ModelVersion) -> None:
        if not self.enabled:
            return
        target = target_of(version.row_specs()[1], version.labels)
        slot = (version.name, version.version_str)
        held = self._stores.get(slot)
        if target is None:
            self._stores.pop(slot, None)
            return
        if held is not None and held.target == target:
            return  # a reload with the same outputs: its earlier predictions still join
        self._stores[slot] = JoinStore(
            target,
            window_s=self.window_s,
            retention_s=self.retention_s,
            max_rows=self.max_rows,
            clock=self._clock,
        )

    def on_request(self, event: RequestEvent) -> None:
        if not event.outputs or not event.request_id:
            return
        store = self._stores.get((event.key.name, event.key.version))
        if store is not None:
            output = event.outputs.get(store.target.output)
            if output is not None:
                store.record(event.request_id, output)

    # -- asked by the feedback API ------------------------------------------------------------------

    def target(self, name: str, version: str) -> Target:
        """The target labels of ``name`` (``version``, or any of its versions) are checked against."""
        stores = self._stores_of(name, version)
        targets = {store.target for store in stores}
        if len(targets) > 1:
            raise InvalidInput(
                f"model '{name}': its versions predict differently ({_describe(targets)}); send the labels of "
                "each version to /v2/models/{name}/versions/{version}/feedback"
            )
        return next(iter(targets))

    def check(self, name: str, version: str, labels: Sequence[Label]) -> None:
        """Refuses the whole call (InvalidInput naming the item) before anything joins."""
        check_labels(labels, self.target(name, version))

    def join(self, name: str, version: str, labels: Sequence[Label]) -> list[Outcome]:
        """One outcome per label, over every version of the model this process keeps (or ``version``'s):
        a label joins each version that answered its request, the shadow's copy included."""
        stores = [s for (n, v), s in self._stores.items() if n == name and (not version or v == version)]
        if not stores:
            return ["unknown"] * len(labels)
        now = self._clock()
        return combine([store.join(labels, now) for store in stores])

    def document(self, name: str, version: str) -> PerformanceDocumentJson:
        doc = empty_document(name, self.window_s, self.retention_s)
        for (n, v), store in sorted(self._stores.items()):
            if n == name and (not version or v == version):
                doc["versions"].append(_version_document(v, store))
        return doc

    def wrong_predictions(self, name: str) -> dict[str, tuple[int, int]]:
        """Per version of a classifier: its labelled rows and how many of its predictions were wrong, over
        every window still held (what a rollout's accuracy gate judges)."""
        counts = {}
        for (n, v), store in self._stores.items():
            if n != name or store.target.task != "classification":
                continue
            windows = store.windows()
            rows = sum(w.labelled_rows for w in windows)
            if rows:  # a version with nothing labelled has nothing for the gate: the evidence stays as it is
                right = sum(int(np.trace(w.confusion)) for w in windows if w.confusion is not None)
                counts[v] = (rows, rows - right)
        return counts

    def _stores_of(self, name: str, version: str) -> list[JoinStore]:
        if not self.enabled:
            raise InvalidInput(
                "this server keeps no predictions to join labels to (it runs --feedback-retention-s 0); "
                "start it with a retention, e.g. --feedback-retention-s 86400"
            )
        stores = [s for (n, v), s in self._stores.items() if n == name and (not version or v == version)]
        if not stores:
            which = f"model '{name}'" + (f" version {version}" if version else "")
            raise InvalidInput(
                f"{which} keeps no predictions to join labels to: no output is a classifier's scores "
                "(FP32/FP64 [K], 2 <= K <= 1000) or a regressor's value (FP32/FP64 [] or [1])"
            )
        return stores


def _describe(targets: set[Target]) -> str:
    return ", ".join(
        sorted(f"{t.task} of '{t.output}'" + (f" over {t.classes} classes" if t.classes else "") for t in targets)
    )


def _version_document(version: str, store: JoinStore) -> VersionPerformanceJson:
    return {
        "version": version,
        "target": store.target.to_json(),
        "held": {
            "rows": store.rows_held,
            "predictions": store.predictions_held,
            "dropped_for_age": store.dropped_for_age,
            "dropped_for_space": store.dropped_for_space,
            "memory_bytes": store.memory_bytes(),
        },
        "windows": [window.to_json() for window in store.windows()],
    }
