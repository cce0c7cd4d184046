"""What one deployed message costs a unit: a fresh ``flwr-clientapp`` process per message.

Flower 1.42's SuperNode starts a new ClientApp process for every message, so each message pays
for Python's start, the imports of the app and what its handler needs, reading the unit's data
and the work itself. This script does what that process does (import ``clients.client_app``,
hand one message to the app) in a fresh interpreter, several times, and prints wall and CPU
seconds per phase and which heavy libraries the message imported.

Run: .venv/bin/python bench/bench_unit_message.py [--users 500] [--repeats 3]

Messages: a user-level DP training round (Opacus DP-SGD, charged to the unit's ledger after the
unit accepted the run's plan), and a training round without DP that also evaluates the incoming
model (``evaluate-incoming``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
HEAVY = ("torch", "pandas", "opacus", "scipy", "dp_accounting", "sklearn", "cryptography")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(spec: dict) -> dict:
    """One message in this (fresh) process, as flwr-clientapp would handle it."""
    t0, c0 = time.perf_counter(), _cpu()
    from flwr.app import ArrayRecord, Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from clients.client_app import app
    t1, c1 = time.perf_counter(), _cpu()
    from fedseg import protocol
    from fedseg.models import build_model
    from fedseg.protocol import RoundConfig
    from server.training import _config_record

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    cfg = RoundConfig.model_validate(spec["config"])
    records = {protocol.ARRAYS: ArrayRecord(build_model(cfg.model, seed=0).state_dict()),
               protocol.CONFIG: _config_record(cfg)}
    context = Context(run_id=1, node_id=1, node_config=spec["node"], state=RecordDict(), run_config={})
    reply = app(Message(content=RecordDict(records), dst_node_id=1, message_type=protocol.TRAIN), context)
    t2, c2 = time.perf_counter(), _cpu()
    if reply.has_error():
        raise SystemExit(reply.error.reason)
    return {"import_s": t1 - t0, "import_cpu": c1 - c0, "handle_s": t2 - t1, "handle_cpu": c2 - c1,
            "heavy": sorted(m for m in HEAVY if m in sys.modules)}


def setup(folder: Path, users: int) -> tuple[dict, dict, dict]:
    """A unit's data, ledger and node config; the plan accepted; the DP and plain round configs."""
    from fedseg.datasets import CALIBRATION_END, HOLDOUT_DAYS, load_cdnow
    from fedseg.scaling import FEATURE_CAPS
    from privacy.training_dp import TrainingPrivacy

    events = load_cdnow()
    keep = events["user_id"].drop_duplicates().sample(users, random_state=0)
    events[events["user_id"].isin(keep)].reset_index(drop=True).to_parquet(folder / "events.parquet")
    node = {"unit-id": "u0", "data-path": str(folder / "events.parquet"),
            "ledger-path": str(folder / "ledger.sqlite"), "partition-id": 0}
    privacy = TrainingPrivacy.plan("user", rounds=5, delta=1e-5, target_epsilon=4.0)
    common = {"cutoff": CALIBRATION_END.isoformat(), "horizon_days": HOLDOUT_DAYS,
              "scaler_mean": [0.0] * len(FEATURE_CAPS), "scaler_std": [float(c) for c in FEATURE_CAPS]}
    dp = {**common, "privacy": "user", "noise_multiplier": privacy.noise_multiplier,
          "sample_rate": privacy.sample_rate, "steps_per_round": privacy.steps_per_round,
          "max_grad_norm": privacy.max_grad_norm, "delta": privacy.delta, "run_id": "bench",
          "scaler_sigma": privacy.scaler_sigma, "eval_sigma": privacy.eval_sigma, "server_round": 1}
    plain = {**common, "server_round": 1, "evaluate_incoming": True}
    _accept(node, privacy)
    return node, dp, plain


def _accept(node: dict, privacy) -> None:  # noqa: ANN001
    """The unit accepts the run's plan (the query.privacy message), in this process."""
    from clients.unit_privacy import unit_account

    class _Context:
        node_config = node
        state = None

    account = unit_account(_Context(), "u0", "bench", Path(node["ledger-path"]))
    releases = privacy.releases(privacy.rounds)
    from privacy.accounting import epsilon

    account.accept("bench", "training", privacy.delta, epsilon(releases, privacy.delta), releases)
    account.charge("bench", "training", releases[0])  # the start-up query


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    print(f"command: {' '.join(sys.argv)}")
    print(f"machine: {os.cpu_count()} cores, load before {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        node, dp, plain = setup(Path(tmp), args.users)
        node["dataset-id"] = "bench"
        for label, config in (("DP-SGD train", dp), ("plain train + evaluation", plain)):
            runs = []
            for k in range(args.repeats):
                spec = {"node": node, "config": {**config, "server_round": k + 2}}
                t0 = time.perf_counter()
                out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                                     text=True, cwd=ROOT, check=True)
                result = json.loads(out.stdout.strip().splitlines()[-1])
                result["process_s"] = time.perf_counter() - t0
                runs.append(result)
            med = {k: statistics.median(r[k] for r in runs)
                   for k in ("process_s", "import_s", "import_cpu", "handle_s", "handle_cpu")}
            print(f"{label:>26}: process {med['process_s']:.2f} s wall; app import {med['import_s']:.2f} s "
                  f"({med['import_cpu']:.2f} s cpu); handler {med['handle_s']:.2f} s ({med['handle_cpu']:.2f} s cpu); "
                  f"heavy modules loaded: {', '.join(runs[-1]['heavy'])}  (median of {args.repeats})", flush=True)


if __name__ == "__main__":
    main()
