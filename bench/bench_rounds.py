"""Round time by privacy mode, as ratios to plain FedAvg, measured in one run of this script.

Run: .venv/bin/python bench/bench_rounds.py [--rounds 5] [--units 5] [--modes none client user] [--secagg]

CDNOW over 5 IID units, MLP, 2 local epochs (user mode: 2 / q Poisson steps per round,
q = 0.02, DP-SGD in Opacus). A round = training on every unit, aggregation and federated
evaluation, as the coordinator times it; the first round (data loading and caches) is
excluded and the median of the others is reported. ``--secagg`` adds plain FedAvg through
secure aggregation (privacy/secagg: five stages with the consistency round, three exchanges
per round from round 2).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def round_seconds(mode: str, rounds: int, units: int, secagg: bool = False) -> list[float]:
    from simulations.runner import SimulationConfig, run_simulation_job

    with tempfile.TemporaryDirectory() as tmp:
        extra = {"epsilon": 8.0} if mode != "none" else {}
        cfg = SimulationConfig.from_settings(units=units, rounds=rounds, privacy=mode, baselines=False,
                                             out=Path(tmp), secagg=secagg, **extra)
        summary = run_simulation_job(cfg)
        return [r["seconds"] for r in summary["metrics"]["rounds"] if r["round"] >= 2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--units", type=int, default=5)
    parser.add_argument("--modes", nargs="+", default=["none", "client", "user"])
    parser.add_argument("--secagg", action="store_true", help="also time plain FedAvg with secure aggregation")
    args = parser.parse_args()
    print(f"command: {' '.join(sys.argv)}")
    print(f"machine: {os.cpu_count()} cores, load before {os.getloadavg()[0]:.2f}")
    medians = {}
    runs = [(m, False) for m in args.modes] + ([("none", True)] if args.secagg else [])
    for mode, secagg in runs:
        times = round_seconds(mode, args.rounds, args.units, secagg)
        label = mode + (" + secagg" if secagg else "")
        medians[label] = statistics.median(times)
        print(f"{label:>14}: median round {medians[label]:.3f} s over rounds 2..{args.rounds} ({times})", flush=True)
    base = medians.get("none")
    if base:
        for label, value in medians.items():
            print(f"ratio {label:>14} / none: {value / base:.2f}")


if __name__ == "__main__":
    main()
