"""The unit's monitoring state on disk: one SQLite file (standard library), one transaction per update.

Why SQLite: it ships with Python (no new dependency on any unit), the state is one file the unit
can copy and back up, and a transaction is atomic across every table: a crash (power loss, kill
-9) mid-update leaves the state as it was before the update (the write-ahead log is replayed on
the next open). DuckDB would scan faster but is one more pinned native dependency on every unit,
and an update touches only the users a batch names (and those whose timer fired).

Layout: users are spread over ``2^14`` **buckets** by the top bits of their key (a 64-bit hash of
the user id, :func:`clients.user_state.user_keys`); one row per bucket holds its users' records
(:data:`clients.user_state.RECORD`, packed), their ids, their (uid, purchase day) pairs and the
earliest ``next_check`` among them (indexed). An update reads and rewrites only the buckets of the
users it touches: one SQLite row per bucket instead of one B-tree update per user (``bench/bench_monitor.py``).
A bucket holds about ``users / 16,384`` users (61 at 1M users, one 16 KiB page): the cost of an
update stays proportional to the users it touches, times the bucket size. Event ids already applied are kept the same way (sorted 64-bit hashes per bucket).

Tables: ``meta`` (schema, the state's day ``as_of`` in days since 1970-01-01, the monitoring
settings as JSON), ``buckets``, ``seen_events``, ``batches`` (every applied batch; a batch applied
twice is skipped) and ``log``: per update, its alerts (the event stream) and its actions (the unit's
action list), each one Parquet segment, appended in the update's transaction.
"""

from __future__ import annotations

import io
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd

from clients.features import _sorted_unique
from clients.user_state import RECORD, in_sorted, ukey

