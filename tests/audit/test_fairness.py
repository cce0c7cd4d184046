from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import (MetricFrame, demographic_parity_difference, demographic_parity_ratio,
                               equal_opportunity_difference, equalized_odds_difference, selection_rate,
                               true_positive_rate)
from sklearn.metrics import roc_auc_score

from audit import FairnessSpec, fairness_audit
from tests.audit.conftest import scored_frame


def _spec(**kw):
    base = dict(label="churned", score="score", groups=["gender", "region"], bootstrap=300, min_group_size=1)
    base.update(kw)
    return FairnessSpec(**base)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.62])
def test_summary_figures_agree_with_fairlearn(seed, threshold):
    f = scored_frame(seed=seed)
    rep = fairness_audit(f, _spec(threshold=threshold, bootstrap=0))
    y_pred = (f.score >= threshold).astype(int)
    for attr in ("gender", "region"):
        a, sf = rep.attributes[attr], f[attr]
        assert abs(a.demographic_parity_difference.value - demographic_parity_difference(f.churned, y_pred, sensitive_features=sf)) < 1e-9
        assert abs(a.demographic_parity_ratio.value - demographic_parity_ratio(f.churned, y_pred, sensitive_features=sf)) < 1e-9
        assert abs(a.equalized_odds_difference.value - equalized_odds_difference(f.churned, y_pred, sensitive_features=sf)) < 1e-9
        assert abs(a.equal_opportunity_difference.value - equal_opportunity_difference(f.churned, y_pred, sensitive_features=sf)) < 1e-9


def test_group_figures_agree_with_fairlearn_and_counts(scored):
    rep = fairness_audit(scored, _spec(intersect=True))
    yp = (scored.score >= 0.5).astype(int)
    mf = MetricFrame(metrics={"sel": selection_rate, "tpr": true_positive_rate}, y_true=scored.churned, y_pred=yp,
                     sensitive_features=scored.gender)
    for g, gf in rep.attributes["gender"].groups.items():
        m = scored.gender == g
        assert gf.n == int(m.sum())
        assert abs(gf.selection_rate.value - mf.by_group.loc[g, "sel"]) < 1e-12
        assert abs(gf.tpr.value - mf.by_group.loc[g, "tpr"]) < 1e-12
        assert abs(gf.auc.value - roc_auc_score(scored.churned[m], scored.score[m])) < 1e-12
        # calibration error recomputed by hand: 10 equal-width bins
        s, y = scored.score[m].to_numpy(), scored.churned[m].to_numpy()
        b = np.minimum((s * 200).astype(int), 199) // 20
        ece = sum(abs(y[b == k].sum() - s[b == k].sum()) for k in range(10)) / m.sum()
        assert abs(gf.calibration_error.value - ece) < 1e-9
        for k in ("selection_rate", "tpr", "fpr", "precision", "auc"):
            e = getattr(gf, k)
            assert e.ci_low <= e.value <= e.ci_high
    inter = rep.attributes["gender&region"]
    assert "a & north" in inter.groups
    assert sum(g.n for g in inter.groups.values()) == len(scored)


def test_bootstrap_is_seeded_and_covers(scored):
    a = fairness_audit(scored, _spec(seed=7)).attributes["gender"].groups["b"].auc
    b = fairness_audit(scored, _spec(seed=7)).attributes["gender"].groups["b"].auc
    c = fairness_audit(scored, _spec(seed=8)).attributes["gender"].groups["b"].auc
    assert a == b and a != c
    assert a.ci_low < a.value < a.ci_high


def test_wilson_interval_matches_row_bootstrap(scored):
    """The selection rate's Wilson interval has the spread of a row bootstrap (checked by brute force)."""
    rep = fairness_audit(scored, _spec(bootstrap=2000, groups=["gender"], min_group_size=30))
    est = rep.attributes["gender"].groups["b"].selection_rate
    rng = np.random.default_rng(1)
    yp = (scored.score.to_numpy() >= 0.5)
    isb = (scored.gender == "b").to_numpy()
    reps = []
    for _ in range(2000):
        idx = rng.integers(0, len(scored), len(scored))
        reps.append(yp[idx][isb[idx]].mean())
    lo, hi = np.quantile(reps, [0.025, 0.975])
    assert abs(est.ci_low - lo) < 0.006 and abs(est.ci_high - hi) < 0.006


