"""Monitoring KPIs both sides share: calendar periods, the tables a unit releases and what one
end user can change in each (the L2 sensitivities of the KPI report's Gaussian releases).

Definitions (a "day" is a UTC calendar day; a user is **active** on a day with at least one event
of any type on it):

- ``DAU(d)``: users active on day ``d``; ``WAU(d)``: users active on at least one of the 7 days
  ``d-6 .. d``; ``MAU(d)``: on at least one of the 30 days ``d-29 .. d`` (windows are cut at the
  report's first day); stickiness ``DAU / MAU``.
- **Cohort retention**: a user's cohort is the calendar month (or the Monday-based week) of their
  first event; ``active[c][k]`` counts the users of cohort ``c`` with at least one event in period
  ``c + k``, for ``k = 0`` up to the report's last period; ``active[c][0]`` is the cohort's size
  (the first event is in period 0) and ``active_share[k] = active[c][k] / size``.
- **Churn by segment over time**: at each month end ``t`` of the report whose window
  ``(t, t + W]`` lies inside it, every user with history is counted by lifecycle stage at ``t``
  (:func:`clients.features.lifecycle_stage`) and as churned when they make no purchase in the
  ``W`` days after ``t`` (the churn label of :mod:`clients.features`).

Sensitivities (add/remove one end user; every user belongs to one unit):

- activity: under DP a unit keeps at most ``L`` of each user's active days in the report
  (a uniformly random subset, drawn with the unit's private randomness), so one user changes at
  most ``L`` DAU cells, ``7 L`` WAU cells and ``30 L`` MAU cells, each by 1: squared L2
  sensitivities ``min(L, D)``, ``min(7 L, D)`` and ``min(30 L, D)`` for ``D`` report days;
- retention: one cohort row, at most one count per period: ``P`` (periods in the report);
- churn: one user count and at most one churned count per snapshot: ``2 S`` (``S`` snapshots).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final, Literal

import numpy as np

Granularity = Literal["month", "week"]

#: The tables of a KPI report, in release order (metric names of the ``query.kpis`` reply).
ACTIVITY_TABLES: Final = ("dau", "wau", "mau")
TABLES: Final = (*ACTIVITY_TABLES, "retention", "churn")
#: Window length in days of each activity table.
WINDOW_DAYS: Final = {"dau": 1, "wau": 7, "mau": 30}
#: Segments of the churn table: the lifecycle stages (fedseg.config.LIFECYCLE_STAGES order).
CHURN_METRICS: Final = ("churn-users", "churn-churned")
_EPOCH_MONDAY: Final = dt.date(1970, 1, 5)


def day_index(day: dt.date) -> int:
    """Days since 1970-01-01."""
    return (day - dt.date(1970, 1, 1)).days


def period_of_days(days: np.ndarray, granularity: Granularity) -> np.ndarray:
    """Period index of each day index (days since 1970-01-01): months since 1970-01 or
    Monday-based weeks since 1970-01-05."""
    days = np.asarray(days, dtype=np.int64)
    if granularity == "month":
        months = days.astype("datetime64[D]").astype("datetime64[M]").astype(np.int64)
        return months
    return np.floor_divide(days - day_index(_EPOCH_MONDAY), 7)


def period_label(period: int, granularity: Granularity) -> str:
    """``YYYY-MM`` for a month, the Monday ``YYYY-MM-DD`` for a week."""
    if granularity == "month":
        return str(np.datetime64(int(period), "M"))
    return (_EPOCH_MONDAY + dt.timedelta(days=7 * int(period))).isoformat()


def periods(start: dt.date, end: dt.date, granularity: Granularity) -> tuple[int, int]:
    """First and last period index of the report range."""
    first, last = period_of_days(np.array([day_index(start), day_index(end)]), granularity)
    return int(first), int(last)


def triangle_size(n_periods: int) -> int:
    """Cells of the packed retention table: cohort ``i`` (of ``P``) has ``P - i`` periods."""
    return n_periods * (n_periods + 1) // 2


def triangle_offsets(n_periods: int) -> np.ndarray:
    """Index of cell ``(i, 0)`` in the packed retention table, for each cohort ``i``."""
    lengths = np.arange(n_periods, 0, -1)
    return np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)


def snapshot_days(start: dt.date, end: dt.date, window_days: int) -> list[dt.date]:
    """Month ends ``t`` with ``start <= t`` and ``t + window_days <= end``: the churn snapshots."""
    out = []
    month = np.datetime64(start, "M")
    while True:
        last_day = (month + 1).astype("datetime64[D]").astype(dt.date) - dt.timedelta(days=1)
        if last_day + dt.timedelta(days=window_days) > end:
            return out
        if last_day >= start:
            out.append(last_day)
        month += 1


def table_sensitivities(config: dict[str, Any]) -> dict[str, float]:
    """Squared L2 sensitivity of each table, from the report's public settings (module doc).

    ``config`` holds ``start``, ``end`` (ISO dates), ``granularity``, ``churn-window-days`` and,
    under DP, ``max-active-days`` (L)."""
    start, end = dt.date.fromisoformat(str(config["start"])), dt.date.fromisoformat(str(config["end"]))
    n_days = (end - start).days + 1
    first, last = periods(start, end, config.get("granularity", "month"))  # type: ignore[arg-type]
    limit = int(config.get("max-active-days", 0)) or n_days
    out = {name: float(min(WINDOW_DAYS[name] * limit, n_days)) for name in ACTIVITY_TABLES}
    out["retention"] = float(last - first + 1)
    out["churn"] = 2.0 * len(snapshot_days(start, end, int(config.get("churn-window-days", 90))))
    return out
