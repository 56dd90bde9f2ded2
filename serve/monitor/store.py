"""The monitor's history in SQLite: one row per model / feature / evaluation window / measure.

Also the alert state of every tracked condition (so a restarted monitor neither forgets a
drift nor alerts twice for it), the alerts sent, and the latest evaluation of each model
version (so the report has something to show right after a restart). Rows older than
``retention_s`` are deleted as new ones arrive. One connection, used under a lock from
the monitor's worker threads; WAL so readers (the report) do not block writers.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import TypedDict, cast

import orjson

from serve.monitor.alerts import AlertJson
from serve.monitor.model_report_json import ModelReportJson

SCHEMA = """
CREATE TABLE IF NOT EXISTS evaluations (
    ts REAL NOT NULL, model TEXT NOT NULL, version TEXT NOT NULL, feature TEXT NOT NULL, role TEXT NOT NULL,
    measure TEXT NOT NULL, value REAL, threshold REAL, drifted INTEGER, samples INTEGER,
    window_start REAL, window_end REAL
);
CREATE INDEX IF NOT EXISTS evaluations_by_feature ON evaluations (model, version, feature, ts);
CREATE INDEX IF NOT EXISTS evaluations_by_ts ON evaluations (ts);
CREATE TABLE IF NOT EXISTS states (
    key TEXT PRIMARY KEY, state TEXT NOT NULL, streak INTEGER NOT NULL, since REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS alerts (
    ts REAL NOT NULL, key TEXT NOT NULL, state TEXT NOT NULL, payload TEXT NOT NULL, delivered INTEGER
);
CREATE INDEX IF NOT EXISTS alerts_by_ts ON alerts (ts);
CREATE TABLE IF NOT EXISTS latest (
    model TEXT NOT NULL, version TEXT NOT NULL, ts REAL NOT NULL, payload TEXT NOT NULL,
    PRIMARY KEY (model, version)
);
"""


@dataclass(frozen=True, slots=True)
class HistoryRow:
    """One measure at one evaluation: of a feature, or of the model (``feature`` "", ``role`` "model")."""

    ts: float
    model: str
    version: str
    feature: str
    role: str
    measure: str
    value: float | None
    threshold: float | None
    drifted: bool | None  # None: not deciding, or undecided
    samples: int
    window_start: float | None
    window_end: float | None

    def to_sql(self) -> tuple[object, ...]:
        """The ``evaluations`` row, its columns in table order (``drifted`` as 0 / 1 / NULL)."""
        row = astuple(self)
        return (*row[:8], None if self.drifted is None else int(self.drifted), *row[9:])

    @classmethod
    def from_sql(cls, row: Sequence[object]) -> HistoryRow:
        ts, model, version, feature, role, measure, value, threshold, drifted, samples, start, end = row
        return cls(
            cast(float, ts), str(model), str(version), str(feature), str(role), str(measure),
            cast(float | None, value), cast(float | None, threshold), None if drifted is None else bool(drifted),
            cast(int, samples), cast(float | None, start), cast(float | None, end),
        )  # fmt: skip


_COLUMNS = ", ".join(f.name for f in fields(HistoryRow))


class StoredAlert(TypedDict):
    ts: float
    key: str
    state: str
    alert: AlertJson
    delivered: int | None


class HistoryStore:
    def __init__(self, path: str | Path, retention_s: float = 7 * 86400) -> None:
        self.path = str(path)
        self.retention_s = retention_s
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        if self.path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add_evaluations(self, rows: Sequence[HistoryRow], now: float) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    f"INSERT INTO evaluations ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", [r.to_sql() for r in rows]
                )
                cutoff = now - self.retention_s
                self._db.execute("DELETE FROM evaluations WHERE ts < ?", (cutoff,))
                self._db.execute("DELETE FROM alerts WHERE ts < ?", (cutoff,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def history(
        self,
        model: str,
        version: str,
        feature: str,
        measures: Iterable[str] | None = None,
        since: float = 0.0,
    ) -> dict[str, list[tuple[float, float | None, float | None]]]:
        """measure → [(ts, value, threshold)] in time order."""
        with self._lock:
            cur = self._db.execute(
                "SELECT measure, ts, value, threshold FROM evaluations WHERE model=? AND version=? AND feature=? "
                "AND ts >= ? ORDER BY ts",
                (model, version, feature, since),
            )
            rows = cur.fetchall()
        wanted = set(measures) if measures is not None else None
        out: dict[str, list[tuple[float, float | None, float | None]]] = {}
        for measure, ts, value, threshold in rows:
            if wanted is None or measure in wanted:
                out.setdefault(measure, []).append((ts, value, threshold))
        return out

    def rows(self, model: str, version: str) -> list[HistoryRow]:
        """Every row of a model version, in time order."""
        with self._lock:
            cur = self._db.execute(
                f"SELECT {_COLUMNS} FROM evaluations WHERE model=? AND version=? ORDER BY ts", (model, version)
            )
            return [HistoryRow.from_sql(row) for row in cur.fetchall()]

    def count_evaluations(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0])

    # ---- alert state -----------------------------------------------------------------------
    def load_states(self) -> dict[str, tuple[str, int, float]]:
        with self._lock:
            rows = self._db.execute("SELECT key, state, streak, since FROM states").fetchall()
        return {k: (s, int(st), float(si)) for k, s, st, si in rows}

    def save_states(self, states: Iterable[tuple[str, str, int, float]]) -> None:
        with self._lock:
            self._db.executemany(
                "INSERT INTO states VALUES (?,?,?,?) ON CONFLICT(key) DO UPDATE SET "
                "state=excluded.state, streak=excluded.streak, since=excluded.since",
                list(states),
            )

    def add_alert(self, ts: float, key: str, state: str, payload: AlertJson, delivered: bool | None) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO alerts VALUES (?,?,?,?,?)",
                (
                    ts,
                    key,
                    state,
                    orjson.dumps(payload).decode(),
                    None if delivered is None else int(delivered),
                ),
            )

    def alerts(self, limit: int = 100) -> list[StoredAlert]:
        with self._lock:
            rows = self._db.execute(
                "SELECT ts, key, state, payload, delivered FROM alerts ORDER BY ts DESC LIMIT ?", (limit,)
            ).fetchall()
        return [
            StoredAlert(ts=ts, key=key, state=state, alert=orjson.loads(payload), delivered=delivered)
            for ts, key, state, payload, delivered in rows
        ]

    # ---- latest evaluation per model version -----------------------------------------------
    def save_latest(self, model: str, version: str, ts: float, payload: ModelReportJson) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO latest VALUES (?,?,?,?) ON CONFLICT(model, version) DO UPDATE SET "
                "ts=excluded.ts, payload=excluded.payload",
                (model, version, ts, orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY).decode()),
            )

    def load_latest(self) -> dict[tuple[str, str], tuple[float, ModelReportJson]]:
        with self._lock:
            rows = self._db.execute("SELECT model, version, ts, payload FROM latest").fetchall()
        # What save_latest wrote: the store is the monitor's own file.
        return {(m, v): (ts, cast(ModelReportJson, orjson.loads(p))) for m, v, ts, p in rows}
