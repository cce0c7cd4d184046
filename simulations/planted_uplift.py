"""Actions with a planted, heterogeneous effect on synthetic users: the truth effect measurement is
checked against.

The synthetic generator (:mod:`simulations.generator`) makes each user's events over the whole
period, including the measurement window after a campaign day: that is what every user does
*without* an action (the control outcome ``Y0``). :func:`plant_effects` adds what an action does:
a treated user of archetype ``a`` given action ``x`` makes **one extra purchase** in the window
with probability ``PLANTED_UPLIFT[x][a]`` (0 for some pairs: no effect), at a uniform time in the
window, for the user's mean past purchase amount (the population's when the user has none).

Potential outcomes are drawn for **every** user in a campaign, treated or held out, from the
world's own seed (independent of the units' holdout draw): ``Y1 = Y0 + extra``. Only treated users'
extra purchases become events. The truth of a cell (segment x action) is the mean of ``Y1 - Y0``
over its experiment users (treatment and holdout), for each outcome of
:func:`fedseg.effects.user_outcomes`: the cell's average effect, which the difference in means of
the randomised arms estimates without bias.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from fedseg.contract import PURCHASE
from fedseg.effects import OUTCOMES, user_outcomes, window_start

#: P(one extra purchase in the window | treated), per action and archetype. Heterogeneous by
#: design, and 0 where the action does nothing for the archetype.
PLANTED_UPLIFT: Final[dict[str, dict[str, float]]] = {
    "win-back offer": {"at_risk": 0.20, "silent": 0.08, "growing": 0.10, "high_active": 0.0, "new": 0.05},
    "VIP privilege": {"high_active": 0.10, "growing": 0.05, "at_risk": 0.0, "silent": 0.0, "new": 0.0},
    "welcome guide": {"new": 0.15, "growing": 0.05, "at_risk": 0.0, "silent": 0.0, "high_active": 0.0},
    "streak reward": {"growing": 0.12, "high_active": 0.04, "at_risk": 0.0, "silent": 0.0, "new": 0.0},
    "re-engagement reminder": {"silent": 0.06, "at_risk": 0.04, "growing": 0.0, "high_active": 0.0, "new": 0.0},
}


class PlantedOutcome(BaseModel):
    """The realised events (extra purchases of treated users added) and each experiment user's
    truth: ``d_conversion``, ``d_revenue``, ``d_retention`` (``Y1 - Y0``)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    events: pd.DataFrame
    truth: pd.DataFrame


def plant_effects(events: pd.DataFrame, archetypes: pd.Series, actions: pd.DataFrame, campaign_date: object,
                  window_days: int, seed: int, retention_days: int = 30,
                  uplift: dict[str, dict[str, float]] | None = None) -> PlantedOutcome:
    """Apply a campaign to one unit's events (module doc).

    ``archetypes``: the planted archetype of every user (index ``user_id``); ``actions``: the unit's
    action list (``user_id``, ``action``, ``arm``: ``treatment`` users are contacted, ``holdout``
    users are not, ``suppressed`` users are outside the experiment).
    """
    table = uplift or PLANTED_UPLIFT
    experiment = actions.loc[actions["arm"].isin(["treatment", "holdout"]), ["user_id", "action", "arm"]]
    experiment = experiment.reset_index(drop=True)
    rng = np.random.default_rng([seed, 20_150])
    arch = archetypes.reindex(experiment["user_id"]).to_numpy()
    p = np.array([table.get(a, {}).get(k, 0.0) for a, k in zip(experiment["action"], arch)])
    extra = rng.random(len(experiment)) < p
    t0 = window_start(campaign_date)
    offset = rng.random(len(experiment)) * window_days * 86_400
    history = events.loc[(events["ts"] < t0) & (events["event_type"] == PURCHASE)]
    usual = history.groupby("user_id")["amount"].mean()
    fallback = float(history["amount"].mean()) if len(history) else 20.0
    amount = np.round(usual.reindex(experiment["user_id"]).fillna(fallback).to_numpy(), 2)
    bonus = pd.DataFrame({
        "user_id": experiment["user_id"].to_numpy()[extra],
        "ts": (t0 + pd.to_timedelta(np.floor(offset[extra]), unit="s")).astype("datetime64[ns]"),
        "event_type": PURCHASE,
        "amount": amount[extra],
        "price": amount[extra],
        "quantity": 1.0,
    })
    if "event_id" in events:
        bonus["event_id"] = [f"planted-{seed}-{i}" for i in range(len(bonus))]
    if "channel" in events:
        bonus["channel"] = "web"
    if "item_id" in events:
        bonus["item_id"] = None
    treated = experiment["arm"].to_numpy()[extra] == "treatment"
    realised = pd.concat([events, bonus.loc[treated]], ignore_index=True)
    realised = realised.sort_values(["user_id", "ts"], kind="stable").reset_index(drop=True)
    ids = experiment["user_id"]
    y0 = user_outcomes(events, ids, campaign_date, window_days, retention_days)
    y1 = user_outcomes(pd.concat([events, bonus], ignore_index=True), ids, campaign_date, window_days,
                       retention_days)
    truth = experiment.assign(**{f"d_{o}": y1[o].to_numpy() - y0[o].to_numpy() for o in OUTCOMES},
                              planted_probability=p, extra_purchase=extra)
    return PlantedOutcome(events=realised[list(events.columns)], truth=truth)


def cell_truth(truth: pd.DataFrame, segments: pd.Series) -> pd.DataFrame:
    """The planted effect of every (segment, action) cell: the mean ``Y1 - Y0`` of its experiment
    users, per outcome. ``segments``: each user's segment (index ``user_id``)."""
    frame = truth.assign(segment=segments.reindex(truth["user_id"]).astype(str).to_numpy())
    return frame.groupby(["segment", "action"])[[f"d_{o}" for o in OUTCOMES]].mean().rename(
        columns={f"d_{o}": o for o in OUTCOMES})
