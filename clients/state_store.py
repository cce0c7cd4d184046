"""The unit's monitoring state on disk: one SQLite file (standard library), one transaction per update.

Why SQLite: it ships with Python (no new dependency for every unit), it is a single file the unit
can copy and back up, and a transaction is atomic across every table: a crash (power loss, kill
-9) mid-update leaves the state as it was before the update (the rollback journal / WAL is
replayed on the next open). DuckDB would scan faster but is one more pinned native dependency on
every unit; the update path touches only the users a batch names, so SQLite's B-tree lookups suffice
(the benchmark in ``bench/bench_monitor.py`` meets the 5 s target for 1M events on 1M users).

Tables:

- ``meta``: schema version, the state's day (``as_of``, days since 1970-01-01) and the monitoring
  settings (JSON);
- ``users``: one row per user: ``uid`` (64-bit hash of the user id, :func:`clients.user_state.user_keys`),
  ``user_id``, ``next_check`` (the first day its stage, tier or warnings can change without new
  events; indexed) and ``rec`` (its :data:`clients.user_state.RECORD` as a BLOB);
- ``purchase_days``: every (uid, purchase day), read only for late events;
- ``batches``: every applied batch (its content hash: a batch applied twice is skipped);
- ``seen_events``: hashes of applied event ids (duplicates across batches are dropped);
- ``alerts`` and ``actions``: the event stream and the unit's action list.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd

from clients.user_state import RECORD

SCHEMA_VERSION: Final = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (uid INTEGER PRIMARY KEY, user_id TEXT NOT NULL, next_check INTEGER NOT NULL,
                                  rec BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS users_next_check ON users(next_check);
CREATE TABLE IF NOT EXISTS purchase_days (uid INTEGER NOT NULL, day INTEGER NOT NULL, PRIMARY KEY (uid, day))
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS batches (batch_id TEXT PRIMARY KEY, source TEXT NOT NULL, events INTEGER NOT NULL,
                                    duplicates INTEGER NOT NULL, new_users INTEGER NOT NULL, as_of INTEGER NOT NULL,
                                    alerts INTEGER NOT NULL, actions INTEGER NOT NULL, applied_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS seen_events (id INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS alerts (day INTEGER NOT NULL, user_id TEXT NOT NULL, kind TEXT NOT NULL,
                                   detail TEXT NOT NULL, batch_id TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS alerts_day ON alerts(day);
CREATE TABLE IF NOT EXISTS actions (day INTEGER NOT NULL, user_id TEXT NOT NULL, action TEXT NOT NULL,
                                    reason TEXT, rule_priority INTEGER NOT NULL, suppressed INTEGER NOT NULL,
                                    suppressed_reason TEXT, batch_id TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS actions_day ON actions(day);
"""
#: Above this share of the state's users, a read scans the table instead of looking users up.
SCAN_SHARE: Final = 0.2


