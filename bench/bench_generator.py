"""Benchmark of the synthetic generator: events per second and peak memory.

Usage::

    .venv/bin/python bench/bench_generator.py                 # 1M users, ~10M events, 10 units
    .venv/bin/python bench/bench_generator.py --users 100000 --write /tmp/gen_units

Prints generation time, events/s, peak resident memory of this process (ru_maxrss), and the
load average, and optionally the time to write per-unit Parquet files.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--events-per-user", type=float, default=10.0)
    parser.add_argument("--units", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", type=Path, default=None, help="Also write per-unit Parquet files here.")
    parser.add_argument("--write-tmp", action="store_true", help="Write per-unit Parquet files to a temp dir.")
    args = parser.parse_args()

    from simulations.generator import GeneratorConfig, generate, write_units

    cfg = GeneratorConfig(n_users=args.users, n_units=args.units, events_per_user=args.events_per_user,
                          seed=args.seed, unit_size_alpha=1.0, behaviour_skew=0.5)
    print(f"load before: {os.getloadavg()}")
    t0 = time.perf_counter()
    data = generate(cfg)
    gen_s = time.perf_counter() - t0
    n_events = len(data.events)
    frame_gib = (data.events.memory_usage(deep=False).sum()) / 2**30
    print(f"users {args.users:,}  units {args.units}  events {n_events:,}  ({n_events / args.users:.2f} per user)")
    print(f"generate: {gen_s:.1f} s  ->  {n_events / gen_s:,.0f} events/s")
    print(f"events frame (without string payloads): {frame_gib:.2f} GiB; peak RSS so far: {_peak_rss_gib():.2f} GiB")
    out = args.write
    if args.write_tmp and out is None:
        out = Path(tempfile.mkdtemp(prefix="bench_generator_"))
    if out is not None:
        t0 = time.perf_counter()
        paths = write_units(data, out)
        write_s = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in paths) / 2**20
        print(f"write_units (parquet): {write_s:.1f} s, {len(paths)} files, {size:,.0f} MiB in {out}")
    print(f"peak RSS: {_peak_rss_gib():.2f} GiB")
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