SCHEMA_VERSION: Final = 2
BUCKET_BITS: Final = 14
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS buckets (bucket INTEGER PRIMARY KEY, next_check INTEGER NOT NULL, users INTEGER NOT NULL,
                                    recs BLOB NOT NULL, ids BLOB NOT NULL, pdays BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS buckets_next_check ON buckets(next_check);
CREATE TABLE IF NOT EXISTS seen_events (bucket INTEGER PRIMARY KEY, ids BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS batches (batch_id TEXT PRIMARY KEY, source TEXT NOT NULL, events INTEGER NOT NULL,
                                    duplicates INTEGER NOT NULL, new_users INTEGER NOT NULL, as_of INTEGER NOT NULL,
                                    alerts INTEGER NOT NULL, actions INTEGER NOT NULL, applied_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS log (batch_id TEXT PRIMARY KEY, day INTEGER NOT NULL, alerts BLOB NOT NULL,
                                actions BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS log_day ON log(day);
"""
#: Above this share of the buckets, a read scans the table instead of looking buckets up.
SCAN_SHARE: Final = 0.3
PAIR: Final = np.dtype([("uid", "<i8"), ("day", "<i4")])


def bucket_of(keys: np.ndarray) -> np.ndarray:
    """The bucket of each user key (its top :data:`BUCKET_BITS` bits)."""
    return (np.asarray(keys, dtype=np.int64).view(np.uint64) >> np.uint64(64 - BUCKET_BITS)).astype(np.int64)


@dataclass
class Loaded:
    """The users of some buckets: records, ids, bucket of each, and the buckets' purchase-day pairs."""

    buckets: np.ndarray       # the buckets read (sorted)
    recs: np.ndarray          # RECORD, sorted by unsigned uid (ukey): grouped by bucket
    ids: np.ndarray           # object, aligned with recs
    pdays: dict[int, bytes]   # raw (uid, day) pairs per bucket

    def position(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Whether each key is loaded, and where."""
        stored = ukey(self.recs["uid"])
        pos = np.searchsorted(stored, ukey(keys))
        return in_sorted(ukey(keys), stored), pos


class StateStore:
    """One state file; writes happen inside :meth:`transaction` (all or nothing)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # check_same_thread off: an update rewrites the buckets on a second thread while the first
        # plans the actions (clients.monitor); the connection is never used by both at once
        self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA page_size=16384")  # a bucket row (about 60 users at 1M) fits in a page
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        # a small page cache (16 MiB): a large update's dirty pages spill to the write-ahead log
        # while the buckets are written (on the writer thread, beside the planning of actions)
        # instead of all at COMMIT; reads go through the memory map below, not this cache
        # (1M events on a 1M-user state: commit 0.9-1.1 s -> 0.34-0.5 s, bench/bench_monitor.py)
        self.db.execute("PRAGMA cache_size=-16384")
        # statement journals in memory: each INSERT OR REPLACE of a bucket row otherwise journals
        # its pages to a temporary file (1 GiB of writes, 52,000 system calls per 1M-user update)
        self.db.execute("PRAGMA temp_store=MEMORY")
        self.db.execute("PRAGMA mmap_size=4294967296")  # pages read through a memory map, not one pread each
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
        return int(self.db.execute("SELECT COALESCE(SUM(users), 0) FROM buckets").fetchone()[0])

    # ------------------------------------------------------------------ users
    def read(self, buckets: np.ndarray) -> Loaded:
        """The users of ``buckets`` (sorted, distinct)."""
        total = int(self.db.execute("SELECT COUNT(*) FROM buckets").fetchone()[0])
        if len(buckets) == 0 or total == 0:
            rows = []
        elif len(buckets) > SCAN_SHARE * total:
            wanted = set(buckets.tolist())
            rows = [r for r in self.db.execute("SELECT bucket, recs, ids, pdays FROM buckets") if r[0] in wanted]
        else:
            self.db.execute("CREATE TEMP TABLE IF NOT EXISTS wanted (bucket INTEGER PRIMARY KEY)")
            self.db.execute("DELETE FROM wanted")
            self.db.executemany("INSERT INTO wanted VALUES (?)", ((b,) for b in buckets.tolist()))
            rows = self.db.execute("SELECT b.bucket, b.recs, b.ids, b.pdays FROM buckets b JOIN wanted w "
                                   "ON b.bucket = w.bucket").fetchall()
        return _loaded(buckets, rows)

    def due(self, day: int) -> np.ndarray:
        """Buckets holding a user whose ``next_check`` is at most ``day`` (a timer fired)."""
        return np.array([r[0] for r in self.db.execute("SELECT bucket FROM buckets WHERE next_check <= ?",
                                                       (int(day),))], dtype=np.int64)

    def write(self, loaded: Loaded, new_pdays: dict[int, bytes]) -> None:
        """Rewrite every bucket of ``loaded`` (its records sorted by unsigned uid); ``new_pdays``: raw
        (uid, day) pairs to append to each bucket's purchase days."""
        recs = loaded.recs
        if len(recs) == 0:
            return
        bucket = bucket_of(recs["uid"])
        cuts = np.flatnonzero(np.diff(bucket)) + 1
        starts, stops = np.r_[0, cuts], np.r_[cuts, len(recs)]
        raw = memoryview(np.ascontiguousarray(recs).tobytes())
        size = RECORD.itemsize
        ids = loaded.ids.tolist()
        first_check = np.minimum.reduceat(recs["next_check"], starts) if len(recs) else np.zeros(0)
        rows = []
        for b, lo, hi, check in zip(bucket[starts].tolist(), starts.tolist(), stops.tolist(), first_check.tolist()):
            pdays = loaded.pdays.get(b, b"") + new_pdays.get(b, b"")
            rows.append((b, check, hi - lo, raw[lo * size:hi * size], "\x00".join(ids[lo:hi]).encode(), pdays))
        self.db.executemany("INSERT OR REPLACE INTO buckets VALUES (?, ?, ?, ?, ?, ?)", rows)

    def scan(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every user's id and record, a chunk of buckets at a time (exports, tags)."""
        cursor = self.db.execute("SELECT bucket, recs, ids, pdays FROM buckets ORDER BY bucket")
        while rows := cursor.fetchmany(4096):
            loaded = _loaded(np.array([r[0] for r in rows]), rows)
            yield loaded.ids, loaded.recs

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
        counts as new); all are remembered (sorted per bucket)."""
        if len(ids) == 0:
            return np.zeros(0, dtype=bool)
        wanted = _sorted_unique(bucket_of(ids))
        total = int(self.db.execute("SELECT COUNT(*) FROM seen_events").fetchone()[0])
        if len(wanted) > SCAN_SHARE * max(total, 1):
            keep = set(wanted.tolist())
            blobs = [r[1] for r in self.db.execute("SELECT bucket, ids FROM seen_events") if r[0] in keep]
        else:
            blobs = []
            for chunk in np.array_split(wanted, max(1, len(wanted) // 900)):
                blobs += [r[0] for r in self.db.execute(
                    f"SELECT ids FROM seen_events WHERE bucket IN ({','.join('?' * len(chunk))})", chunk.tolist())]
        stored = np.sort(np.frombuffer(b"".join(blobs), dtype=np.uint64))
        mine = ids.view(np.uint64)
        order = np.argsort(mine, kind="stable")
        ordered = mine[order]                    # look up in key order: cache-friendly binary searches
        fresh = np.zeros(len(ids), dtype=bool)
        fresh[order] = np.r_[True, ordered[1:] != ordered[:-1]] & ~in_sorted(ordered, stored)
        merged = _sorted_unique(np.r_[stored, mine])            # sorted unsigned: buckets in order
        self.db.executemany("INSERT OR REPLACE INTO seen_events VALUES (?, ?)",
                            _by_bucket(merged, (merged >> np.uint64(64 - BUCKET_BITS)).astype(np.int64)))
        return fresh

    # ------------------------------------------------------------------ alerts, actions
    def add_log(self, batch_id: str, day: int, alerts: bytes, actions: bytes) -> None:
        """The batch's alerts and actions, one Parquet segment each (:func:`log_segment`; append-only)."""
        self.db.execute("INSERT INTO log VALUES (?, ?, ?, ?)", (batch_id, int(day), alerts, actions))

    def log(self, what: str, since_day: int | None = None) -> pd.DataFrame:
        """Every logged ``alerts`` or ``actions`` row (of updates on or after ``since_day``)."""
        column = {"alerts": "alerts", "actions": "actions"}[what]
        rows = self.db.execute(f"SELECT {column} FROM log WHERE day >= ? ORDER BY rowid",
                               (-(2**62) if since_day is None else int(since_day),)).fetchall()
        frames = [pd.read_parquet(io.BytesIO(r[0])) for r in rows if r[0]]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def frame(self, sql: str, params: tuple = ()) -> pd.DataFrame:  # type: ignore[type-arg]
        cur = self.db.execute(sql, params)
        return pd.DataFrame(cur.fetchall(), columns=[c[0] for c in cur.description])


def _loaded(buckets: np.ndarray, rows: list[Any]) -> Loaded:
    """Decode bucket rows (bucket, recs, ids, pdays) into one set of users sorted by unsigned uid
    (each bucket's records are stored in that order)."""
    if not rows:
        return Loaded(buckets, np.zeros(0, RECORD), np.zeros(0, object), {})
    rows = sorted(rows, key=lambda r: r[0])
    recs = np.frombuffer(bytearray().join(r[1] for r in rows), dtype=RECORD)  # writable, one copy
    ids = np.array(b"\x00".join(r[2] for r in rows).decode().split("\x00"), dtype=object)
    return Loaded(buckets, recs, ids, {int(r[0]): bytes(r[3]) for r in rows})


def purchase_pairs(loaded: Loaded, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every stored (uid, day) purchase pair of ``keys`` (from their buckets' pairs)."""
    blobs = [loaded.pdays.get(b, b"") for b in np.unique(bucket_of(keys)).tolist()]
    pairs = np.frombuffer(b"".join(blobs), dtype=PAIR)
    mine = in_sorted(ukey(pairs["uid"]), np.sort(ukey(keys)))
    return pairs["uid"][mine].astype(np.int64), pairs["day"][mine].astype(np.int64)


def _by_bucket(values: np.ndarray, buckets: np.ndarray) -> list[tuple[int, bytes]]:
    """(bucket, raw bytes of its values) for values sorted by bucket."""
    if len(values) == 0:
        return []
    raw = memoryview(np.ascontiguousarray(values).tobytes())
    size = values.dtype.itemsize
    cuts = np.flatnonzero(np.diff(buckets)) + 1
    starts, stops = np.r_[0, cuts], np.r_[cuts, len(values)]
    return [(b, bytes(raw[lo * size:hi * size]))
            for b, lo, hi in zip(buckets[starts].tolist(), starts.tolist(), stops.tolist())]


def pack_pairs(keys: np.ndarray, days: np.ndarray) -> dict[int, bytes]:
    """(uid, day) pairs as raw bytes per bucket (appended to the buckets' purchase days)."""
    buckets = bucket_of(keys)
    order = np.argsort(buckets, kind="stable")
    pairs = np.zeros(len(keys), dtype=PAIR)
    pairs["uid"], pairs["day"] = keys[order], days[order]
    return dict(_by_bucket(pairs, buckets[order]))


def log_segment(frame: pd.DataFrame) -> bytes:
    """A log frame as one Parquet segment (b"" for none)."""
    if frame is None or not len(frame):
        return b""
    buffer = io.BytesIO()
    # no dictionary for the user ids (all distinct) and no column statistics (the log is read
    # whole): about 20% less time for the half-million-row logs of a large update
    frame.to_parquet(buffer, index=False, use_dictionary=[c for c in frame.columns if c != "user_id"],
                     write_statistics=False)
    return buffer.getvalue()