class StateStore:
    """One state file; writes happen inside :meth:`transaction` (all or nothing)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA cache_size=-262144")  # 256 MiB page cache
        self.db.executescript(_SCHEMA)
        version = self.meta("schema")
        if version is None:
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(version) != SCHEMA_VERSION:
            from fedseg.errors import FedsegError

            raise FedsegError(f"{self.path}: monitoring state of schema {version}; this fedseg reads schema "
                              f"{SCHEMA_VERSION}")

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All writes of the block commit together, or none does."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------------ meta
    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: Any) -> None:
        text = value if isinstance(value, str) else json.dumps(value)
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, text))

    def n_users(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM users").fetchone()[0])

    # ------------------------------------------------------------------ users
    def read(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For sorted ``keys``: whether each is stored, and its record (zeros where not)."""
        found = np.zeros(len(keys), dtype=bool)
        recs = np.zeros(len(keys), dtype=RECORD)
        if len(keys) == 0:
            return found, recs
        total = self.n_users()
        if total == 0:
            return found, recs
        if len(keys) > SCAN_SHARE * total:
            rows = self.db.execute("SELECT uid, rec FROM users").fetchall()
        else:
            self.db.execute("CREATE TEMP TABLE IF NOT EXISTS wanted (uid INTEGER PRIMARY KEY)")
            self.db.execute("DELETE FROM wanted")
            self.db.executemany("INSERT INTO wanted VALUES (?)", ((int(k),) for k in keys))
            rows = self.db.execute("SELECT u.uid, u.rec FROM users u JOIN wanted w ON u.uid = w.uid").fetchall()
        if not rows:
            return found, recs
        uids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        stored = np.frombuffer(b"".join(r[1] for r in rows), dtype=RECORD)
        pos = np.searchsorted(keys, uids)
        hit = (pos < len(keys)) & (keys[np.minimum(pos, len(keys) - 1)] == uids)
        found[pos[hit]] = True
        recs[pos[hit]] = stored[hit]
        return found, recs

    def due(self, day: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Users whose ``next_check`` is at most ``day`` (timers that fired), but ``exclude``:
        sorted keys, user ids, records."""
        rows = self.db.execute("SELECT uid, user_id, rec FROM users WHERE next_check <= ? ORDER BY uid",
                               (int(day),)).fetchall()
        if not rows:
            return np.zeros(0, np.int64), np.zeros(0, object), np.zeros(0, RECORD)
        uids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        keep = ~np.isin(uids, exclude)
        ids = np.array([r[1] for r in rows], dtype=object)
        recs = np.frombuffer(b"".join(r[2] for r in rows), dtype=RECORD)
        return uids[keep], ids[keep], recs[keep].copy()

    def write(self, keys: np.ndarray, user_ids: np.ndarray, recs: np.ndarray, next_check: np.ndarray,
              is_new: np.ndarray) -> None:
        """Insert the new users' rows and update the others'."""
        size = RECORD.itemsize
        data = memoryview(np.ascontiguousarray(recs).tobytes())
        blob = [data[i * size:(i + 1) * size] for i in range(len(recs))]
        checks = next_check.astype(np.int64).tolist()
        uid = keys.tolist()
        new = np.flatnonzero(is_new).tolist()
        old = np.flatnonzero(~is_new).tolist()
        self.db.executemany("INSERT INTO users (uid, user_id, next_check, rec) VALUES (?, ?, ?, ?)",
                            ((uid[i], str(user_ids[i]), checks[i], blob[i]) for i in new))
        self.db.executemany("UPDATE users SET next_check = ?, rec = ? WHERE uid = ?",
                            ((checks[i], blob[i], uid[i]) for i in old))

    def scan(self, chunk: int = 500_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every user's id and record, in chunks (exports, tags)."""
        cursor = self.db.execute("SELECT user_id, rec FROM users ORDER BY uid")
        while rows := cursor.fetchmany(chunk):
            yield (np.array([r[0] for r in rows], dtype=object),
                   np.frombuffer(b"".join(r[1] for r in rows), dtype=RECORD).copy())

    # ------------------------------------------------------------------ purchase days
    def add_purchase_days(self, keys: np.ndarray, days: np.ndarray) -> None:
        self.db.executemany("INSERT OR IGNORE INTO purchase_days VALUES (?, ?)",
                            zip(keys.tolist(), days.tolist()))

    def purchase_days(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every stored (uid, day) of ``keys``."""
        rows: list[tuple[int, int]] = []
        for k in keys.tolist():
            rows.extend(self.db.execute("SELECT uid, day FROM purchase_days WHERE uid = ?", (k,)).fetchall())
        arr = np.array(rows, dtype=np.int64).reshape(-1, 2)
        return arr[:, 0], arr[:, 1]

    # ------------------------------------------------------------------ batches, events
    def batch_applied(self, batch_id: str) -> dict[str, Any] | None:
        cur = self.db.execute("SELECT * FROM batches WHERE batch_id = ?", (batch_id,))
        row = cur.fetchone()
        return None if row is None else dict(zip([c[0] for c in cur.description], row))

    def record_batch(self, **row: Any) -> None:
        self.db.execute(f"INSERT INTO batches ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                        tuple(row.values()))

    def new_event_ids(self, ids: np.ndarray) -> np.ndarray:
        """Which of these event-id hashes were never applied (the first of repeats within the batch
        counts as new); all are remembered."""
        self.db.execute("CREATE TEMP TABLE IF NOT EXISTS batch_ids (id INTEGER PRIMARY KEY)")
        self.db.execute("DELETE FROM batch_ids")
        self.db.executemany("INSERT OR IGNORE INTO batch_ids VALUES (?)", ((k,) for k in ids.tolist()))
        seen = np.array([r[0] for r in self.db.execute(
            "SELECT b.id FROM batch_ids b JOIN seen_events s ON s.id = b.id")], dtype=np.int64)
        self.db.execute("INSERT OR IGNORE INTO seen_events SELECT id FROM batch_ids")
        fresh = ~np.isin(ids, seen)
        first = np.zeros(len(ids), dtype=bool)
        first[np.unique(ids, return_index=True)[1]] = True
        return fresh & first

    # ------------------------------------------------------------------ alerts, actions
    def add_frame(self, table: str, frame: pd.DataFrame) -> None:
        if len(frame):
            cols = list(frame.columns)
            self.db.executemany(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                                frame.astype(object).where(frame.notna(), None).itertuples(index=False, name=None))

    def frame(self, sql: str, params: tuple = ()) -> pd.DataFrame:  # type: ignore[type-arg]
        cur = self.db.execute(sql, params)
        return pd.DataFrame(cur.fetchall(), columns=[c[0] for c in cur.description])
