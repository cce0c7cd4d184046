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
    assert any(x.subject.startswith("renewal=returning") and x.verdict == "FAIL" for x in rep.rules)


def test_estimator_matches_dummy_regression_and_cluster_se():
    """beta equals OLS with stratum dummies; SE equals the CR1 sandwich with absorbed strata counted."""
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
    G, N, K = len(u), len(y), X.shape[1]  # K counts the absorbed strata too (as Stata's areg)
    V = G / (G - 1) * (N - 1) / (N - K) * ai @ (u.T @ u) @ ai
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


def _dummies_ols(f, cols, cov, **kw):
    import statsmodels.api as sm

    D = pd.get_dummies(f.item_id.astype(str) + "_" + f.week.astype(str), dtype=float)
    X = pd.concat([D] + [c.astype(float) for c in cols], axis=1)
    return sm.OLS(np.log(f.price.to_numpy()), X).fit(cov_type=cov, **kw)


def test_small_sample_correction_matches_statsmodels_hc1_with_stratum_dummies():
    """Without --customer: HC1 of OLS with explicit item x week dummies (statsmodels). Before the fix the
    absorbed strata were not counted and the SE was 1.32x too small on this case (strata of ~2 rows)."""
    f = generate_transactions(n_rows=600, n_customers=200, n_items=150, n_weeks=2, premium_pct=2.0, seed=5)
    rep = pricing_audit(f, _spec(groups=["loyalty"], by=None, returning=None, customer=None, min_count=1))
    res = _dummies_ols(f, [(f.loyalty == "regular").rename("regular"), (f.loyalty == "loyal").rename("loyal")], "HC1")
    for lv in ("regular", "loyal"):
        x = _find(rep, "loyalty", lv)
        assert abs(np.log1p(x.premium_pct / 100) - res.params[lv]) < 1e-10
        assert abs(x.se_log - res.bse[lv]) < 1e-10 * max(1, res.bse[lv])


def test_cluster_correction_matches_statsmodels_cluster_with_stratum_dummies():
    f = generate_transactions(n_rows=800, n_customers=150, n_items=120, n_weeks=2, premium_pct=2.0, seed=6)
    rep = pricing_audit(f, _spec(groups=["loyalty"], by=None, returning=None, min_count=1))
    res = _dummies_ols(f, [(f.loyalty == "regular").rename("regular"), (f.loyalty == "loyal").rename("loyal")],
                       "cluster", cov_kwds={"groups": f.customer_id.to_numpy(), "use_correction": True})
    x = _find(rep, "loyalty", "loyal")
    assert abs(x.se_log - res.bse["loyal"]) < 1e-10


def test_not_tested_is_not_pass():
    f = generate_transactions(n_rows=3000, n_customers=300, n_items=15, n_weeks=3, premium_pct=0.0, seed=5)
    rep = pricing_audit(f, _spec(groups=["loyalty"], by=None, returning=None, min_count=100_000))
    assert all(x.suppressed for x in rep.findings) and rep.overall.verdict == "NOT TESTED"
    assert "suppressed" in rep.overall.reason
    assert all(r.verdict == "NOT TESTED" and "--min-count" in r.detail for r in rep.rules)
    # a level that never shares an item and week with the reference cannot be compared
    g = f.copy()
    g["shop"] = np.where(g.item_id < 7, "a", "b")
    rep = pricing_audit(g, _spec(groups=["shop"], by=None, returning=None, min_count=1))
    assert rep.overall.verdict == "NOT TESTED"
    assert "no stratum holds both" in rep.findings[0].suppressed_reason


def test_calendar_window_on_numbers_or_text_ids_is_an_error():
    f = generate_transactions(n_rows=2000, n_customers=200, n_items=15, n_weeks=3, premium_pct=0.0, seed=5)
    with pytest.raises(ValueError, match="--window raw"):
        pricing_audit(f, _spec(groups=["loyalty"], by=None, returning=None, window="week"))
    g = f.assign(week="w" + f.week.astype(str))
    with pytest.raises(ValueError, match="--window raw"):
        pricing_audit(g, _spec(groups=["loyalty"], by=None, returning=None, window="day"))
    assert pricing_audit(g, _spec(groups=["loyalty"], by=None, returning=None, window="raw")).findings


def test_missing_group_values_are_a_level():
    f = generate_transactions(premium_pct=0.0, **GEN)
    f["loyalty"] = f["loyalty"].astype(object)
    f.loc[f.index[:3000], "loyalty"] = None
    rep = pricing_audit(f, _spec(groups=["loyalty"], by=None, returning=None))
    assert rep.missing == {"loyalty": 3000}
    m = _find(rep, "loyalty", "(missing)")
    assert m.reference == "new" and not m.suppressed and m.n_rows > 0
    assert rep.n_rows == len(f)