def test_small_groups_suppressed_and_listed(scored):
    rep = fairness_audit(scored, _spec(min_group_size=30))
    a = rep.attributes["gender"]
    assert "d" not in a.groups
    assert [(s.group, s.n) for s in a.suppressed] == [("d", 12)]
    kept = scored[scored.gender != "d"]
    yp = (kept.score >= 0.5).astype(int)
    assert abs(a.demographic_parity_difference.value
               - demographic_parity_difference(kept.churned, yp, sensitive_features=kept.gender)) < 1e-9


def test_outcome_mode_chi_square(scored):
    from scipy.stats import chi2_contingency

    rep = fairness_audit(scored, FairnessSpec(outcome="offer", groups=["gender"], bootstrap=200))
    a = rep.attributes["gender"]
    table = scored[scored.gender != "d"].groupby(["gender", "offer"]).size().unstack()
    chi2, p, dof, _ = chi2_contingency(table.to_numpy(), correction=False)
    assert abs(a.independence.chi2 - chi2) < 1e-9 and a.independence.dof == dof
    assert set(a.categories) == {"coupon", "none", "upgrade"}
    for g, gf in a.groups.items():
        assert abs(sum(e.value for e in gf.shares.values()) - 1) < 1e-12
        assert abs(gf.shares["coupon"].value - (table.loc[g, "coupon"] / table.loc[g].sum())) < 1e-12


def test_outcome_mode_detects_dependence_and_four_fifths(scored):
    f = scored.copy()
    f["offer"] = np.where((f.gender == "a") & (np.random.default_rng(0).random(len(f)) < 0.5), 1, 0)
    f.loc[f.gender != "a", "offer"] = (np.random.default_rng(1).random((f.gender != "a").sum()) < 0.2).astype(int)
    rep = fairness_audit(f, FairnessSpec(outcome="offer", groups=["gender"], bootstrap=100))
    a = rep.attributes["gender"]
    assert list(a.categories) == ["1"]
    assert a.independence.p_value < 1e-6
    assert a.reference == "a" and a.reference_source == "largest group"
    ratio = a.groups["b"].shares["1"].ratio_to_reference
    assert ratio.ci_high < 0.8
    assert any(r.rule == "four-fifths" and r.verdict == "FAIL" and r.subject == "gender=b vs a [1]" for r in rep.rules)
    assert rep.overall.verdict == "FAIL"


