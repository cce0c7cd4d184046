"""Per-user RFM and activity features, lifecycle stages and churn labels at a cutoff.

All durations are in days (float, 86,400 s), money in the events' currency units.
``t_ref`` is midnight at the end of the cutoff day; the history is ``ts < t_ref`` and a
"day" is a UTC calendar day. A user is included when it has at least one event in the
history. Definitions (``P`` = the user's distinct purchase days in the history):

- ``recency_days``: ``t_ref`` minus the last purchase; without purchases, minus the first event.
- ``frequency``: ``|P|``, purchases on the same day counted once (the BTYD convention).
- ``monetary_total``: purchase amounts minus refund amounts, floored at 0.
- ``monetary_mean``: ``monetary_total / frequency`` (0 without purchases).
- ``tenure_days``: ``t_ref`` minus the earlier of the first event and ``signup_ts``.
- ``active_days_N`` (N = 7, 30, 90): distinct days with any event in the N days before ``t_ref``.
- ``events_total``: events of any type in the history.
- ``ipi_mean``, ``ipi_std``, ``max_gap_days``: mean, population standard deviation and maximum
  of the gaps between consecutive purchase days (0 with fewer than two purchase days).
- ``trend``: ``(a - b) / max(a + b, 1)`` with ``a``, ``b`` the active days in the 30 days
  before ``t_ref`` and in the 30 days before those; in [-1, 1].
- ``days_since_last_event``: ``t_ref`` minus the last event of any type.
- ``lifecycle_stage``: see :func:`lifecycle_stage`.
- ``future_purchase_days``: distinct purchase days in ``[t_ref, t_ref + horizon_days)``;
  ``churned`` is 1 when it is 0 (the churn label).
- ``future_spend``: purchase amounts minus refund amounts in that window, floored at 0 (the
  customer-value label, currency units).

The computation is vectorised: one factorisation of user ids, two sorts of
(user, day) keys and ``bincount`` reductions; no Python loop per user or event.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fedseg.config import LIFECYCLE_STAGES, MODEL_FEATURES, FeatureConfig, LifecycleRules
from fedseg.contract import PURCHASE
from fedseg.errors import FedsegError

DAY_NS = 86_400 * 10**9
REFUND = "refund"


def _group_reduce_sorted(keys_user: np.ndarray, n_users: int, values: np.ndarray, how: str) -> np.ndarray:
    """Min or max of ``values`` per user; ``keys_user`` need not be sorted."""
    fill = np.iinfo(np.int64).max if how == "min" else np.iinfo(np.int64).min
    out = np.full(n_users, fill, dtype=np.int64)
    if how == "min":
        np.minimum.at(out, keys_user, values)
    else:
        np.maximum.at(out, keys_user, values)
    return out


def _sorted_unique(keys: np.ndarray) -> np.ndarray:
    """Sorted distinct values (sort + neighbour comparison: faster here than ``np.unique``,
    which in numpy 2.4 goes through a hash table before sorting)."""
    if len(keys) == 0:
        return keys
    ordered = np.sort(keys)
    return ordered[np.r_[True, ordered[1:] != ordered[:-1]]]


class CutoffError(FedsegError):
    """The cutoff leaves no history to compute features from."""


def check_cutoff(events: pd.DataFrame, config: FeatureConfig, source: str = "the events") -> list[str]:
    """Refuse a cutoff before every event (:class:`CutoffError`, naming the first event's day);
    return warnings for one whose label window holds no event (every user would be churned)."""
    if len(events) == 0:
        raise CutoffError(f"{source} hold no events")
    first, last = events["ts"].min(), events["ts"].max()
    t_ref = pd.Timestamp(config.t_ref)
    if first >= t_ref:
        raise CutoffError(f"no events before the end of {config.cutoff} in {source}: the first event is on "
                          f"{first.date()}; choose a later --cutoff")
    if last < t_ref:
        return [f"{source} end on {last.date()}, before the {config.horizon_days}-day label window after "
                f"{config.cutoff}: every user would be labelled churned; choose an earlier --cutoff"]
    return []


def build_features(
    events: pd.DataFrame,
    config: FeatureConfig,
    users: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per user with an event before ``t_ref``: the features described above.

    ``events`` is a canonical events frame (:mod:`fedseg.contract`); ``users``, if given,
    contributes ``signup_ts`` to the tenure. Rows are ordered by ``user_id``.
    """
    t_ref = np.datetime64(config.t_ref, "ns").astype(np.int64)
    ts = events["ts"].to_numpy(dtype="datetime64[ns]").astype(np.int64)
    codes, uniques = pd.factorize(events["user_id"], sort=True)
    codes = codes.astype(np.int64)
    n_all = len(uniques)
    event_type = events["event_type"].to_numpy()
    amount = events["amount"].to_numpy(dtype=np.float64)

    hist = ts < t_ref
    horizon_end = t_ref + config.horizon_days * DAY_NS
    future = (ts >= t_ref) & (ts < horizon_end)
    is_purchase = event_type == PURCHASE
    is_refund = event_type == REFUND

    # Day index relative to t_ref: -1 is the cutoff day itself.
    day = np.floor_divide(ts - t_ref, DAY_NS)

    h_codes = codes[hist]
    h_ts = ts[hist]
    h_day = day[hist]
    n_events = np.bincount(h_codes, minlength=n_all)
    present = n_events > 0

    first_ts = _group_reduce_sorted(h_codes, n_all, h_ts, "min")
    last_ts = _group_reduce_sorted(h_codes, n_all, h_ts, "max")

    # Money
    hp = hist & is_purchase
    revenue = np.bincount(codes[hp], weights=amount[hp], minlength=n_all)
    hr = hist & is_refund
    refunds = np.bincount(codes[hr], weights=amount[hr], minlength=n_all)
    monetary_total = np.maximum(revenue - refunds, 0.0)

    # Distinct purchase days, gaps between them, last purchase
    offset = int(h_day.min()) if len(h_day) else 0
    span = int(max(day.max() - offset + 1, 1)) if len(day) else 1
    p_keys = _sorted_unique(codes[hp] * span + (day[hp] - offset))
    p_user = p_keys // span
    p_day = p_keys % span + offset
    frequency = np.bincount(p_user, minlength=n_all)
    same = np.zeros(len(p_user), dtype=bool)
    same[1:] = p_user[1:] == p_user[:-1]
    gaps = np.diff(p_day, prepend=p_day[:1]).astype(np.float64)
    g_user = p_user[same]
    g = gaps[same]
    n_gaps = np.bincount(g_user, minlength=n_all)
    gap_sum = np.bincount(g_user, weights=g, minlength=n_all)
    gap_sq = np.bincount(g_user, weights=g * g, minlength=n_all)
    with np.errstate(invalid="ignore", divide="ignore"):
        ipi_mean = np.where(n_gaps > 0, gap_sum / np.maximum(n_gaps, 1), 0.0)
        ipi_var = np.where(n_gaps > 0, gap_sq / np.maximum(n_gaps, 1) - ipi_mean**2, 0.0)
    ipi_std = np.sqrt(np.maximum(ipi_var, 0.0))
    max_gap = np.zeros(n_all, dtype=np.float64)
    if len(g):
        np.maximum.at(max_gap, g_user, g)
    last_purchase_ts = _group_reduce_sorted(codes[hp], n_all, ts[hp], "max")

    # Active days in windows before t_ref
    a_keys = _sorted_unique(h_codes * span + (h_day - offset))
    a_user = a_keys // span
    a_day = a_keys % span + offset
    active = {n: np.bincount(a_user[a_day >= -n], minlength=n_all) for n in (7, 30, 90)}
    prev30 = np.bincount(a_user[(a_day >= -60) & (a_day < -30)], minlength=n_all)
    last30 = active[30]
    trend = (last30 - prev30) / np.maximum(last30 + prev30, 1)

    # Tenure: earlier of first event and sign-up
    start_ts = first_ts.copy()
    if users is not None and "signup_ts" in users.columns and len(users):
        signup = users.set_index("user_id")["signup_ts"].reindex(uniques)
        s = signup.to_numpy(dtype="datetime64[ns]").astype(np.int64)
        valid = ~np.isnat(signup.to_numpy(dtype="datetime64[ns]")) & (s < t_ref)
        start_ts = np.where(valid, np.minimum(start_ts, s), start_ts)

    def days_before(ref_ts: np.ndarray) -> np.ndarray:
        return (t_ref - ref_ts) / DAY_NS

    tenure = days_before(start_ts)
    has_purchase = frequency > 0
    recency = np.where(has_purchase, days_before(np.where(has_purchase, last_purchase_ts, t_ref)),
                       days_before(first_ts))

    # Label
    fp = future & is_purchase
    f_keys = _sorted_unique(codes[fp] * span + (day[fp] - offset))
    future_days = np.bincount(f_keys // span, minlength=n_all)
    fr = future & is_refund
    future_spend = np.maximum(np.bincount(codes[fp], weights=amount[fp], minlength=n_all)
                              - np.bincount(codes[fr], weights=amount[fr], minlength=n_all), 0.0)

    frame = pd.DataFrame(
        {
            "user_id": uniques.astype(object),
            "recency_days": recency,
            "frequency": frequency.astype(np.float64),
            "monetary_total": monetary_total,
            "monetary_mean": np.where(has_purchase, monetary_total / np.maximum(frequency, 1), 0.0),
            "tenure_days": tenure,
            "active_days_7": active[7].astype(np.float64),
            "active_days_30": active[30].astype(np.float64),
            "active_days_90": active[90].astype(np.float64),
            "events_total": n_events.astype(np.float64),
            "ipi_mean": ipi_mean,
            "ipi_std": ipi_std,
            "trend": trend.astype(np.float64),
            "max_gap_days": max_gap,
            "days_since_last_event": days_before(last_ts),
            "future_purchase_days": future_days.astype(np.int64),
            "future_spend": future_spend,
        }
    )
    frame = frame.loc[present].reset_index(drop=True)
    frame["lifecycle_stage"] = lifecycle_stage(frame, config.lifecycle)
    frame["churned"] = (frame["future_purchase_days"] == 0).astype(np.int8)
    assert list(frame.columns[1:13]) == list(MODEL_FEATURES)
    return frame


def lifecycle_stage(features: pd.DataFrame, rules: LifecycleRules) -> pd.Categorical:
    """Lifecycle stage per user; the first matching rule wins.

    1. ``introduction``: ``tenure_days <= introduction_days``.
    2. ``decline``: any of
       - two or more purchase days and ``recency_days > cadence_factor * max_gap_days``
         (slower than the user's own slowest past cadence), with a floor of
         ``single_purchase_decline_days / 3`` days so day-to-day buyers are not flagged at once;
       - exactly one purchase day and ``recency_days > single_purchase_decline_days``;
       - no purchase and ``days_since_last_event > inactive_decline_days``;
       - ``trend <= decline_trend`` (activity in the last 30 days fell sharply).
    3. ``growth``: ``trend >= growth_trend`` (more active days in the last 30 days than before).
    4. ``maturity``: everything else (stable repurchase).
    """
    freq = features["frequency"].to_numpy()
    recency = features["recency_days"].to_numpy()
    cadence_limit = np.maximum(
        rules.cadence_factor * features["max_gap_days"].to_numpy(),
        rules.single_purchase_decline_days / 3,
    )
    trend = features["trend"].to_numpy()
    decline = (
        ((freq >= 2) & (recency > cadence_limit))
        | ((freq == 1) & (recency > rules.single_purchase_decline_days))
        | ((freq == 0) & (features["days_since_last_event"].to_numpy() > rules.inactive_decline_days))
        | (trend <= rules.decline_trend)
    )
    code = {name: i for i, name in enumerate(LIFECYCLE_STAGES)}
    stage = np.full(len(features), code["maturity"], dtype=np.int8)  # codes: no string per user
    stage[trend >= rules.growth_trend] = code["growth"]
    stage[decline] = code["decline"]
    stage[features["tenure_days"].to_numpy() <= rules.introduction_days] = code["introduction"]
    return pd.Categorical.from_codes(stage, categories=list(LIFECYCLE_STAGES))
