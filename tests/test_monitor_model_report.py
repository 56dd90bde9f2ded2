"""The monitor's typed documents: a model version's report (model_report.py) and the history rows (store.py)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from serve.monitor.baselines import BaselineJson
from serve.monitor.config import MonitorSettings
from serve.monitor.evaluate import MeasureResult
from serve.monitor.model_report import MeasureEntry, ModelReport, SloStatus, build_report
from serve.monitor.service import Monitor
from serve.monitor.store import HistoryRow, HistoryStore
from tests.fixtures.monitoring import MODEL, monitor_with_history

BASELINE: BaselineJson = {"status": "missing", "source": None, "path": None, "sha256": None, "problems": ["none found"]}
SLO = SloStatus(0.0, None, None, None, None, 100, None, None)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Monitor]:
    monitor, replica = asyncio.run(monitor_with_history(tmp_path_factory.mktemp("report"), windows=4))
    replica.close()
    yield monitor
    monitor.close()


def test_a_report_read_back_from_its_document_writes_the_same_bytes(evaluated: Monitor) -> None:
    report = evaluated.latest[(MODEL, "1")]
    document = report.to_json()
    assert document["features"] and document.get("dataset_state") is not None  # judged and recorded
    assert orjson.dumps(ModelReport.from_json(orjson.loads(orjson.dumps(document))).to_json()) == orjson.dumps(document)


def test_a_restarted_monitor_holds_the_report_the_store_kept(evaluated: Monitor) -> None:
    again = Monitor(evaluated.settings, clock=evaluated.clock)
    try:
        assert again.latest[(MODEL, "1")].to_json() == evaluated.latest[(MODEL, "1")].to_json()
    finally:
        again.close()


def test_a_report_without_a_usable_baseline_has_a_null_window_and_no_findings() -> None:
    report = build_report(MODEL, "1", 1.0, BASELINE, ["none found"], SLO)
    document = report.to_json()
    assert list(document) == ["model", "version", "evaluated_at", "baseline", "problems", "features", "slo", "window"]
    assert document["window"] is None and document["features"] == []


def test_states_make_a_new_report_and_leave_the_one_they_were_given_as_it_was(evaluated: Monitor) -> None:
    report = evaluated.latest[(MODEL, "1")]
    before = report.to_json()
    again = report.with_states({f.name: "drifted" for f in report.features}, report.slo, "drifted")
    assert report.to_json() == before
    assert {f.state for f in again.features} == {"drifted"}
    assert again.findings is not None and again.findings.states is not None
    assert again.findings.states.drifted_state_share == 1.0


def test_once_output_leaves_out_replicas_views_and_states_and_lists_the_features_last(evaluated: Monitor) -> None:
    document = evaluated.latest[(MODEL, "1")].once_json()
    assert "replicas" not in document and list(document)[-1] == "features"
    assert all("view" not in f and "state" not in f for f in document["features"])


def test_a_non_finite_error_bound_is_written_as_null_and_read_back_so() -> None:
    written = MeasureEntry.of(MeasureResult(0.1, 0.2, bound=math.inf)).to_json()
    assert "error_bound" in written and written["error_bound"] is None
    assert MeasureEntry.from_json(written).to_json() == written
    assert "error_bound" not in MeasureEntry.of(MeasureResult(0.1, 0.2)).to_json()


def test_history_rows_are_read_back_as_written(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "history.db")
    rows = [
        HistoryRow(10.0, MODEL, "1", "age", "input", "psi", 0.3, 0.25, True, 900, 0.0, 10.0),
        HistoryRow(11.0, MODEL, "1", "", "model", "slo_latency", 0.2, 0.1, None, 1000, None, None),
    ]
    try:
        store.add_evaluations(rows, now=11.0)
        assert store.rows(MODEL, "1") == rows
        assert store.history(MODEL, "1", "age") == {"psi": [(10.0, 0.3, 0.25)]}
    finally:
        store.close()


def test_a_history_row_stores_its_verdict_as_0_1_or_null() -> None:
    row = HistoryRow(1.0, MODEL, "1", "age", "input", "psi", 0.3, 0.25, False, 900, 0.0, 1.0)
    assert row.to_sql()[8] == 0
    assert HistoryRow.from_sql(row.to_sql()) == row


def test_a_stored_report_the_monitor_cannot_read_is_left_for_the_next_evaluation(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "monitor.db")
    store.save_latest(MODEL, "1", 1.0, {"model": MODEL, "version": "1"})  # type: ignore[typeddict-item]
    store.close()
    monitor = Monitor(MonitorSettings(servers=[], db_path=str(tmp_path / "monitor.db")))
    try:
        assert monitor.latest == {}
    finally:
        monitor.close()
