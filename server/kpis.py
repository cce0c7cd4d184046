"""Federated monitoring KPIs, coordinator side: one ``query.kpis`` exchange, tables summed.

Each unit answers with its KPI tables (:mod:`clients.kpis`; definitions in :mod:`fedseg.kpis`):
DAU, WAU and MAU per report day, the packed cohort x period retention counts and users and
churned users by snapshot and lifecycle stage. Users belong to one unit, so the sums are the
pooled tables exactly; derived figures (stickiness DAU/MAU, retention shares, churn rates) are
computed from the sums.

Privacy (``KpiPlan.epsilon``): each table is a Gaussian mechanism that every unit applies itself
with the sensitivities of :func:`fedseg.kpis.table_sensitivities` (activity bounded by keeping at
most ``max_active_days`` active days per user). The total budget is split over the tables by
:class:`fedseg.config.KpiBudget` (shares of zCDP rho, :func:`privacy.accounting.split_gaussian_budget`)
so that the accountant gives exactly the target epsilon. Every unit accepts the plan first
(:func:`server.grid.agree_privacy`) and charges its releases to its own ledger before answering.
The merged noise has standard deviation ``sigma x sqrt(units)`` per cell. Noisy counts are clipped
at 0 and shares to [0, 1] in the report (post-processing).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, RecordDict
from flwr.serverapp import Grid

from fedseg import protocol
from fedseg.config import LIFECYCLE_STAGES, KpiPlan
from fedseg.errors import FedsegError
from fedseg.kpis import TABLES, period_label, periods, snapshot_days, triangle_offsets, triangle_size
from privacy.accounting import default_delta, epsilon
from privacy.kpis_dp import TASK, kpi_releases, kpi_sigmas
from server.grid import agree_privacy, ask, wait_for_units

#: Longest list a unit may send in a KPI reply (the guard's limit for ``query.kpis``).
MAX_CELLS = protocol.MAX_LIST_LEN_BY_TYPE[protocol.KPIS]


class KpiPlanError(FedsegError):
    """The report cannot be made as planned (range, sizes)."""


def kpi_config(plan: KpiPlan, run_id: str) -> dict[str, Any]:
    """The ``query.kpis`` settings (without noise) of ``plan``, whose range must be set."""
    if plan.start is None or plan.end is None:
        raise KpiPlanError("the KPI report needs its first and last day (--start, --end; kpi-start, kpi-end)")
    first, last = periods(plan.start, plan.end, plan.granularity)
    days, cells = (plan.end - plan.start).days + 1, triangle_size(last - first + 1)
    if max(days, cells) > MAX_CELLS:
        raise KpiPlanError(f"the report from {plan.start} to {plan.end} needs {days:,} daily values and {cells:,} "
                           f"retention cells; a unit sends at most {MAX_CELLS:,} per table: choose a later --start"
                           + (" or --granularity month" if plan.granularity == "week" else ""))
    config: dict[str, Any] = {"start": plan.start.isoformat(), "end": plan.end.isoformat(),
                              "granularity": plan.granularity, "churn-window-days": plan.churn_window_days,
                              "cutoff": plan.end.isoformat(), "horizon-days": plan.churn_window_days,
                              "model": "mlp", "dataset": plan.dataset, protocol.RUN_ID: run_id}
    if plan.epsilon is not None:
        config["max-active-days"] = plan.max_active_days
    return config


def noise_config(plan: KpiPlan, config: dict[str, Any]) -> tuple[dict[str, float], float, float]:
    """``sigma-<table>`` keys, the report's epsilon (by the accountant) and delta."""
    delta = plan.delta if plan.delta is not None else default_delta(plan.population)
    if plan.epsilon is None:
        return {}, 0.0, delta
    sigmas = kpi_sigmas(plan.epsilon, delta, plan.budget.model_dump(), config)
    keys = {f"sigma-{name}": sigma for name, sigma in sigmas.items()}
    return keys, epsilon(kpi_releases({**config, **keys}), delta), delta


