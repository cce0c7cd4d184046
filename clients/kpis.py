"""A unit's KPI tables from its own events: activity (DAU, WAU, MAU), cohort retention, churn by
lifecycle stage over time (definitions and sensitivities in :mod:`fedseg.kpis`).

Everything is a count of distinct users, so the tables of units whose users are disjoint add up
to the tables of the pooled data exactly. Under DP the unit keeps at most ``max_active_days`` of
each user's active days in the activity tables (a random subset drawn with the unit's private
generator) and adds its own Gaussian noise to every table (:func:`noisy_tables`).
Vectorised: sorts of (user, day) keys and ``bincount``; no Python loop per user or event.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd

from clients.features import DAY_NS, build_features
from clients.segments import add_noise
from fedseg.config import LIFECYCLE_STAGES, FeatureConfig
from fedseg.kpis import (ACTIVITY_TABLES, WINDOW_DAYS, Granularity, day_index, period_of_days, periods,
                         snapshot_days, triangle_offsets, triangle_size)


@dataclass(frozen=True)
class KpiSpec:
    """What a report asks of a unit (the public settings of :class:`fedseg.config.KpiPlan`)."""

    start: dt.date
    end: dt.date
    granularity: Granularity = "month"
    churn_window_days: int = 90
    max_active_days: int | None = None  # None: every active day (exact report)

    @property
    def n_days(self) -> int:
        return (self.end - self.start).days + 1


def _active_keys(events: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct (user code, day index) pairs sorted by user then day, and the users' first day."""
    codes, _ = pd.factorize(events["user_id"])
    days = np.floor_divide(events["ts"].to_numpy(dtype="datetime64[ns]").astype(np.int64), DAY_NS)
    keys = np.unique(codes.astype(np.int64) * (1 << 32) + (days - days.min() if len(days) else days))
    base = int(days.min()) if len(days) else 0
    user, day = keys >> 32, (keys & 0xFFFFFFFF) + base
    first = np.full(int(codes.max()) + 1 if len(codes) else 0, np.iinfo(np.int64).max)
    np.minimum.at(first, user, day)
    return user, day, first


def _keep_at_most(user: np.ndarray, day: np.ndarray, limit: int, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray]:
    """A uniformly random subset of at most ``limit`` days per user (keys stay sorted)."""
    order = np.lexsort((rng.random(len(user)), user))
    starts = np.r_[0, np.flatnonzero(np.diff(user[order])) + 1]
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    keep = np.sort(order[rank < limit])
    return user[keep], day[keep]


