"""The privacy budget ledger: what each unit has spent on each dataset, persistently.

SQLite (standard library), one file, every write in one transaction (WAL journal), so a crash
leaves the ledger as it was before or after a write, never in between.

Semantics (per ``(unit, dataset)``):

- a **budget** (epsilon, delta) may be set per unit and dataset, or a default for all;
- a run writes a **release** row *before* each private release goes out (write-ahead):
  ``(run_id, release_no)`` with the run's cumulative epsilon after that release, computed by
  the run's accountant. Writing the same ``(run_id, unit, dataset, release_no)`` twice is a
  no-op, so a resumed run never double-counts; a release that was written but whose round
  then failed still counts, so a crash never loses spend (a round re-run after a crash is a
  new release: its noise was drawn again, and it is accounted as such);
- the **spend of a run** is its largest cumulative epsilon (composition within a run is the
  accountant's job); the **spend of a unit** on a dataset is the sum over runs (basic
  sequential composition across runs: valid and conservative).
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel

_SCHEMA = """
CREATE TABLE IF NOT EXISTS budgets (
    unit TEXT NOT NULL, dataset TEXT NOT NULL, epsilon REAL NOT NULL, delta REAL NOT NULL,
    PRIMARY KEY (unit, dataset));
CREATE TABLE IF NOT EXISTS releases (
    run_id TEXT NOT NULL, unit TEXT NOT NULL, dataset TEXT NOT NULL, release_no INTEGER NOT NULL,
    epsilon_cumulative REAL NOT NULL, delta REAL NOT NULL, mechanism TEXT NOT NULL,
    details TEXT NOT NULL, recorded_at TEXT NOT NULL,
    PRIMARY KEY (run_id, unit, dataset, release_no));
"""
#: Unit name under which a default budget for every unit is stored.
ANY_UNIT = "*"


class BudgetExceeded(RuntimeError):
    """A run would spend more than a unit has left."""


class UnitSpend(BaseModel):
    """Budget and spend of one unit on one dataset."""

    unit: str
    dataset: str
    budget_epsilon: float | None
    budget_delta: float | None
    spent_epsilon: float
    remaining_epsilon: float | None
    runs: int


class BudgetLedger:
    """A ledger file; see the module doc for the semantics."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = self._connect()
        try:
            db.executescript(_SCHEMA)
        finally:
            db.close()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        return db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        finally:
            db.close()

    # ---------------------------------------------------------------- budgets
    def set_budget(self, unit: str, dataset: str, epsilon: float, delta: float) -> None:
        """Set (or replace) the budget of ``unit`` on ``dataset``; ``unit='*'`` sets the default."""
        if epsilon <= 0 or not 0 < delta < 1:
            raise ValueError(f"a budget needs epsilon > 0 and 0 < delta < 1, got ({epsilon}, {delta})")
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO budgets VALUES (?, ?, ?, ?)", (unit, dataset, epsilon, delta))

    def budget(self, unit: str, dataset: str) -> tuple[float, float] | None:
        with self._tx() as db:
            for who in (unit, ANY_UNIT):
                row = db.execute("SELECT epsilon, delta FROM budgets WHERE unit=? AND dataset=?",
                                 (who, dataset)).fetchone()
                if row:
                    return float(row[0]), float(row[1])
        return None

    # ---------------------------------------------------------------- spend
    def spent(self, unit: str, dataset: str, exclude_run: str | None = None) -> float:
        """Sum over runs of each run's largest cumulative epsilon."""
        with self._tx() as db:
            row = db.execute(
                "SELECT COALESCE(SUM(m), 0) FROM (SELECT MAX(epsilon_cumulative) AS m FROM releases "
                "WHERE unit=? AND dataset=? AND run_id IS NOT ? GROUP BY run_id)",
                (unit, dataset, exclude_run)).fetchone()
        return float(row[0])

    def run_spent(self, run_id: str, unit: str, dataset: str) -> float:
        with self._tx() as db:
            row = db.execute("SELECT COALESCE(MAX(epsilon_cumulative), 0) FROM releases WHERE run_id=? AND unit=? "
                             "AND dataset=?", (run_id, unit, dataset)).fetchone()
        return float(row[0])

    def releases(self, run_id: str, unit: str, dataset: str) -> int:
        """Highest release number written for ``run_id`` (0 if none)."""
        with self._tx() as db:
            row = db.execute("SELECT COALESCE(MAX(release_no), -1) FROM releases WHERE run_id=? AND unit=? "
                             "AND dataset=?", (run_id, unit, dataset)).fetchone()
        return int(row[0])

    def remaining(self, unit: str, dataset: str) -> float | None:
        budget = self.budget(unit, dataset)
        return None if budget is None else budget[0] - self.spent(unit, dataset)

    def check(self, unit: str, dataset: str, run_id: str | None, run_epsilon: float) -> None:
        """Raise :class:`BudgetExceeded` if this run, at ``run_epsilon`` in total, would overspend."""
        budget = self.budget(unit, dataset)
        if budget is None:
            return
        others = self.spent(unit, dataset, exclude_run=run_id)
        if others + run_epsilon > budget[0] + 1e-12:
            left = max(budget[0] - others, 0.0)
            raise BudgetExceeded(
                f"unit {unit!r} on dataset {dataset!r}: this run would spend epsilon {run_epsilon:.3f} but only "
                f"{left:.3f} of its budget {budget[0]:g} is left ({others:.3f} spent by earlier runs). "
                "Lower --epsilon, or raise the budget with `fedseg privacy budget set`."
            )

    def record(self, run_id: str, unit: str, dataset: str, release_no: int, epsilon_cumulative: float,
               delta: float, mechanism: str, details: dict[str, Any] | None = None) -> bool:
        """Write a release (write-ahead); returns False if it was already written (no double count)."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO releases VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, unit, dataset, release_no, float(epsilon_cumulative), float(delta), mechanism,
                 json.dumps(details or {}, sort_keys=True), dt.datetime.now(dt.UTC).isoformat()))
            return cur.rowcount == 1

    # ---------------------------------------------------------------- views
    def summary(self) -> list[UnitSpend]:
        """Budget, spend and remaining budget of every (unit, dataset) the ledger knows."""
        with self._tx() as db:
            pairs = db.execute("SELECT DISTINCT unit, dataset FROM releases UNION "
                               "SELECT unit, dataset FROM budgets WHERE unit != ?", (ANY_UNIT,)).fetchall()
            runs = dict(((u, d), n) for u, d, n in db.execute(
                "SELECT unit, dataset, COUNT(DISTINCT run_id) FROM releases GROUP BY unit, dataset"))
        out = []
        for unit, dataset in sorted(pairs):
            budget = self.budget(unit, dataset)
            spent = self.spent(unit, dataset)
            out.append(UnitSpend(unit=unit, dataset=dataset, budget_epsilon=budget[0] if budget else None,
                                 budget_delta=budget[1] if budget else None, spent_epsilon=spent,
                                 remaining_epsilon=(budget[0] - spent) if budget else None,
                                 runs=runs.get((unit, dataset), 0)))
        return out

    def run_rows(self, run_id: str) -> list[dict[str, Any]]:
        with self._tx() as db:
            rows = db.execute("SELECT unit, dataset, release_no, epsilon_cumulative, delta, mechanism FROM releases "
                              "WHERE run_id=? ORDER BY unit, release_no", (run_id,)).fetchall()
        return [dict(zip(("unit", "dataset", "release_no", "epsilon_cumulative", "delta", "mechanism"), r))
                for r in rows]