def run_kpis(grid: Grid, plan: KpiPlan, nodes: list[int] | None = None) -> dict[str, Any]:
    """Ask every unit for its KPI tables once; return the ``kpis.json`` content."""
    run_id = uuid.uuid4().hex[:12]
    config = kpi_config(plan, run_id)   # a plan without a range fails before waiting for units
    nodes = nodes or wait_for_units(grid, plan.min_units, plan.timeout_s)
    sigmas, eps, delta = noise_config(plan, config)
    config.update(sigmas)
    record = ConfigRecord(config)
    if plan.epsilon is not None:
        agree_privacy(grid, nodes, run_id, TASK, delta, eps, kpi_releases(config), record, plan.timeout_s)
    answers = ask(grid, nodes, protocol.KPIS, RecordDict({protocol.CONFIG: record}), plan.timeout_s)
    sums = {name: np.sum([np.asarray(a[protocol.METRICS][name], dtype=float) for a in answers.values()], axis=0)
            for name in protocol.ALLOWED_METRICS[protocol.KPIS]}
    merged = float(sigmas.get("sigma-retention", 0.0)) * float(np.sqrt(len(answers)))
    report = kpi_report(plan, sums, retention_noise_std=merged)
    report["units"] = len(answers)
    report["privacy"] = {
        "epsilon": eps if plan.epsilon is not None else None, "delta": delta if plan.epsilon is not None else None,
        "accountant": "RDP (dp-accounting) over one Gaussian release per table, add/remove one end user; units "
                      "add the noise",
        "max_active_days": plan.max_active_days if plan.epsilon is not None else None,
        "sigmas_per_unit": {k.removeprefix("sigma-"): v for k, v in sigmas.items()},
        "merged_noise_std": {k.removeprefix("sigma-"): v * float(np.sqrt(len(answers))) for k, v in sigmas.items()},
    }
    return report


def kpi_report(plan: KpiPlan, sums: dict[str, np.ndarray], retention_noise_std: float = 0.0) -> dict[str, Any]:
    """The report from summed tables (exact or noisy): activity, retention, churn by segment.

    A cohort's shares are reported when its (noisy) size is at least 1 and at least four standard
    deviations of the merged noise (``retention_noise_std``; an empty cohort passes with probability
    3e-5); below that they are null: under noise
    an empty cohort reads as a few dozen users whose shares would be noise."""
    assert plan.start is not None and plan.end is not None
    n_days = (plan.end - plan.start).days + 1
    dau, wau, mau = (np.maximum(sums[name], 0.0) for name in ("dau", "wau", "mau"))
    days = [(plan.start + dt.timedelta(days=i)).isoformat() for i in range(n_days)]
    stickiness = np.where(mau >= 1.0, np.minimum(dau / np.maximum(mau, 1.0), 1.0), np.nan)
    first, last = periods(plan.start, plan.end, plan.granularity)
    n = last - first + 1
    counts = np.maximum(sums["retention"], 0.0)
    min_size = max(1.0, 4.0 * retention_noise_std)
    cohorts = []
    for i, offset in enumerate(triangle_offsets(n)):
        row = counts[offset:offset + n - i]
        size = float(row[0])
        shares = [float(min(v / size, 1.0)) if size >= min_size else None for v in row]
        if size >= min_size:
            shares[0] = 1.0  # by definition: every cohort user is active in its first period
        cohorts.append({"cohort": period_label(first + i, plan.granularity), "size": size,
                        "active_share": shares, "active": [float(v) for v in row]})
    stages = len(LIFECYCLE_STAGES)
    users = np.maximum(sums["churn-users"], 0.0).reshape(-1, stages)
    churned = np.maximum(sums["churn-churned"], 0.0).reshape(-1, stages)
    snapshots = []
    for day, u, c in zip(snapshot_days(plan.start, plan.end, plan.churn_window_days), users, churned):
        segments = {stage: {"users": float(u[j]), "churned": float(min(c[j], u[j])),
                            "churn_rate": float(min(c[j] / u[j], 1.0)) if u[j] >= 1 else None}
                    for j, stage in enumerate(LIFECYCLE_STAGES)}
        total_u, total_c = float(u.sum()), float(np.minimum(c, u).sum())
        segments["all"] = {"users": total_u, "churned": total_c,
                           "churn_rate": total_c / total_u if total_u >= 1 else None}
        snapshots.append({"date": day.isoformat(), "segments": segments})
    return {
        "period": {"start": plan.start.isoformat(), "end": plan.end.isoformat(), "days": n_days},
        "activity": {"days": days, "dau": dau.tolist(), "wau": wau.tolist(), "mau": mau.tolist(),
                     "stickiness": [None if np.isnan(s) else float(s) for s in stickiness]},
        "retention": {"granularity": plan.granularity, "min_reported_size": min_size, "cohorts": cohorts},
        "churn_by_segment": {"segment": "lifecycle_stage", "window_days": plan.churn_window_days,
                             "churn": "no purchase in the window after the snapshot", "snapshots": snapshots},
        "tables": list(TABLES),
    }