def test_min_clusters_suppresses_few_customers_with_many_rows():
    f = generate_transactions(premium_pct=0.0, **GEN)
    f["vip"] = np.where(f.customer_id.isin([1, 2, 3]), "yes", "no")
    assert (f.vip == "yes").sum() > 30
    rep = pricing_audit(f, _spec(groups=["vip"], references={"vip": "no"}, by=None, returning=None))
    assert not _find(rep, "vip", "yes").suppressed          # rows alone pass --min-count
    rep = pricing_audit(f, _spec(groups=["vip"], references={"vip": "no"}, by=None, returning=None, min_clusters=10))
    v = _find(rep, "vip", "yes")
    assert v.suppressed and v.n_level_clusters == 3 and "--min-clusters" in v.suppressed_reason


def test_continuous_attribute_bins_and_slope():
    f = generate_transactions(premium_pct=0.0, **GEN)
    rng = np.random.default_rng(0)
    cust_income = rng.uniform(10, 90, f.customer_id.max() + 1)  # thousands
    f["income"] = cust_income[f.customer_id]
    f["price"] = (f.price * np.exp(0.0005 * f.income)).round(2)  # +0.05% per thousand
    rep = pricing_audit(f, _spec(groups=["income"], continuous={"income": 4}, slopes=["income"], by=None,
                                 returning=None, references={}))
    assert rep.binning["income"].startswith("4 quantile bins: [")
    s = next(x for x in rep.findings if x.kind == "slope")
    assert s.ci_low <= 100 * np.expm1(0.0005) <= s.ci_high and s.p_value < 1e-6
    bins = sorted((x for x in rep.findings if x.attribute == "income" and x.kind == "level"),
                  key=lambda x: float(x.group[1:].split(",")[0]))
    assert len(bins) == 3 and bins[0].premium_pct < 0 < bins[-1].premium_pct  # reference: a middle bin
    # slope against OLS with stratum dummies (beta exact)
    g = f.iloc[:3000]
    rep = pricing_audit(g, _spec(groups=[], slopes=["income"], by=None, returning=None, customer=None, min_count=1))
    res = _dummies_ols(g, [g.income], "HC1")
    s = rep.findings[0]
    assert abs(np.log1p(s.premium_pct / 100) - res.params["income"]) < 1e-10
    assert abs(s.se_log - res.bse["income"]) < 1e-10


def test_flag_rule_above_threshold_is_one_sided_at_the_threshold():
    f = generate_transactions(premium_pct=1.3, **{**GEN, "n_rows": 5000, "n_customers": 500})
    sig = pricing_audit(f, _spec(groups=["loyalty"], by=None, returning=None, threshold_pct=1.0))
    one = pricing_audit(f, _spec(groups=["loyalty"], by=None, returning=None, threshold_pct=1.0,
                                 flag_rule="above-threshold"))
    a, b = _find(sig, "loyalty", "loyal"), _find(one, "loyalty", "loyal")
    assert a.premium_pct > 1.0 and a.ci_low < 1.0     # above the threshold, but not clearly
    assert a.flagged and not b.flagged
    assert next(r for r in one.rules if r.subject.startswith("loyalty=loyal")).verdict == "INCONCLUSIVE"
    f = generate_transactions(premium_pct=2.0, **GEN)
    b = _find(pricing_audit(f, _spec(groups=["loyalty"], by=None, returning=None, threshold_pct=1.0,
                                     flag_rule="above-threshold")), "loyalty", "loyal")
    assert b.ci_low > 1.0 and b.flagged


def test_several_by_columns():
    f = generate_transactions(premium_pct=2.5, **GEN)
    f["channel"] = np.where(f.customer_id % 2 == 0, "web", "store")
    rep = pricing_audit(f, _spec(groups=["loyalty"], by=["category", "channel"], returning=None))
    cols = {(x.slice_column, x.slice) for x in rep.findings}
    assert (None, "all") in cols and ("channel", "web") in cols and ("category", "cat3") in cols
    assert _find(rep, "loyalty", "loyal", "store").flagged


def test_unused_categories_are_not_levels():
    f = generate_transactions(n_rows=3000, n_customers=300, n_items=15, n_weeks=3, premium_pct=0.0, seed=5)
    f["loyalty"] = f["loyalty"].cat.add_categories(["platinum"])
    rep = pricing_audit(f, _spec(groups=["loyalty"], by=None, returning=None, min_count=1))
    assert {x.group for x in rep.findings} == {"regular", "loyal"}
