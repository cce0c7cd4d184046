"""The synthetic generator: deterministic, skewable, contract-shaped, realistic, archetypes recoverable."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from clients.features import build_features
from clients.ingest import read_events, read_users
from fedseg.config import FeatureConfig
from fedseg.contract import EVENT_COLUMNS, empty_events, to_canonical_events
from simulations.generator import ARCHETYPE_NAMES, GeneratorConfig, SyntheticData, generate, write_units


@pytest.fixture(scope="module")
def data() -> SyntheticData:
    return generate(GeneratorConfig(n_users=8000, n_units=4, seed=0))


def test_same_seed_same_data_other_seed_other_data():
    a = generate(GeneratorConfig(n_users=2000, seed=3, chunk_users=500))
    b = generate(GeneratorConfig(n_users=2000, seed=3, chunk_users=500))
    c = generate(GeneratorConfig(n_users=2000, seed=4, chunk_users=500))
    pd.testing.assert_frame_equal(a.events, b.events)
    pd.testing.assert_frame_equal(a.users, b.users)
    assert not a.users["archetype"].equals(c.users["archetype"])
    assert len(a.events) != len(c.events) or not a.events["ts"].equals(c.events["ts"])


def test_events_have_the_contract_dtypes_and_unit_column(data):
    events = data.events
    assert list(events.columns) == [*EVENT_COLUMNS, "unit_id"]
    expected = empty_events().dtypes
    assert events[list(EVENT_COLUMNS)].dtypes.equals(expected)
    pd.testing.assert_frame_equal(to_canonical_events(events), events[list(EVENT_COLUMNS)], check_like=True)
    assert events["event_id"].is_unique
    # every event's unit is its user's unit
    unit_of = data.users.set_index("user_id")["unit_id"]
    assert (events["user_id"].map(unit_of).to_numpy() == events["unit_id"].to_numpy()).all()
    assert set(data.users.columns) >= {"user_id", "unit_id", "signup_ts", "gender", "age_band", "region", "device",
                                       "archetype", "lifecycle_stage", "churn_hazard"}
    assert data.users["user_id"].is_unique


def test_skew_changes_unit_sizes_and_behaviour():
    flat = generate(GeneratorConfig(n_users=6000, n_units=5, seed=1))
    skew = generate(GeneratorConfig(n_users=6000, n_units=5, seed=1, unit_size_alpha=0.5, behaviour_skew=1.0))
    flat_sizes = flat.users["unit_id"].value_counts()
    skew_sizes = skew.users["unit_id"].value_counts()
    assert flat_sizes.max() - flat_sizes.min() <= 1
    assert skew_sizes.max() / skew_sizes.min() > 2.0
    flat_mix = pd.crosstab(flat.users["unit_id"], flat.users["archetype"], normalize="index")
    skew_mix = pd.crosstab(skew.users["unit_id"], skew.users["archetype"], normalize="index")
    assert (flat_mix.max() - flat_mix.min()).max() < 0.06
    assert (skew_mix.max() - skew_mix.min()).max() > 0.2

    def events_per_user(d: SyntheticData) -> pd.Series:
        return d.events.groupby("unit_id").size() / d.users.groupby("unit_id").size()

    flat_epu, skew_epu = events_per_user(flat), events_per_user(skew)
    assert flat_epu.max() / flat_epu.min() < 1.25
    assert skew_epu.max() / skew_epu.min() > 1.5


def test_every_unit_gets_a_user_even_with_extreme_skew():
    d = generate(GeneratorConfig(n_users=12, n_units=10, seed=5, unit_size_alpha=0.05))
    assert sorted(d.users["unit_id"].unique()) == list(range(10))


def test_realistic_shape(data):
    events, users = data.events, data.users
    purchases = events[events["event_type"] == "purchase"]
    assert (purchases["amount"] > 0).all()
    assert np.allclose(purchases["amount"], (purchases["price"] * purchases["quantity"]).round(2))
    for kind in ("visit", "login", "click"):
        rows = events[events["event_type"] == kind]
        assert len(rows) > 0 and (rows["amount"] == 0).all() and rows["price"].isna().all()
    refunds = events[events["event_type"] == "refund"]
    assert 0 < len(refunds) < 0.1 * len(purchases)
    assert (refunds["amount"] > 0).all()
    # purchase amounts roughly log-normal: log amounts nearly symmetric, heavy right tail in levels
    log_amount = np.log(purchases["amount"])
    assert abs(float(log_amount.skew())) < 0.5 and float(purchases["amount"].skew()) > 1.5
    # weekly seasonality: weekends busier than weekdays
    weekday = events["ts"].dt.day_of_week
    assert (weekday >= 5).mean() > 2 / 7 + 0.03
    # acquisition spread over the period, no event before its user's sign-up or after the end
    assert users["signup_ts"].dt.month.nunique() == 12
    signup = events["user_id"].map(users.set_index("user_id")["signup_ts"])
    assert (events["ts"] >= signup).all()
    assert events["ts"].max() < pd.Timestamp("2024-01-01")
    per_user = len(events) / len(users)
    assert 9 < per_user < 11.5  # events_per_user = 10 plus refunds
    # churn: churned users have no events after their churn time
    churned = users.dropna(subset=["churn_ts"]).set_index("user_id")["churn_ts"]
    after = events["user_id"].map(churned)
    not_refund = events["event_type"] != "refund"  # a refund may follow a purchase made before churn
    assert not (events["ts"] > after + pd.Timedelta(days=1))[not_refund].any()
    assert after.notna().any()
    assert (users.loc[users["churn_ts"].notna(), "lifecycle_stage"] == "churned").all()


def test_archetypes_differ_in_activity_trend():
    """Growing users are busier late than early; at-risk users the other way round."""
    d = generate(GeneratorConfig(n_users=4000, seed=2, first_purchase=False))
    ev = d.events.merge(d.users[["user_id", "archetype", "signup_ts"]], on="user_id")
    age = (ev["ts"] - ev["signup_ts"]).dt.days
    early = ev[age < 60].groupby("archetype").size() / d.users.groupby("archetype").size()
    late = ev[(age >= 120) & (age < 180)].groupby("archetype").size() / d.users.groupby("archetype").size()
    assert late["growing"] > 1.5 * early["growing"]
    assert late["at_risk"] < 0.5 * early["at_risk"]


def test_kmeans_on_rfm_recovers_planted_archetypes():
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score
    from sklearn.preprocessing import StandardScaler

    d = generate(GeneratorConfig(n_users=10_000, seed=7))
    features = build_features(d.events.drop(columns="unit_id"),
                              FeatureConfig(cutoff=dt.date(2023, 12, 31), horizon_days=30), users=d.users)
    f = features.merge(d.users[["user_id", "archetype"]], on="user_id")
    assert len(f) == len(d.users)
    x = np.column_stack([np.minimum(f["recency_days"] / 365, 1), np.log1p(f["frequency"]),
                         np.log1p(f["monetary_total"])])
    labels = KMeans(5, n_init=10, random_state=0).fit_predict(StandardScaler().fit_transform(x))
    assert adjusted_rand_score(f["archetype"], labels) > 0.5
    medians = f.groupby("archetype")[["recency_days", "frequency", "monetary_total"]].median()
    assert medians["frequency"].idxmax() == "high_active"
    assert medians["recency_days"].nlargest(2).index.isin(["at_risk", "silent"]).all()


def test_files_pass_the_contract_and_lose_nothing(tmp_path):
    d = generate(GeneratorConfig(n_users=1500, n_units=3, seed=2))
    for fmt in ("csv", "parquet"):
        out = tmp_path / fmt
        paths = write_units(d, out, fmt=fmt)
        assert [p.name for p in paths] == [f"{kind}_unit_{k}.{fmt}" for k in range(3) for kind in ("events", "users")]
        total_events = total_users = 0
        for k in range(3):
            events = read_events(out / f"events_unit_{k}.{fmt}")
            assert events.report.rows_rejected == 0
            assert (events.frame["unit_id"].astype(int) == k).all() if "unit_id" in events.frame else True
            total_events += events.report.rows_accepted
            users = read_users(out / f"users_unit_{k}.{fmt}").frame
            assert {"gender", "age_band", "region", "device", "signup_ts"} <= set(users.columns)
            assert "archetype" not in users.columns  # a unit does not know the planted truth
            total_users += len(users)
        assert total_events == len(d.events) and total_users == len(d.users)
        truth = pd.read_parquet(out / "truth.parquet") if fmt == "parquet" else pd.read_csv(out / "truth.csv")
        assert set(truth["archetype"]) == set(ARCHETYPE_NAMES)


def test_bad_configs_are_refused():
    with pytest.raises(ValidationError, match="n_users"):
        GeneratorConfig(n_users=3, n_units=5)
    with pytest.raises(ValidationError, match="unknown archetype"):
        GeneratorConfig(archetype_mix={"whales": 1.0})
    with pytest.raises(ValidationError, match="event_mix"):
        GeneratorConfig(event_mix={"purchase": 1.0, "teleport": 1.0})
