"""The classic BG/NBD baseline (Fader, Hardie and Lee 2005), fitted by ``lifetimes``.

The model sees each customer's calibration-period purchase history as the BTYD literature
defines it, with days as the time unit and purchases on one day merged:

- ``frequency``: repeat purchase days (distinct purchase days minus one);
- ``recency``: days from the first to the last purchase day;
- ``T``: days from the first purchase day to the cutoff day.

Its churn score is minus the expected number of purchase days in the label window
(``conditional_expected_number_of_purchases_up_to_time(horizon_days)``): fewer expected
purchases, more likely to churn. (BG/NBD's P(alive) is a poor ranking score: it is exactly 1
for every one-time buyer.) Users without a calibration purchase cannot be scored by BG/NBD
and are left out of its AUC, which says so.
"""

from __future__ import annotations

import datetime as dt
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fedseg.contract import PURCHASE


@dataclass
class BGNBDResult:
    """Fitted parameters and per-user expected purchases in the label window."""

    params: dict[str, float]
    expected_purchases: pd.Series  # index user_id


def btyd_summary(events: pd.DataFrame, cutoff: dt.date) -> pd.DataFrame:
    """frequency, recency, T (days) per user with at least one purchase on or before ``cutoff``."""
    day = events["ts"].dt.floor("D")
    mask = (events["event_type"] == PURCHASE).to_numpy() & (day <= pd.Timestamp(cutoff)).to_numpy()
    days = pd.DataFrame({"user_id": events["user_id"].to_numpy()[mask], "day": day.to_numpy()[mask]})
    days = days.drop_duplicates()
    grouped = days.groupby("user_id")["day"]
    first, last, count = grouped.min(), grouped.max(), grouped.size()
    end = pd.Timestamp(cutoff)
    return pd.DataFrame({
        "frequency": (count - 1).astype(float),
        "recency": (last - first).dt.days.astype(float),
        "T": (end - first).dt.days.astype(float),
    })


def fit_bgnbd(events: pd.DataFrame, cutoff: dt.date, horizon_days: int) -> BGNBDResult:
    """Fit BG/NBD on the calibration period; expected purchase days in the next ``horizon_days``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lifetimes sets a pandas option pandas 4 will remove
        from lifetimes import BetaGeoFitter

    summary = btyd_summary(events, cutoff)
    model = BetaGeoFitter(penalizer_coef=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(summary["frequency"], summary["recency"], summary["T"])
        expected = model.conditional_expected_number_of_purchases_up_to_time(
            horizon_days, summary["frequency"], summary["recency"], summary["T"]
        )
    params = {k: float(v) for k, v in model.params_.items()}
    return BGNBDResult(params=params, expected_purchases=pd.Series(np.asarray(expected), index=summary.index))