def window_counts(user: np.ndarray, day: np.ndarray, first_day: int, n_days: int, window: int) -> np.ndarray:
    """Users active on at least one day of ``[d - window + 1, d]`` for each report day ``d``.

    Keys are sorted by user then day; day ``a`` covers ``[a, a + window - 1]``, and the days a user's
    windows newly cover start at ``max(a, previous a + window)`` (a difference array per cell)."""
    rel = day - first_day
    prev = np.r_[np.iinfo(np.int64).min // 2, rel[:-1]]
    same = np.r_[False, user[1:] == user[:-1]]
    begin = np.where(same, np.maximum(rel, prev + window), rel)
    stop = rel + window
    diff = np.zeros(n_days + window + 1, dtype=np.int64)
    np.add.at(diff, begin, 1)
    np.add.at(diff, stop, -1)
    return np.cumsum(diff)[:n_days].astype(np.float64)


def activity_tables(events: pd.DataFrame, spec: KpiSpec, rng: np.random.Generator | None = None
                    ) -> dict[str, np.ndarray]:
    """DAU, WAU and MAU for every day of the report (length ``spec.n_days`` each)."""
    user, day, _ = _active_keys(events)
    first = day_index(spec.start)
    inside = (day >= first) & (day < first + spec.n_days)
    user, day = user[inside], day[inside]
    if spec.max_active_days is not None:
        user, day = _keep_at_most(user, day, spec.max_active_days, rng or np.random.default_rng())
    return {name: window_counts(user, day, first, spec.n_days, WINDOW_DAYS[name]) for name in ACTIVITY_TABLES}


def retention_table(events: pd.DataFrame, spec: KpiSpec) -> np.ndarray:
    """Packed cohort x period counts (:func:`fedseg.kpis.triangle_offsets`): cohort ``i`` is the
    report's ``i``-th period, cell ``(i, k)`` the users of cohort ``i`` active in period ``i + k``.
    Users whose first event lies outside the report belong to no cohort."""
    user, day, first_day = _active_keys(events)
    p0, p_last = periods(spec.start, spec.end, spec.granularity)
    n = p_last - p0 + 1
    lo, hi = day_index(spec.start), day_index(spec.end)
    cohort = period_of_days(first_day, spec.granularity) - p0  # per user
    ok = (day >= lo) & (day <= hi) & (first_day[user] >= lo) & (first_day[user] <= hi)
    k = period_of_days(day[ok], spec.granularity) - p0 - cohort[user[ok]]
    user_period = np.unique(user[ok] * (n + 1) + k)  # distinct (user, k): one count per period
    u, kk = user_period // (n + 1), user_period % (n + 1)
    cells = triangle_offsets(n)[cohort[u]] + kk
    return np.bincount(cells, minlength=triangle_size(n)).astype(np.float64)


def churn_table(events: pd.DataFrame, spec: KpiSpec) -> tuple[np.ndarray, np.ndarray]:
    """Users and churned users by snapshot and lifecycle stage, ``[S, stages]`` each."""
    snaps = snapshot_days(spec.start, spec.end, spec.churn_window_days)
    users = np.zeros((len(snaps), len(LIFECYCLE_STAGES)))
    churned = np.zeros_like(users)
    first_ts = events["ts"].min() if len(events) else None
    for i, snap in enumerate(snaps):
        if first_ts is None or first_ts >= pd.Timestamp(snap + dt.timedelta(days=1)):
            continue  # no history yet at this snapshot
        features = build_features(events, FeatureConfig(cutoff=snap, horizon_days=spec.churn_window_days))
        stage = features["lifecycle_stage"].cat.codes.to_numpy()
        users[i] = np.bincount(stage, minlength=len(LIFECYCLE_STAGES))
        churned[i] = np.bincount(stage, weights=features["churned"].to_numpy(float), minlength=len(LIFECYCLE_STAGES))
    return users, churned


def kpi_tables(events: pd.DataFrame, spec: KpiSpec, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """Every table of the report, exact (before noise): the unit's answer and the pooled reference."""
    out = activity_tables(events, spec, rng)
    out["retention"] = retention_table(events, spec)
    users, churned = churn_table(events, spec)
    out["churn-users"], out["churn-churned"] = users.ravel(), churned.ravel()
    return out


def noisy_tables(tables: dict[str, np.ndarray], sigmas: dict[str, float], rng: np.random.Generator
                 ) -> dict[str, np.ndarray]:
    """Each table plus ``N(0, sigma^2)`` per cell; the churn table's two parts share ``sigmas['churn']``."""
    table_of = {"churn-users": "churn", "churn-churned": "churn"}
    return {name: add_noise(values, sigmas.get(table_of.get(name, name), 0.0), rng) for name, values in tables.items()}


def spec_from_config(config: dict) -> KpiSpec:  # type: ignore[type-arg]
    """The report settings of a ``query.kpis`` config (``max-active-days`` 0 or absent: keep every day)."""
    limit = int(config.get("max-active-days", 0))
    return KpiSpec(start=dt.date.fromisoformat(str(config["start"])), end=dt.date.fromisoformat(str(config["end"])),
                   granularity=str(config.get("granularity", "month")),  # type: ignore[arg-type]
                   churn_window_days=int(config.get("churn-window-days", 90)), max_active_days=limit or None)


def kpi_answer(events: pd.DataFrame, config: dict, rng: np.random.Generator) -> dict[str, list[float]]:  # type: ignore[type-arg]
    """The unit's reply to ``query.kpis``: every table, with the unit's own noise when asked.

    ``rng`` is the unit's private generator (it draws the kept active days and the noise)."""
    from fedseg.kpis import TABLES

    tables = kpi_tables(events, spec_from_config(config), rng)
    sigmas = {name: float(config.get(f"sigma-{name}", 0.0)) for name in TABLES}
    return {name: values.tolist() for name, values in noisy_tables(tables, sigmas, rng).items()}
