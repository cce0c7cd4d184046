"""The privacy budget ledger: what each unit has spent on each of its datasets, across every task.

SQLite (standard library), one file, every write in one transaction (WAL journal), so a crash
leaves the ledger as it was before or after a write, never in between. Units keep their own
ledger (``ledger-path`` in ``unit.toml``; in simulation ``--ledger``, shared by the simulated
units, each under its own name) and write it themselves before every release: the coordinator
neither reads nor writes it.

Semantics, per ``(unit, dataset)``:

- a **budget** ``(epsilon, delta)`` may be set per unit and dataset, or a default for every unit
  (``unit = '*'``); a unit's ``unit.toml`` budget takes precedence over the file's;
- a **run** (one training run, segmentation, federated audit, KPI report ...; ``task`` names
  which) is accepted before its first release: the unit computes the run's planned epsilon with
  its own accountant and refuses it, before anything is released or charged, when the budget
  cannot cover it (:class:`BudgetExceeded`);
- a **release** row is written *before* the release leaves the unit (write-ahead): the release
  itself (its :class:`privacy.accounting.Release`) and the run's cumulative ``(epsilon, delta)``
  after it, composed by the accountant over every release of the run so far. A release that
  was written but whose reply was then lost still counts, so a crash never loses spend;
- the **spend of a run** is the cumulative ``(epsilon, delta)`` of its last release; the
  **spend of a unit** on a dataset is the sum over runs of epsilon and of delta (basic
  sequential composition: valid for any mix of mechanisms, and conservative).
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

from fedseg.errors import FedsegError
from privacy.accounting import Release

_SCHEMA = """
CREATE TABLE IF NOT EXISTS budgets (
    unit TEXT NOT NULL, dataset TEXT NOT NULL, epsilon REAL NOT NULL, delta REAL NOT NULL,
    PRIMARY KEY (unit, dataset));
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT NOT NULL, unit TEXT NOT NULL, dataset TEXT NOT NULL, task TEXT NOT NULL,
    delta REAL NOT NULL, accepted_epsilon REAL NOT NULL, accepted_at TEXT NOT NULL,
    PRIMARY KEY (run_id, unit, dataset));
CREATE TABLE IF NOT EXISTS releases (
    run_id TEXT NOT NULL, unit TEXT NOT NULL, dataset TEXT NOT NULL, release_no INTEGER NOT NULL,
    epsilon_cumulative REAL NOT NULL, delta REAL NOT NULL, mechanism TEXT NOT NULL,
    details TEXT NOT NULL, recorded_at TEXT NOT NULL, task TEXT NOT NULL DEFAULT 'training',
    PRIMARY KEY (run_id, unit, dataset, release_no));
CREATE TABLE IF NOT EXISTS epsilon_memo (key TEXT PRIMARY KEY, epsilon REAL NOT NULL);
"""
#: Unit name under which a default budget for every unit is stored.
ANY_UNIT = "*"
#: Slack for floating-point comparisons of epsilons (the accountant's own rounding).
TOLERANCE = 1e-9


class BudgetExceeded(FedsegError):
    """A run would spend more than a unit has left on a dataset (refused before any release)."""

    exit_code = 2

    def __init__(self, unit: str, dataset: str, spent: tuple[float, float], asked: tuple[float, float],
                 budget: tuple[float, float]) -> None:
        self.unit, self.dataset, self.spent, self.asked, self.budget = unit, dataset, spent, asked, budget
        remaining = (max(budget[0] - spent[0], 0.0), max(budget[1] - spent[1], 0.0))
        self.remaining = remaining
        super().__init__(
            f"unit {unit!r} on dataset {dataset!r}: spent epsilon {spent[0]:.3f} (delta {spent[1]:.3g}), this run "
            f"asks {asked[0]:.3f} (delta {asked[1]:.3g}), remaining {remaining[0]:.3f} (delta {remaining[1]:.3g}) "
            f"of the budget {budget[0]:g} (delta {budget[1]:g}); lower --epsilon, or raise the unit's budget")


class TaskSpend(BaseModel):
    """Spend of one task (training, segmentation, audit, ...) on a unit's dataset."""

    runs: int
    epsilon: float
    delta: float


