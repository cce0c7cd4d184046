"""``fedseg segment`` in simulation: federated segmentation over simulated units.

Runs the real Flower ServerApp/ClientApp pair (:func:`server.segmentation.run_segmentation`
and the ``seg_*`` query handlers of :mod:`clients.client_app`) on Flower's simulation engine.
Units write their per-user segment files and action lists into ``<out>/units``; the
coordinator writes the aggregate ``<out>/segments.json``. Because a simulation can pool what
real units cannot, it also reports how the federated segments agree with centralised
k-means on the pooled activity vectors (adjusted Rand index), a research check only.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedseg.io import write_json
from fedseg.config import SegmentationPlan
from simulations.runner import SimulationConfig, dataset_id, prepare_federation


def run_segment_job(data_cfg: SimulationConfig, plan: SegmentationPlan, verbose: bool = False,
                    compare_centralised: bool = True, default_previous_days: int | None = None,
                    ledger: Path | None = None, on_start: Callable[[Any, Any], None] | None = None,
                    unit_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Federated segmentation of the configured data; returns and writes ``segments.json`` and its
    pictures (``segments.png``, ``transitions.png``).

    The plan's cutoff and horizon are taken from the data (as ``fedseg simulate`` does); with
    ``default_previous_days`` and no previous cutoff, the transition matrix compares with the
    state that many days earlier. ``ledger``: the units' privacy ledger; ``on_start(plan, federation)``
    is called once the data is split (the console header). ``unit_options``: what each simulated
    unit holds on its own premises (``scores_path``, ``playbook``, ``contact_log_path``,
    ``dp_research_seed``; see :func:`clients.client_app.make_client_app`).
    """
    from simulations.jobs import run_coordinator_job
    from server.segmentation import run_segmentation

    started = time.perf_counter()
    out = Path(data_cfg.out)
    fed = prepare_federation(data_cfg, out)
    update: dict[str, Any] = {"cutoff": fed.cutoff, "horizon_days": fed.horizon_days}
    if plan.previous_cutoff is None and default_previous_days:
        update["previous_cutoff"] = fed.cutoff - dt.timedelta(days=default_previous_days)
    update["min_units"] = len(fed.files)
    update["population"] = max(int(len(fed.features)), 1)
    plan = plan.model_copy(update=update)
    if on_start is not None:
        on_start(plan, fed)
    report = run_coordinator_job(lambda grid: run_segmentation(grid, plan), fed.files, out, "segmentation",
                                 ledger=ledger, dataset_id=dataset_id(data_cfg), verbose=verbose,
                                 unit_options=unit_options)
    report["data"] = {"dataset": data_cfg.dataset, "units": fed.unit_stats, "users": int(len(fed.features))}
    if compare_centralised:
        report["centralised_comparison"] = compare_with_centralised(out / "units", fed.features, report["k"],
                                                                     data_cfg.seed)
    from simulations.figures import segment_charts

    report["figures"] = [p.name for p in segment_charts(report, out)]
    report["seconds"] = round(time.perf_counter() - started, 2)
    write_json(report, out / "segments.json")
    return report


def local_assignments(unit_dir: Path) -> pd.DataFrame:
    """Every unit's per-user segment file (only a simulation can read them all)."""
    files = sorted(unit_dir.glob("segments_unit_*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def compare_with_centralised(unit_dir: Path, features: pd.DataFrame, k: int, seed: int) -> dict[str, Any]:
    """ARI between the federated segments and k-means (k-means++, 10 starts) on pooled vectors."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    from clients.segments import activity_vectors

    assigned = local_assignments(unit_dir).set_index("user_id")["segment"]
    vectors = activity_vectors(features)
    central = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(vectors)
    fed_labels = assigned.reindex(features["user_id"]).to_numpy()
    ok = ~pd.isna(fed_labels)
    fed_inertia = float(sum(((vectors[ok][fed_labels[ok] == c] - vectors[ok][fed_labels[ok] == c].mean(axis=0)) ** 2).sum()
                            for c in np.unique(fed_labels[ok].astype(int))))
    return {
        "adjusted_rand_index": float(adjusted_rand_score(central.labels_[ok], fed_labels[ok].astype(int))),
        "centralised_inertia": float(central.inertia_),
        "federated_inertia": fed_inertia,
        "inertia_ratio": fed_inertia / float(central.inertia_),
        "users_compared": int(ok.sum()),
    }
