"""``fedseg kpis`` in simulation: the federated KPI report over simulated units.

Runs the real Flower ServerApp/ClientApp pair (:func:`server.kpis.run_kpis` and the ``query.kpis``
handler of :mod:`clients.client_app`) on Flower's simulation engine and writes ``<out>/kpis.json``
and the plots. Because a simulation can pool what real units cannot, the report also carries the
same KPIs computed on the pooled events and the error of the federated report against them
(zero without noise; the DP error with ``--epsilon``): a research check only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedseg.config import KpiPlan
from fedseg.io import write_json
from simulations.runner import SimulationConfig, dataset_id, prepare_federation


def run_kpi_job(data_cfg: SimulationConfig, plan: KpiPlan, verbose: bool = False, ledger: Path | None = None,
                on_start: Callable[[KpiPlan, Any], None] | None = None, plots: bool = True) -> dict[str, Any]:
    """The federated KPI report of the configured data; returns and writes ``kpis.json``.

    The report range defaults to the data's first and last day; the default delta uses the
    number of users (a simulation knows it)."""
    from simulations.jobs import run_coordinator_job
    from server.kpis import run_kpis

    started = time.perf_counter()
    out = Path(data_cfg.out)
    fed = prepare_federation(data_cfg, out)
    plan = plan.model_copy(update={
        "start": plan.start or fed.events["ts"].min().date(), "end": plan.end or fed.events["ts"].max().date(),
        "min_units": len(fed.files), "population": max(int(fed.events["user_id"].nunique()), 1)})
    KpiPlan.model_validate(plan.model_dump())  # the range filled in must still be consistent
    if on_start is not None:
        on_start(plan, fed)
    t_fed = time.perf_counter()
    report = run_coordinator_job(lambda grid: run_kpis(grid, plan), fed.files, out, "KPI report",
                                 ledger=ledger, dataset_id=dataset_id(data_cfg), verbose=verbose)
    federated_seconds = time.perf_counter() - t_fed
    report["data"] = {"dataset": data_cfg.dataset, "units": fed.unit_stats, "events": int(len(fed.events)),
                      "users": int(fed.events["user_id"].nunique())}
    pooled = pooled_report(fed.events, plan)
    report["pooled_comparison"] = compare_reports(report, pooled)
    if plots:
        from simulations.kpi_plots import plot_report

        report["plots"] = [str(p) for p in plot_report(report, out)]
    report["seconds"] = {"federated": round(federated_seconds, 2), "total": round(time.perf_counter() - started, 2)}
    write_json(report, out / "kpis.json")
    return report


def pooled_report(events: pd.DataFrame, plan: KpiPlan) -> dict[str, Any]:
    """The same report computed on the pooled events, every active day kept (simulation only)."""
    from clients.kpis import kpi_tables, spec_from_config
    from server.kpis import kpi_config, kpi_report

    config = kpi_config(plan.model_copy(update={"epsilon": None, "delta": None}), "pooled")
    return kpi_report(plan, kpi_tables(events, spec_from_config(config)))


def retention_errors_pp(federated: dict[str, Any], pooled: dict[str, Any]) -> np.ndarray:
    """|federated - pooled| share in percentage points over the cells ``k >= 1`` that both report."""
    pairs = [(f, p) for fc, pc in zip(federated["retention"]["cohorts"], pooled["retention"]["cohorts"])
             for f, p in zip(fc["active_share"][1:], pc["active_share"][1:]) if f is not None and p is not None]
    return np.abs(np.array([f - p for f, p in pairs], dtype=float)) * 100


def compare_reports(federated: dict[str, Any], pooled: dict[str, Any]) -> dict[str, Any]:
    """Errors of the federated report against the pooled one: retention cells in percentage points
    (``k >= 1``; ``k = 0`` is 1 by definition), activity as absolute and relative errors per day,
    churn rates in percentage points."""
    ret = retention_errors_pp(federated, pooled)
    sizes = np.abs(np.array([c["size"] for c in federated["retention"]["cohorts"]]) -
                   np.array([c["size"] for c in pooled["retention"]["cohorts"]]))
    out: dict[str, Any] = {
        "retention_cells": int(len(ret)),
        "retention_median_abs_error_pp": float(np.median(ret)) if len(ret) else 0.0,
        "retention_max_abs_error_pp": float(ret.max()) if len(ret) else 0.0,
        "cohort_size_max_abs_error": float(sizes.max()) if len(sizes) else 0.0,
    }
    for name in ("dau", "wau", "mau"):
        f, p = np.asarray(federated["activity"][name]), np.asarray(pooled["activity"][name])
        err = np.abs(f - p)
        out[f"{name}_median_abs_error"] = float(np.median(err))
        out[f"{name}_median_relative_error"] = float(np.median(err / np.maximum(p, 1.0)))
        out[f"{name}_max_abs_error"] = float(err.max())
    rates = [(fs["segments"][k]["churn_rate"], ps["segments"][k]["churn_rate"])
             for fs, ps in zip(federated["churn_by_segment"]["snapshots"], pooled["churn_by_segment"]["snapshots"])
             for k in ps["segments"] if ps["segments"][k]["churn_rate"] is not None
             and fs["segments"][k]["churn_rate"] is not None and ps["segments"][k]["users"] >= 100]
    churn = np.abs(np.array([f - p for f, p in rates])) * 100 if rates else np.zeros(0)
    out["churn_rate_cells"] = int(len(churn))
    out["churn_rate_median_abs_error_pp"] = float(np.median(churn)) if len(churn) else 0.0
    out["note"] = ("simulation only: the pooled events are read to check the federated report; churn-rate cells "
                   "with at least 100 users")
    return out