class UnitSpend(BaseModel):
    """Budget and spend of one unit on one dataset."""

    unit: str
    dataset: str
    budget_epsilon: float | None
    budget_delta: float | None
    spent_epsilon: float
    spent_delta: float
    remaining_epsilon: float | None
    remaining_delta: float | None
    runs: int
    releases_by_task: dict[str, TaskSpend]
    composition: str = ("within a run: RDP over every release (dp-accounting); across runs and tasks: basic "
                        "composition (epsilons add, deltas add)")


class BudgetLedger:
    """A ledger file; see the module doc for the semantics."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = self._connect()
        try:
            db.executescript(_SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(releases)")}
            if "task" not in columns:  # a ledger written before tasks were recorded: all training
                db.execute("ALTER TABLE releases ADD COLUMN task TEXT NOT NULL DEFAULT 'training'")
        finally:
            db.close()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
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
        if not epsilon > 0 or not 0 < delta < 1:
            raise ValueError(f"a budget needs epsilon > 0 and 0 < delta < 1, got ({epsilon}, {delta})")
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO budgets VALUES (?, ?, ?, ?)", (unit, dataset, epsilon, delta))

    def budget(self, unit: str, dataset: str) -> tuple[float, float] | None:
        with self._tx() as db:
            return self._budget(db, unit, dataset)

    @staticmethod
    def _budget(db: sqlite3.Connection, unit: str, dataset: str) -> tuple[float, float] | None:
        for who in (unit, ANY_UNIT):
            row = db.execute("SELECT epsilon, delta FROM budgets WHERE unit=? AND dataset=?", (who, dataset)).fetchone()
            if row:
                return float(row[0]), float(row[1])
        return None

    # ---------------------------------------------------------------- spend
    @staticmethod
    def _run_spends(db: sqlite3.Connection, unit: str, dataset: str) -> list[tuple[str, str, float, float]]:
        """(run_id, task, epsilon, delta) of every run: the cumulative figures of its last release."""
        return [(r, t, float(e), float(d)) for r, t, e, d in db.execute(
            "SELECT r.run_id, COALESCE(a.task, r.task), r.epsilon_cumulative, r.delta FROM releases r JOIN "
            "(SELECT run_id, MAX(release_no) AS n FROM releases WHERE unit=? AND dataset=? GROUP BY run_id) last "
            "ON r.run_id = last.run_id AND r.release_no = last.n "
            "LEFT JOIN runs a ON a.run_id = r.run_id AND a.unit = r.unit AND a.dataset = r.dataset "
            "WHERE r.unit=? AND r.dataset=?", (unit, dataset, unit, dataset))]

    def spent(self, unit: str, dataset: str, exclude_run: str | None = None) -> tuple[float, float]:
        """``(epsilon, delta)`` spent by every run (but ``exclude_run``): sums over runs."""
        with self._tx() as db:
            spends = [s for s in self._run_spends(db, unit, dataset) if s[0] != exclude_run]
        return sum(s[2] for s in spends), sum(s[3] for s in spends)

    def run_releases(self, run_id: str, unit: str, dataset: str) -> list[Release]:
        """The releases recorded for one run, in order."""
        with self._tx() as db:
            rows = db.execute("SELECT details FROM releases WHERE run_id=? AND unit=? AND dataset=? "
                              "ORDER BY release_no", (run_id, unit, dataset)).fetchall()
        out = []
        for (details,) in rows:
            spec = json.loads(details).get("release")
            if spec is not None:
                out.append(Release.model_validate(spec))
        return out

    def releases(self, run_id: str, unit: str, dataset: str) -> int:
        """Highest release number written for ``run_id`` (0 if none)."""
        with self._tx() as db:
            row = db.execute("SELECT COALESCE(MAX(release_no), 0) FROM releases WHERE run_id=? AND unit=? "
                             "AND dataset=?", (run_id, unit, dataset)).fetchone()
        return int(row[0])

    def remaining(self, unit: str, dataset: str) -> tuple[float, float] | None:
        budget = self.budget(unit, dataset)
        if budget is None:
            return None
        spent = self.spent(unit, dataset)
        return budget[0] - spent[0], budget[1] - spent[1]

    def check(self, unit: str, dataset: str, run_id: str | None, run_epsilon: float, run_delta: float,
              budget: tuple[float, float] | None = None) -> None:
        """Raise :class:`BudgetExceeded` if this run, at ``(run_epsilon, run_delta)`` in total, would
        overspend ``budget`` (default: the ledger's budget for the unit; none set: no limit)."""
        budget = budget or self.budget(unit, dataset)
        if budget is None:
            return
        others = self.spent(unit, dataset, exclude_run=run_id)
        if (others[0] + run_epsilon > budget[0] + TOLERANCE or others[1] + run_delta > budget[1] * (1 + 1e-9)):
            raise BudgetExceeded(unit, dataset, others, (run_epsilon, run_delta), budget)

    def accept_run(self, run_id: str, unit: str, dataset: str, task: str, delta: float, accepted_epsilon: float) -> None:
        """Record that a run was accepted at ``accepted_epsilon`` in total (replaces an earlier acceptance)."""
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (run_id, unit, dataset, task, delta, accepted_epsilon, dt.datetime.now(dt.UTC).isoformat()))

    def accepted(self, run_id: str, unit: str, dataset: str) -> tuple[float, float] | None:
        """``(delta, accepted epsilon)`` of a run this unit accepted, or None."""
        with self._tx() as db:
            row = db.execute("SELECT delta, accepted_epsilon FROM runs WHERE run_id=? AND unit=? AND dataset=?",
                             (run_id, unit, dataset)).fetchone()
        return None if row is None else (float(row[0]), float(row[1]))

    def record(self, run_id: str, unit: str, dataset: str, release_no: int, epsilon_cumulative: float,
               delta: float, mechanism: str, details: dict[str, Any] | None = None, task: str = "training") -> bool:
        """Write a release (write-ahead); returns False if it was already written (no double count)."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO releases (run_id, unit, dataset, release_no, epsilon_cumulative, delta, "
                "mechanism, details, recorded_at, task) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, unit, dataset, release_no, float(epsilon_cumulative), float(delta), mechanism,
                 json.dumps(details or {}, sort_keys=True), dt.datetime.now(dt.UTC).isoformat(), task))
            return cur.rowcount == 1

    # ---------------------------------------------------------------- accountant results
    def memo(self, key: str) -> float | None:
        """A kept accountant result (:func:`privacy.accounting.composition_key`), or None."""
        with self._tx() as db:
            row = db.execute("SELECT epsilon FROM epsilon_memo WHERE key=?", (key,)).fetchone()
        return None if row is None else float(row[0])

    def remember(self, results: dict[str, float]) -> None:
        """Keep accountant results by their composition key."""
        with self._tx() as db:
            db.executemany("INSERT OR REPLACE INTO epsilon_memo VALUES (?, ?)",
                           [(k, float(v)) for k, v in results.items()])

    # ---------------------------------------------------------------- views
    def summary(self) -> list[UnitSpend]:
        """Budget, spend, remaining budget and spend by task of every (unit, dataset) the ledger knows."""
        with self._tx() as db:
            pairs = db.execute("SELECT DISTINCT unit, dataset FROM releases UNION "
                               "SELECT unit, dataset FROM budgets WHERE unit != ?", (ANY_UNIT,)).fetchall()
            out = []
            for unit, dataset in sorted(pairs):
                budget = self._budget(db, unit, dataset)
                spends = self._run_spends(db, unit, dataset)
                eps, delta = sum(s[2] for s in spends), sum(s[3] for s in spends)
                by_task: dict[str, TaskSpend] = {}
                for _, task, e, d in spends:
                    t = by_task.setdefault(task, TaskSpend(runs=0, epsilon=0.0, delta=0.0))
                    t.runs, t.epsilon, t.delta = t.runs + 1, t.epsilon + e, t.delta + d
                out.append(UnitSpend(
                    unit=unit, dataset=dataset, budget_epsilon=budget[0] if budget else None,
                    budget_delta=budget[1] if budget else None, spent_epsilon=eps, spent_delta=delta,
                    remaining_epsilon=(budget[0] - eps) if budget else None,
                    remaining_delta=(budget[1] - delta) if budget else None,
                    runs=len(spends), releases_by_task=by_task))
        return out

    def run_rows(self, run_id: str) -> list[dict[str, Any]]:
        with self._tx() as db:
            rows = db.execute("SELECT unit, dataset, task, release_no, epsilon_cumulative, delta, mechanism "
                              "FROM releases WHERE run_id=? ORDER BY unit, release_no", (run_id,)).fetchall()
        return [dict(zip(("unit", "dataset", "task", "release_no", "epsilon_cumulative", "delta", "mechanism"), r))
                for r in rows]
