from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from audit import PricingSpec, pricing_audit
from audit.stats import holm
from simulations.transactions import generate_transactions

GEN = dict(n_rows=150_000, n_customers=15_000, n_items=200, n_weeks=10, seed=11)


def _spec(**kw):
    base = dict(price="price", item="item_id", time="week", window="raw", groups=["loyalty", "data_richness"],
                by="category", references={"loyalty": "new"}, customer="customer_id", returning="returning")
    base.update(kw)
    return PricingSpec(**base)


def _find(rep, attr, group, sl="all"):
    return next(f for f in rep.findings if (f.attribute, f.group, f.slice) == (attr, group, sl))


def test_planted_premium_found_with_ci_covering_truth():
    rep = pricing_audit(generate_transactions(premium_pct=2.5, **GEN), _spec())
    f = _find(rep, "loyalty", "loyal")
    assert f.ci_low <= 2.5 <= f.ci_high
    assert abs(f.premium_pct - 2.5) < 0.2
    assert f.flagged and f.p_adjusted < 1e-6
    assert not _find(rep, "loyalty", "regular").flagged
    # in every category slice too
    assert all(x.flagged for x in rep.findings if x.attribute == "loyalty" and x.group == "loyal")


def test_no_premium_no_flag_despite_product_mix():
    rep = pricing_audit(generate_transactions(premium_pct=0.0, **GEN), _spec())
    f = _find(rep, "loyalty", "loyal")
    assert f.naive_premium_pct > 30  # loyal customers buy dearer items and promotions
    assert f.ci_low <= 0 <= f.ci_high or abs(f.premium_pct) < 0.2
    assert not any(x.flagged for x in rep.findings)
    assert all(r.passed for r in rep.rules)


def test_premium_hidden_in_one_category_shows_in_slice():
    f = generate_transactions(premium_pct=0.0, **GEN)
    hit = (f.category == "cat3") & (f.loyalty == "loyal")
    f.loc[hit, "price"] = (f.loc[hit, "price"] * 1.04).round(2)
    rep = pricing_audit(f, _spec())
    assert _find(rep, "loyalty", "loyal", "cat3").flagged
    assert not any(x.flagged for x in rep.findings if x.slice not in ("cat3", "all") and x.attribute == "loyalty")
    assert _find(rep, "loyalty", "loyal", "all").premium_pct < _find(rep, "loyalty", "loyal", "cat3").premium_pct


def test_renewal_premium_detected():
    f = generate_transactions(premium_pct=0.0, **GEN)
    f.loc[f.returning, "price"] = (f.loc[f.returning, "price"] * 1.03).round(2)
    rep = pricing_audit(f, _spec(groups=[]))
    r = _find(rep, "renewal", "returning")
    assert r.reference == "first_time" and r.flagged and r.ci_low <= 3.0 <= r.ci_high
    assert any(x.rule == "renewal" and not x.passed for x in rep.rules)


def test_estimator_matches_dummy_regression_and_cluster_se():
    """beta equals OLS with stratum dummies; SE equals the textbook CR1 sandwich."""
    f = generate_transactions(n_rows=3000, n_customers=300, n_items=15, n_weeks=3, premium_pct=2.0, seed=5)
    rep = pricing_audit(f, _spec(groups=["loyalty"], by=None, returning=None, min_count=1))
    y = np.log(f.price.to_numpy())
    strata = pd.get_dummies(f.item_id.astype(str) + "_" + f.week.astype(str)).to_numpy(float)
    X = np.column_stack([strata, (f.loyalty == "regular").to_numpy(float), (f.loyalty == "loyal").to_numpy(float)])
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    e = y - X @ beta
    # FWL: partial the strata out, then a cluster sandwich on the two dummies
    Z = X[:, -2:] - strata @ np.linalg.lstsq(strata, X[:, -2:], rcond=None)[0]
    ai = np.linalg.inv(Z.T @ Z)
    cl = f.customer_id.to_numpy()
    u = np.array([(Z[cl == c] * e[cl == c, None]).sum(0) for c in np.unique(cl)])
    G = len(u)
    V = G / (G - 1) * ai @ (u.T @ u) @ ai
    loyal = _find(rep, "loyalty", "loyal")
    assert abs(loyal.premium_pct - 100 * np.expm1(beta[-1])) < 1e-8
    from scipy import stats
    t = stats.t.ppf(0.975, G - 1)
    assert abs(loyal.ci_high - 100 * np.expm1(beta[-1] + t * np.sqrt(V[1, 1]))) < 1e-8


def test_suppression_and_holm():
    f = generate_transactions(premium_pct=0.0, **GEN)
    f["vip"] = np.where(np.arange(len(f)) < 20, "yes", "no")
    rep = pricing_audit(f, _spec(groups=["vip"], references={"vip": "no"}, by=None, returning=None))
    v = _find(rep, "vip", "yes")
    assert v.suppressed and v.premium_pct is None and not v.flagged
    p = np.array([0.01, 0.04, 0.03, np.nan, 0.2])
    # 4*.01, 3*.03, max(3*.03, 2*.04), 1*.2
    np.testing.assert_allclose(holm(p), [0.04, 0.09, 0.09, np.nan, 0.2])


def test_datetime_weeks_and_errors():
    f = generate_transactions(n_rows=20_000, n_customers=2000, n_items=40, n_weeks=4, premium_pct=5, seed=2)
    f["ts"] = pd.Timestamp("2024-01-01") + pd.to_timedelta(f.week.astype(int) * 7 + 2, unit="D")
    rep = pricing_audit(f, _spec(time="ts", window="week", by=None, returning=None, groups=["loyalty"]))
    assert _find(rep, "loyalty", "loyal").flagged
    with pytest.raises(ValueError, match="missing column"):
        pricing_audit(f, _spec(groups=["nope"]))
    with pytest.raises(ValueError, match="does not occur"):
        pricing_audit(f, _spec(references={"loyalty": "platinum"}, by=None, returning=None, groups=["loyalty"]))


def test_generator_is_deterministic():
    a = generate_transactions(n_rows=1000, seed=3)
    b = generate_transactions(n_rows=1000, seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(generate_transactions(n_rows=1000, seed=4))
