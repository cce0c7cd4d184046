"""Features, lifecycle stages and labels checked against values computed by hand."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from clients.features import build_features
from fedseg.config import MODEL_FEATURES, FeatureConfig
from fedseg.contract import to_canonical_events

# cutoff 2024-03-31 -> t_ref = 2024-04-01 00:00; horizon 30 days -> label window [04-01, 05-01)
CONFIG = FeatureConfig(cutoff=dt.date(2024, 3, 31), horizon_days=30)


def fixture_events() -> pd.DataFrame:
    rows = [
        # user a: purchases on 03-01 (10 + 5 same day), 03-11, 03-31 12:00; a refund; visits; one future purchase
        ("a", "2024-03-01 09:00", "purchase", 10.0),
        ("a", "2024-03-01 18:00", "purchase", 5.0),
        ("a", "2024-03-11 10:00", "purchase", 20.0),
        ("a", "2024-03-31 12:00", "purchase", 15.0),
        ("a", "2024-03-20 08:00", "refund", 4.0),
        ("a", "2024-02-15 08:00", "visit", 0.0),
        ("a", "2024-04-10 08:00", "purchase", 7.0),
        # user b: one purchase on 2024-01-01, logins since, nothing after the cutoff
        ("b", "2024-01-01 00:00", "purchase", 30.0),
        ("b", "2024-03-25 00:00", "login", 0.0),
        ("b", "2024-03-26 00:00", "login", 0.0),
        # user c: only visits, first on 2024-03-20
        ("c", "2024-03-20 12:00", "visit", 0.0),
        # user d: appears only after the cutoff -> not a user at this cutoff
        ("d", "2024-04-02 00:00", "purchase", 1.0),
        # user b purchase after the horizon -> does not count
        ("b", "2024-05-02 00:00", "purchase", 1.0),
    ]
    frame = pd.DataFrame(rows, columns=["user_id", "ts", "event_type", "amount"])
    frame["ts"] = pd.to_datetime(frame["ts"])
    return to_canonical_events(frame)


def test_features_match_hand_computation():
    f = build_features(fixture_events(), CONFIG).set_index("user_id")
    assert list(f.index) == ["a", "b", "c"]
    a, b, c = f.loc["a"], f.loc["b"], f.loc["c"]

    # a: purchase days 03-01, 03-11, 03-31 -> frequency 3, gaps 10 and 20 days
    assert a.frequency == 3
    assert a.recency_days == pytest.approx(0.5)            # 03-31 12:00 -> 04-01 00:00
    assert a.monetary_total == pytest.approx(10 + 5 + 20 + 15 - 4)
    assert a.monetary_mean == pytest.approx(46 / 3)
    assert a.tenure_days == pytest.approx(46 - 8 / 24)     # from 02-15 08:00: 46 days minus 8 hours
    assert a.ipi_mean == pytest.approx(15.0)
    assert a.ipi_std == pytest.approx(5.0)                 # population std of (10, 20)
    assert a.max_gap_days == 20
    assert a.events_total == 6
    assert a.active_days_7 == 1                            # 03-31 only (03-25 .. 03-31)
    assert a.active_days_30 == 3                           # 03-11, 03-20, 03-31 (03-02 .. 03-31)
    assert a.active_days_90 == 5                           # 02-15, 03-01, 03-11, 03-20, 03-31
    # trend: last 30 days (03-02..03-31) 3 active days, the 30 before (01-02..03-01) 2 -> (3-2)/5
    assert a.trend == pytest.approx(0.2)
    assert a.future_purchase_days == 1 and a.churned == 0
    assert a.lifecycle_stage == "growth"                   # trend 0.2 >= 0.2, recency tiny

    # b: one purchase 91 days before t_ref (Jan 1 -> Apr 1 in a leap year)
    assert b.frequency == 1 and b.recency_days == pytest.approx(91.0)
    assert b.ipi_mean == 0 and b.ipi_std == 0 and b.max_gap_days == 0
    assert b.active_days_7 == 2 and b.active_days_30 == 2 and b.active_days_90 == 2
    assert b.trend == pytest.approx(1.0)
    assert b.churned == 1 and b.future_purchase_days == 0   # the 05-02 purchase is past the horizon
    assert b.lifecycle_stage == "decline"                   # 91 > 90 days since its single purchase

    # c: no purchase; recency falls back to the first event; tenure 11.5 days -> introduction
    assert c.frequency == 0 and c.monetary_total == 0 and c.monetary_mean == 0
    assert c.recency_days == pytest.approx(11.5) and c.tenure_days == pytest.approx(11.5)
    assert c.days_since_last_event == pytest.approx(11.5)
    assert c.lifecycle_stage == "introduction" and c.churned == 1


def test_signup_date_extends_tenure_and_model_features_are_finite():
    users = pd.DataFrame({"user_id": ["c"], "signup_ts": pd.to_datetime(["2024-01-01"])})
    f = build_features(fixture_events(), CONFIG, users=users).set_index("user_id")
    assert f.loc["c", "tenure_days"] == pytest.approx(91.0)
    # no longer new: active 11.5 days ago, nothing in the 30 days before -> trend 1 -> growth
    assert f.loc["c", "lifecycle_stage"] == "growth"
    assert np.isfinite(f[list(MODEL_FEATURES)].to_numpy()).all()


def test_event_order_does_not_matter():
    events = fixture_events()
    shuffled = events.sample(frac=1.0, random_state=3).reset_index(drop=True)
    pd.testing.assert_frame_equal(build_features(events, CONFIG), build_features(shuffled, CONFIG))