def test_user_errors_are_value_errors(scored):
    with pytest.raises(ValueError, match="missing column"):
        fairness_audit(scored, _spec(groups=["nope"]))
    bad = scored.assign(score=scored.score * 2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fairness_audit(bad, _spec())


def test_new_rates_and_reference_comparisons(scored):
    from fairlearn.metrics import false_negative_rate

    rep = fairness_audit(scored, _spec(references={"gender": "c"}, bootstrap=0))
    a = rep.attributes["gender"]
    assert a.reference == "c" and a.reference_source == "given (--reference)" and a.groups["c"].reference
    yp = (scored.score >= 0.5).astype(int)
    for g, gf in a.groups.items():
        m = (scored.gender == g).to_numpy()
        y, p = scored.churned.to_numpy()[m], yp.to_numpy()[m]
        assert abs(gf.fnr.value - false_negative_rate(y, p)) < 1e-12
        assert abs(gf.false_omission_rate.value - y[p == 0].mean()) < 1e-12
        assert gf.fnr.count == y.sum() and gf.false_omission_rate.count == (p == 0).sum()
        if g == "c":
            assert gf.selection_rate.ratio_to_reference is None
            continue
        ref = a.groups["c"]
        for k in ("selection_rate", "tpr", "fpr", "fnr", "precision", "false_omission_rate"):
            e, r = getattr(gf, k), getattr(ref, k)
            assert abs(e.ratio_to_reference.value - e.value / r.value) < 1e-12
            assert abs(e.difference_to_reference.value - (e.value - r.value)) < 1e-12
            for x in (e, e.ratio_to_reference, e.difference_to_reference):
                assert x.ci_low <= x.value <= x.ci_high
    with pytest.raises(ValueError, match="does not occur"):
        fairness_audit(scored, _spec(references={"gender": "zz"}))
    with pytest.raises(ValueError, match="not an audited attribute"):
        _spec(references={"age": "x"})


def test_suppression_by_the_count_each_metric_rests_on(scored):
    f = scored.copy()
    # group e: 200 rows but only 5 positives -> TPR, FNR (and AUC) suppressed, selection rate reported
    extra = f.iloc[:200].copy()
    extra["gender"], extra["churned"] = "e", 0
    extra.iloc[:5, extra.columns.get_loc("churned")] = 1
    rep = fairness_audit(pd.concat([f, extra], ignore_index=True), _spec(min_group_size=30, bootstrap=0))
    a = rep.attributes["gender"]
    e = a.groups["e"]
    assert e.n == 200 and e.selection_rate is not None and e.fpr is not None
    assert e.tpr is None and e.fnr is None and e.auc is None
    cells = {(s.group, s.metric): s for s in a.suppressed}
    assert cells[("e", "tpr")].count == 5 and cells[("e", "tpr")].basis == "positives"
    assert cells[("e", "fnr")].count == 5 and cells[("d", "all")].count == 12
    tpr_rules = [r for r in rep.rules if r.rule == "fnr-ratio" and r.subject.startswith("gender=e")]
    assert tpr_rules[0].verdict == "NOT TESTED" and "5 positives < 30" in tpr_rules[0].detail


def test_intervals_contain_the_estimate_and_respect_the_range():
    """Seen before: equalized odds 0.020 with [0.021, 0.077], calibration 0.0555 with [0.0562, 0.142], AUC to 1.001."""
    bad = []
    for seed in range(16):
        rng = np.random.default_rng(seed)
        n = 3000
        g = rng.choice(["a", "b", "c"], n)
        s = rng.random(n)
        y = rng.random(n) < s  # calibrated, no disparity: summaries and ECE near 0
        if seed % 2:
            s = np.where(y, rng.beta(30, 1, n), rng.beta(1, 30, n))
        frame = pd.DataFrame({"g": g, "y": y.astype(int), "s": s})
        rep = fairness_audit(frame, FairnessSpec(label="y", score="s", groups=["g"], bootstrap=300, seed=seed,
                                                 min_group_size=10))
        a = rep.attributes["g"]
        ests = {k: getattr(a, k) for k in ("demographic_parity_difference", "demographic_parity_ratio",
                                           "equalized_odds_difference", "equal_opportunity_difference")}
        for grp, gf in a.groups.items():
            for k in ("auc", "calibration_error", "selection_rate", "tpr", "fpr", "fnr", "precision",
                      "false_omission_rate"):
                ests[f"{grp}.{k}"] = getattr(gf, k)
        for k, e in ests.items():
            if not (0 <= e.ci_low <= e.value <= e.ci_high <= 1):
                bad.append((seed, k, e))
    assert not bad, bad[:5]
    # AUC whose exact value (1) is far from the binned one (0.75: half the pairs share a score bin): the old
    # additive shift gave [0.970, 1.027]; the interval now stays within [0, 1]
    s = np.r_[np.full(150, 0.30), np.full(150, 0.5011), np.full(300, 0.5041)]
    frame = pd.DataFrame({"g": "a", "y": np.r_[np.zeros(300), np.ones(300)].astype(int), "s": s})
    auc = fairness_audit(frame, FairnessSpec(label="y", score="s", groups=["g"], bootstrap=200)).attributes["g"].groups["a"].auc
    assert auc.value == 1.0 and 0 <= auc.ci_low <= 1.0 and auc.ci_high == 1.0


def test_outcome_with_label_is_refused():
    with pytest.raises(ValueError, match="--outcome alone"):
        FairnessSpec(outcome="offer", label="churned", groups=["gender"])


def test_policy_verdicts_from_intervals(scored, tmp_path):
    from audit.policy import load_policy

    pol = tmp_path / "p.toml"
    pol.write_text('''
name = "test"
[[rule]]
name = "sel-ratio"
metric = "selection_rate"
compare = "ratio_to_reference"
min = 0.8
max = 1.25
attributes = ["gender"]
source = "test"
[[rule]]
name = "dpd"
metric = "demographic_parity_difference"
max = 0.5
''')
    rep = fairness_audit(scored, _spec(policy=load_policy(pol), bootstrap=0, min_group_size=30))
    v = {r.subject: r for r in rep.rules}
    b = rep.attributes["gender"].groups["b"].selection_rate.ratio_to_reference
    assert b.ci_low > 1.25 and v["gender=b vs a"].verdict == "FAIL"   # interval beyond the maximum
    assert v["gender=d vs a"].verdict == "NOT TESTED"
    assert v["gender"].verdict == "PASS" and v["region"].verdict == "PASS"
    assert all(r.allowed for r in rep.rules) and v["gender=b vs a"].source == "test"
    assert rep.overall.verdict == "FAIL"
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rule]]\nname = "x"\nmetric = "nope"\nmax = 1\n')
    with pytest.raises(ValueError, match="unknown metric"):
        load_policy(bad)
