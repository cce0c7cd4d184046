"""The classic BTYD baselines, fitted by ``lifetimes``: BG/NBD (Fader, Hardie and Lee 2005) for
churn, and BG/NBD with Gamma-Gamma spend (Fader, Hardie and Lee 2005b) for customer value.

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

Customer value (:func:`fit_bgnbd_gamma_gamma`): expected purchase days in the window times
Gamma-Gamma's expected value of a purchase day, fitted on the mean value of each customer's
*repeat* purchase days (``monetary_value``, the lifetimes convention; customers without a repeat
day with a positive value are left out of the Gamma-Gamma fit and get its population mean).
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
    expected_spend: pd.Series | None = None  # index user_id, currency units (BG/NBD x Gamma-Gamma)


def btyd_summary(events: pd.DataFrame, cutoff: dt.date) -> pd.DataFrame:
    """frequency, recency, T (days) and monetary_value (mean value of the repeat purchase days,
    0 without one) per user with at least one purchase on or before ``cutoff``."""
    day = events["ts"].dt.floor("D")
    mask = (events["event_type"] == PURCHASE).to_numpy() & (day <= pd.Timestamp(cutoff)).to_numpy()
    days = pd.DataFrame({"user_id": events["user_id"].to_numpy()[mask], "day": day.to_numpy()[mask],
                         "amount": events["amount"].to_numpy(dtype=float)[mask]})
    days = days.groupby(["user_id", "day"], sort=True)["amount"].sum().reset_index()
    grouped = days.groupby("user_id")["day"]
    first, last, count = grouped.min(), grouped.max(), grouped.size()
    repeat = days.loc[days.groupby("user_id").cumcount() > 0].groupby("user_id")["amount"].mean()
    end = pd.Timestamp(cutoff)
    return pd.DataFrame({
        "frequency": (count - 1).astype(float),
        "recency": (last - first).dt.days.astype(float),
        "T": (end - first).dt.days.astype(float),
        "monetary_value": repeat.reindex(count.index).fillna(0.0).astype(float),
    })


def _lifetimes(name: str):  # noqa: ANN202 - a lifetimes fitter class
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lifetimes sets a pandas option pandas 4 will remove
        import lifetimes

    return getattr(lifetimes, name)


def fit_bgnbd(events: pd.DataFrame, cutoff: dt.date, horizon_days: int, with_spend: bool = False) -> BGNBDResult:
    """Fit BG/NBD on the calibration period; expected purchase days in the next ``horizon_days``
    (and, ``with_spend``, times Gamma-Gamma's expected value of a purchase day)."""
    summary = btyd_summary(events, cutoff)
    model = _lifetimes("BetaGeoFitter")(penalizer_coef=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(summary["frequency"], summary["recency"], summary["T"])
        expected = model.conditional_expected_number_of_purchases_up_to_time(
            horizon_days, summary["frequency"], summary["recency"], summary["T"]
        )
    params = {k: float(v) for k, v in model.params_.items()}
    result = BGNBDResult(params=params, expected_purchases=pd.Series(np.asarray(expected), index=summary.index))
    if with_spend:
        repeat = summary.loc[(summary["frequency"] > 0) & (summary["monetary_value"] > 0)]
        gamma_gamma = _lifetimes("GammaGammaFitter")(penalizer_coef=0.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gamma_gamma.fit(repeat["frequency"], repeat["monetary_value"])
            value = gamma_gamma.conditional_expected_average_profit(summary["frequency"], summary["monetary_value"])
        result.params.update({f"gg_{k}": float(v) for k, v in gamma_gamma.params_.items()})
        result.expected_spend = result.expected_purchases * pd.Series(np.asarray(value), index=summary.index)
    return result
