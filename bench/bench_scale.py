"""Scale: N simulated units x R rounds on Flower's simulation engine (MLP), wall time and peak
memory (this process plus Ray workers), for several N.

Run: .venv/bin/python bench/bench_scale.py [--units 10 30 100 300] [--rounds 10] [--users-per-unit 200]

Each unit holds ``users-per-unit`` generated users (simulations.generator); the data are made
and written before the clock starts; the figure covers the whole Flower run (Ray start,
feature query, round-0 evaluation, R rounds of training and evaluation).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.resources import measure  # noqa: E402


def run(units: int, rounds: int, users_per_unit: int) -> tuple[float, float, float]:
    from flwr.simulation import run_simulation

    from clients.client_app import make_client_app
    from server.server_app import make_server_app
    from fedseg.config import TrainingPlan
    from simulations.generator import GeneratorConfig, generate, write_units
    from simulations.runner import quiet_flower

    with tempfile.TemporaryDirectory() as tmp:
        data = generate(GeneratorConfig(n_users=units * users_per_unit, n_units=units, seed=0))
        write_units(data, Path(tmp), fmt="parquet")
        files = [Path(tmp) / f"events_unit_{k}.parquet" for k in range(units)]
        end = data.events["ts"].max().date()
        plan = TrainingPlan(num_rounds=rounds, cutoff=end - dt.timedelta(days=60), horizon_days=60,
                            min_available_units=units, min_fit_units=max(2, int(units * 0.9)),
                            output_dir=Path(tmp) / "run", local_epochs=1)
        history = []
        with measure() as m:
            run_simulation(server_app=make_server_app(plan, on_round=history.append),
                           client_app=make_client_app(files), num_supernodes=units,
                           backend_config=quiet_flower(False))
        auc = history[-1].get("auc", float("nan")) if history else float("nan")
        return m.seconds, m.peak_rss_gib, auc


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--units", type=int, nargs="+", default=[10, 30, 100, 300])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--users-per-unit", type=int, default=200)
    args = parser.parse_args()
    print(f"command: {' '.join(sys.argv)}")
    print(f"machine: {os.cpu_count()} cores, load before {os.getloadavg()[0]:.2f}")
    for units in args.units:
        seconds, peak, auc = run(units, args.rounds, args.users_per_unit)
        print(f"{units:>4} units x {args.rounds} rounds: {seconds:7.1f} s wall ({seconds / args.rounds:5.2f} s/round "
              f"incl. start-up), peak RSS {peak:5.2f} GiB, final AUC {auc:.4f}", flush=True)


if __name__ == "__main__":
    main()
