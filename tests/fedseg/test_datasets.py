"""CDNOW read from the lifetimes wheel: counts match the file, the standard split's facts hold."""

from __future__ import annotations

import datetime as dt

import pytest

from clients.features import build_features
from fedseg.config import FeatureConfig
from fedseg.datasets import CALIBRATION_END, HOLDOUT_DAYS, N_CUSTOMERS, N_ROWS, cdnow_path, load_cdnow


def test_loaded_rows_and_customers_match_the_file():
    lines = cdnow_path().read_text().splitlines()
    data_lines = [line for line in lines[1:] if line.strip()]
    assert len(data_lines) == N_ROWS
    assert len({line.split()[0] for line in data_lines}) == N_CUSTOMERS
    events = load_cdnow()
    assert len(events) == N_ROWS
    assert events["user_id"].nunique() == N_CUSTOMERS
    assert events["amount"].sum() == pytest.approx(sum(float(line.split()[3]) for line in data_lines))
    assert events["ts"].min() == dt.datetime(1997, 1, 1) and events["ts"].max() == dt.datetime(1998, 6, 30)
    assert events["event_id"].is_unique


def test_standard_split_labels():
    features = build_features(load_cdnow(), FeatureConfig(cutoff=CALIBRATION_END, horizon_days=HOLDOUT_DAYS))
    assert len(features) == N_CUSTOMERS
    # 7,058 customers buy again in the 39-week holdout; 19,684 holdout purchase-days (same-day merged)
    assert int((features["churned"] == 0).sum()) == 7058
    assert int(features["future_purchase_days"].sum()) == 19684
