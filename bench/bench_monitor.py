"""Incremental monitoring update: new events applied to a large per-user state (issue 17 target:
1M new events on a 1M-user state in under 5 s on the 2-core machine); prints time and peak memory.

Run: .venv/bin/python bench/bench_monitor.py [--users 1000000] [--events 1000000] [--history 2000000]

Set-up (not timed): a state of ``--users`` users built from ``--history`` events over the year
before (every user at least one event), then closed: the timed update opens it afresh, as
``fedseg unit update`` does in a new process (the operating system's file cache stays warm). Timed: one ``apply_update`` of ``--events`` events over the
next 7 days, 90% from existing users (Zipf-like: a fifth from heavy users) and 10% from new users,
with event ids (checked against every id applied before) and 1% late events dated in the past.
The update's process CPU time is printed too: on a shared machine it is what the update costs
apart from waiting for a core. Peak memory: the process's peak resident set (``ru_maxrss``) before and after the update.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from clients.ingest import read_events  # noqa: E402
from clients.monitor import apply_update  # noqa: E402
from clients.monitor_cli import file_digest  # noqa: E402
from clients.state_store import StateStore  # noqa: E402
from fedseg.contract import to_canonical_events  # noqa: E402

START = pd.Timestamp("2025-01-01")


def make_events(users: np.ndarray, start: pd.Timestamp, days: int, seed: int, id_prefix: str) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = len(users)
    ts = start + pd.to_timedelta(rng.integers(0, days * 86400, n), unit="s")
    kinds = np.array(["purchase", "visit", "login", "click", "refund"], dtype=object)
    kind = kinds[rng.choice(5, n, p=[0.2, 0.4, 0.2, 0.19, 0.01])]
    amount = np.where(kind == "purchase", np.round(rng.lognormal(3, 1, n), 2), np.where(kind == "refund", 5.0, 0.0))
    frame = pd.DataFrame({"user_id": np.char.add("u", users.astype(str)).astype(object), "ts": ts,
                          "event_type": kind, "amount": amount,
                          "event_id": np.char.add(id_prefix, np.arange(n).astype(str)).astype(object)})
    return to_canonical_events(frame)


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--history", type=int, default=1_500_000)
    parser.add_argument("--state", type=Path, default=None, help="state file (default: a temporary one)")
    args = parser.parse_args()
    print(f"command: {' '.join(sys.argv)}")
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f} (1-minute average) before")
    folder = Path(tempfile.mkdtemp(prefix="bench-monitor-"))
    path = args.state or folder / "state.sqlite"
    rng = np.random.default_rng(0)
    history_users = np.r_[np.arange(args.users), rng.integers(0, args.users, max(args.history - args.users, 0))]
    t0 = time.perf_counter()
    history = make_events(history_users, START, 358, 1, "h")
    store = StateStore(path)
    apply_update(store, history)
    n_users = store.n_users()
    store.close()  # every update is a fresh process (fedseg unit update): no SQLite page cache carried over
    del history
    setup = time.perf_counter() - t0
    print(f"set-up: state of {n_users:,} users from {len(history_users):,} events in {setup:.1f} s "
          f"({path.stat().st_size / 2**20:.0f} MiB); peak RSS so far {peak_gib():.2f} GiB")

    n = args.events
    heavy = rng.random(n) < 0.2
    existing = np.where(heavy, np.minimum(rng.zipf(1.5, n), args.users) - 1, rng.integers(0, args.users, n))
    new_users = rng.random(n) < 0.1
    users = np.where(new_users, args.users + rng.integers(0, n // 5, n), existing)
    batch = make_events(users, START + pd.Timedelta(days=358), 7, 2, "n")
    late = rng.random(n) < 0.01
    batch.loc[late, "ts"] = START + pd.to_timedelta(rng.integers(0, 300 * 86400, int(late.sum())), unit="s")
    batch_file = folder / "batch.parquet"
    batch.to_parquet(batch_file)
    del batch
    before = peak_gib()
    t0, c0 = time.perf_counter(), time.process_time()
    batch = read_events(batch_file).frame
    batch_id = file_digest(batch_file)
    read_s, read_cpu = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    store = StateStore(path)
    result = apply_update(store, batch, batch_id=batch_id)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    t0 = time.perf_counter()
    store.close()
    close_s = time.perf_counter() - t0
    print(f"read and validate the batch file ({batch_file.stat().st_size / 2**20:.0f} MiB Parquet, data contract) "
          f"and hash it: {read_s:.2f} s, CPU time {read_cpu:.2f} s")
    print(f"update: {len(batch):,} events ({result.users_in_batch:,} users, {result.new_users:,} new, "
          f"{int(late.sum()):,} late, {result.timers_fired:,} timers fired) on a {args.users:,}-user state: "
          f"{elapsed:.2f} s = {len(batch) / elapsed / 1e6:.2f} M events/s; {len(result.alerts):,} alerts, "
          f"{len(result.actions):,} actions; CPU time {cpu:.2f} s (what an idle core would take, about)")
    print("  stages (s): " + ", ".join(f"{k} {v:.2f}" for k, v in result.seconds.items())
          + f"; then closing the state file {close_s:.2f}")
    print(f"peak RSS: {before:.2f} GiB before the update, {peak_gib():.2f} GiB after (process peak); "
          f"load {os.getloadavg()[0]:.2f} after")


if __name__ == "__main__":
    main()
