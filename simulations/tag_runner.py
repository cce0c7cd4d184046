"""``fedseg tags`` in simulation: federated tags over simulated units (real ServerApp/ClientApp on
Flower's simulation engine). Units keep ``tags_<unit>.parquet`` in ``<out>/units``; the coordinator
writes ``<out>/tags.json``. A research check compares the prevalence with the pooled computation."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedseg.config import TagPlan
from fedseg.io import write_json
from simulations.runner import SimulationConfig, dataset_id, prepare_federation


def run_tag_job(data_cfg: SimulationConfig, plan: TagPlan, verbose: bool = False, ledger: Path | None = None,
                on_start: Callable[[TagPlan, Any], None] | None = None) -> dict[str, Any]:
    """The federated tag report of the configured data; returns and writes ``tags.json``."""
    from simulations.jobs import run_coordinator_job
    from fedseg.tags import load_rules
    from server.tags import run_tags

    load_rules(plan.tags_file)   # a bad rule is one line before any unit starts
    started = time.perf_counter()
    out = Path(data_cfg.out)
    fed = prepare_federation(data_cfg, out)
    plan = plan.model_copy(update={"cutoff": plan.cutoff or fed.events["ts"].max().date(),
                                   "min_units": len(fed.files), "population": max(int(len(fed.features)), 1)})
    if on_start is not None:
        on_start(plan, fed)
    report = run_coordinator_job(lambda grid: run_tags(grid, plan), fed.files, out, "tag report", ledger=ledger,
                                 dataset_id=dataset_id(data_cfg), verbose=verbose)
    report["data"] = {"dataset": data_cfg.dataset, "units": fed.unit_stats}
    report["pooled_comparison"] = compare_with_pooled(report, out / "units")
    report["seconds"] = round(time.perf_counter() - started, 2)
    write_json(report, out / "tags.json")
    return report


def compare_with_pooled(report: dict[str, Any], unit_dir: Path) -> dict[str, Any]:
    """Prevalence from the units' per-user files (only a simulation can read them all) against the
    report: equal without noise; the DP error with it."""
    files = sorted(unit_dir.glob("tags_unit_*.parquet"))
    users = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    errors = {t["tag"]: abs(float(users[t["tag"]].mean()) - (t["prevalence"] or 0.0)) * 100 for t in report["tags"]}
    return {"users": int(len(users)), "prevalence_abs_error_pp": errors,
            "max_prevalence_abs_error_pp": float(np.max(list(errors.values()))) if errors else 0.0}
