from __future__ import annotations

import numpy as np
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
    a = fairness_audit(scored, _spec(seed=7)).attributes["gender"].demographic_parity_difference
    b = fairness_audit(scored, _spec(seed=7)).attributes["gender"].demographic_parity_difference
    c = fairness_audit(scored, _spec(seed=8)).attributes["gender"].demographic_parity_difference
    assert a == b and a != c
    assert a.ci_low < a.value < a.ci_high


def test_bootstrap_interval_matches_row_bootstrap(scored):
    """The multinomial-cell bootstrap has the same spread as a row bootstrap (checked by brute force)."""
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
    assert a.four_fifths_flag is True
    assert any(r.rule == "four-fifths" and not r.passed for r in rep.rules)


def test_user_errors_are_value_errors(scored):
    with pytest.raises(ValueError, match="missing column"):
        fairness_audit(scored, _spec(groups=["nope"]))
    bad = scored.assign(score=scored.score * 2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fairness_audit(bad, _spec())
