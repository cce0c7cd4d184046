"""Effect measurement, definitions both sides share: outcomes, the cells of a campaign, the layout of
a unit's answer, and what one user can change in it.

A campaign (an action list of :mod:`clients.playbook`, one per unit) starts on its campaign day;
the **measurement window** is the ``window_days`` after it: ``[t0, t0 + window_days)`` with ``t0``
midnight at the end of the campaign day. Per user, over the window:

- ``conversion``: 1 when the user makes at least one purchase (0 otherwise);
- ``revenue``: purchase amounts minus refund amounts, floored at 0 (currency units);
- ``retention``: 1 when the user has any event in the window's last ``retention_days`` days.

Cells are (segment x action) pairs the coordinator names in advance (the segments of the public
segmentation report, the actions of the playbook), never read from a unit's data, so the shape of
every answer is fixed. Each unit answers, per cell and arm (``treatment``: contacted; ``holdout``:
held out at random), :data:`STATS`: the users ``n``, the sum of conversions, of revenue, of revenue
squared, and of retention. Users outside the experiment (no action, or suppressed by the contact
policy) are not counted.

Under DP (add/remove one end user, who is in one unit, one cell and one arm) revenue is clipped at
``clip`` and sent in units of it (so ``revenue`` and ``revenue^2`` are in [0, 1]); one user changes
the five statistics of its cell and arm by at most 1 each (:mod:`privacy.effects_dp` turns the
per-statistic noise into the release's noise multiplier).
"""

from __future__ import annotations

from typing import Final

import numpy as np
import pandas as pd

from fedseg.contract import PURCHASE

OUTCOMES: Final = ("conversion", "revenue", "retention")
ARMS: Final = ("treatment", "holdout")
#: Per cell and arm, in this order.
STATS: Final = ("n", "conversions", "revenue", "revenue_sq", "retained")
DAY_NS: Final = 86_400 * 10**9
REFUND: Final = "refund"


def window_start(campaign_date: "pd.Timestamp | str | object") -> pd.Timestamp:
    """``t0``: midnight at the end of the campaign day."""
    return pd.Timestamp(str(campaign_date)).normalize() + pd.Timedelta(days=1)


def user_outcomes(events: pd.DataFrame, user_ids: pd.Series | np.ndarray, campaign_date: object, window_days: int,
                  retention_days: int = 30) -> pd.DataFrame:
    """``conversion``, ``revenue`` and ``retention`` (module doc) of ``user_ids`` in the window."""
    t0 = window_start(campaign_date)
    end = t0 + pd.Timedelta(days=window_days)
    tail = end - pd.Timedelta(days=min(retention_days, window_days))
    ts = events["ts"]
    inside = events.loc[(ts >= t0) & (ts < end)]
    kind = inside["event_type"]
    bought = inside.loc[kind == PURCHASE].groupby("user_id")["amount"].sum()
    refunded = inside.loc[kind == REFUND].groupby("user_id")["amount"].sum()
    ids = pd.Index(pd.Series(user_ids, dtype=object).astype(str))
    revenue = (bought.reindex(ids).fillna(0.0) - refunded.reindex(ids).fillna(0.0)).clip(lower=0.0)
    converted = ids.isin(inside.loc[kind == PURCHASE, "user_id"].astype(str).unique())
    retained = ids.isin(inside.loc[inside["ts"] >= tail, "user_id"].astype(str).unique())
    return pd.DataFrame({"user_id": ids, "conversion": converted.astype(float), "revenue": revenue.to_numpy(float),
                         "retention": retained.astype(float)})


def cell_names(segments: list[str], actions: list[str]) -> list[tuple[str, str]]:
    """The cells of a measurement, in answer order: every (segment, action) pair."""
    return [(s, a) for s in segments for a in actions]


def cell_statistics(table: pd.DataFrame, segments: list[str], actions: list[str], clip: float | None = None
                    ) -> np.ndarray:
    """``[cells, arms, stats]`` sums of a unit's experiment users.

    ``table`` has one row per user in the experiment: ``segment``, ``action``, ``arm`` and the three
    outcomes. With ``clip`` (DP) revenue is clipped and in units of it. Users of a segment or action
    outside the named cells are left out (the coordinator asked for those cells only).
    """
    cells = {c: i for i, c in enumerate(cell_names(segments, actions))}
    out = np.zeros((len(cells), len(ARMS), len(STATS)))
    if not len(table):
        return out
    revenue = table["revenue"].to_numpy(float)
    if clip is not None:
        revenue = np.minimum(np.maximum(revenue, 0.0), clip) / clip
    cell = np.array([cells.get((s, a), -1) for s, a in zip(table["segment"].astype(str), table["action"].astype(str))])
    arm = np.array([ARMS.index(a) if a in ARMS else -1 for a in table["arm"]])
    keep = (cell >= 0) & (arm >= 0)
    values = np.stack([np.ones(len(table)), table["conversion"].to_numpy(float), revenue, revenue ** 2,
                       table["retention"].to_numpy(float)], axis=1)
    np.add.at(out, (cell[keep], arm[keep]), values[keep])
    return out
