"""Feature-extraction throughput: events/s and peak memory on 1M and 10M events.

Run: .venv/bin/python bench/bench_features.py [--events 1000000 10000000]

Events are random but shaped like a unit's log (users with Zipf-like activity, 5 event
types, a year of timestamps). The timing covers build_features only (not generation).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import sys
import time

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from clients.features import build_features  # noqa: E402
from fedseg.config import FeatureConfig  # noqa: E402


def make_events(n_events: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n_users = max(n_events // 10, 1)
    # about 10 events per user on average, a fifth of the events from a few heavy users
    heavy = rng.random(n_events) < 0.2
    user = np.where(heavy, np.minimum(rng.zipf(1.5, n_events), n_users) - 1, rng.integers(0, n_users, n_events))
    start = np.datetime64("2024-01-01T00:00:00", "s").astype(np.int64)
    ts = (start + rng.integers(0, 365 * 86400, n_events)).astype("datetime64[s]").astype("datetime64[ns]")
    types = np.array(["purchase", "visit", "login", "click", "refund"], dtype=object)
    event_type = types[rng.choice(5, n_events, p=[0.2, 0.4, 0.2, 0.19, 0.01])]
    amount = np.where(event_type == "purchase", rng.lognormal(3, 1, n_events), 0.0)
    ids = np.char.add("u", user.astype(str)).astype(object)
    return pd.DataFrame({"user_id": ids, "ts": ts, "event_type": event_type, "amount": amount})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    config = FeatureConfig(cutoff=dt.date(2024, 10, 31), horizon_days=61)
    print(f"command: {' '.join(sys.argv)}")
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    for n in args.events:
        events = make_events(n)
        best = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            table = build_features(events, config)
            best = min(best, time.perf_counter() - t0)
        peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"{n:>11,} events, {len(table):>9,} users: best of {args.repeat} {best:6.2f} s "
              f"= {n / best / 1e6:5.2f} M events/s; process peak RSS {peak_gib:.2f} GiB")


if __name__ == "__main__":
    main()
