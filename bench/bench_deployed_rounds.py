"""Deployed round time on Flower's Deployment Engine: a real SuperLink with TLS and node
authentication and three real SuperNodes on localhost, started through ``fedseg deploy``
(the cluster of ``tests/deployment``), one ``flwr run`` per privacy mode.

Run: .venv/bin/python bench/bench_deployed_rounds.py [--rounds 6] [--modes none user]

Generated data (1,500 users over 3 units), MLP. Printed per mode: the coordinator's round
times (``rounds.jsonl``), their median over rounds 2..R-1 (round 1 starts the units' processes
and caches; round R also carries the last model's separate evaluation) and the wall time of the
whole ``flwr run``. Run it from two checkouts to compare code versions on the same machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

UNITS = ("u0", "u1", "u2")


def run_mode(mode: str, rounds: int, folder: Path) -> tuple[list[float], float]:
    from privacy.keys import init_keys
    from simulations.generator import GeneratorConfig, generate, write_units
    from tests.deployment.cluster import Cluster, wait_for

    data = generate(GeneratorConfig(n_users=1500, n_units=3, days=365, start=dt.date(2024, 1, 1), seed=1))
    write_units(data, folder / "data")
    init_keys(folder / "keys")
    cluster = Cluster(folder, folder / "keys")
    try:
        for unit in UNITS:
            cluster.make_unit_key(unit)
        cluster.start_superlink()
        cluster.connect()
        assert cluster.register(*UNITS).returncode == 0
        for i, unit in enumerate(UNITS):
            budget = {"epsilon_budget": 100.0} if mode == "user" else {}   # a unit with a budget refuses non-DP runs
            cluster.start_unit(unit, cluster.write_unit(unit, folder / "data" / f"events_unit_{i}.parquet", **budget))
        wait_for(lambda: cluster.online_units() >= 3, 300, "three units online", [cluster.log(u) for u in UNITS])
        out = folder / "run"
        privacy = "privacy='user' target-epsilon=4.0 population=1500" if mode == "user" else "privacy='none'"
        started = time.perf_counter()
        run = cluster.flwr_run("run", f"num-server-rounds={rounds} output-dir='{out}' dataset='' "
                                      "cutoff='2024-10-01' horizon-days=90 min-available-units=3 min-fit-units=3 "
                                      f"round-timeout-s=600.0 {privacy}")
        run.wait(timeout=3600)
        total = time.perf_counter() - started
        if run.returncode != 0 or not (out / "rounds.jsonl").exists():
            raise SystemExit(cluster.log("run").read_text(errors="replace")[-3000:])
        records = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
        return [float(r["seconds"]) for r in records], total
    finally:
        cluster.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--modes", nargs="+", default=["none", "user"], choices=["none", "user"])
    args = parser.parse_args()
    print(f"command: {' '.join(sys.argv)}  (code: {ROOT})")
    print(f"machine: {os.cpu_count()} cores, load before {os.getloadavg()[0]:.2f}")
    for mode in args.modes:
        with tempfile.TemporaryDirectory() as tmp:
            seconds, total = run_mode(mode, args.rounds, Path(tmp))
        middle = seconds[1:-1] or seconds
        print(f"privacy={mode}: median round {statistics.median(middle):.1f} s (rounds 2..{args.rounds - 1}); "
              f"whole flwr run {total:.0f} s; rounds {[round(s, 1) for s in seconds]}; "
              f"load now {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
