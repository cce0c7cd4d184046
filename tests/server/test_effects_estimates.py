"""Effect measurement without Flower: outcome definitions, the uplift estimator and its intervals
(checked by Monte Carlo, with and without the units' noise), the release's accounting, the planted
uplift of the synthetic world, and the fairness of interventions through the audit."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from fedseg.config import EffectsPlan
from fedseg.effects import STATS, cell_statistics, user_outcomes
from server.effects import arm_sizes, estimate_effects

CAMPAIGN = dt.date(2024, 3, 31)


def test_outcomes_in_the_window():
    events = pd.DataFrame({
        "user_id": ["a", "a", "b", "b", "c", "d"],
        "ts": pd.to_datetime(["2024-03-31 12:00", "2024-04-02 00:00", "2024-04-05 00:00", "2024-04-06 00:00", "2024-05-25 00:00",
                              "2024-06-05 00:00"]),
        "event_type": ["purchase", "purchase", "purchase", "refund", "visit", "purchase"],
        "amount": [50.0, 20.0, 30.0, 40.0, 0.0, 10.0],
    })
    out = user_outcomes(events, ["a", "b", "c", "d", "e"], CAMPAIGN, window_days=60, retention_days=30).set_index("user_id")
    # a: the campaign-day purchase is history; the 04-02 one counts. b: refund above the purchase floors at 0.
    assert out.loc["a"].tolist() == [1.0, 20.0, 0.0]
    assert out.loc["b"].tolist() == [1.0, 0.0, 0.0]
    assert out.loc["c"].tolist() == [0.0, 0.0, 1.0]      # a visit in the last 30 days: retained, no conversion
    assert out.loc["d"].tolist() == [0.0, 0.0, 0.0]      # 06-05 is after the 60-day window (ends 05-31)
    assert out.loc["e"].tolist() == [0.0, 0.0, 0.0]


def simulated_cells(rng: np.random.Generator, n: int, effects: list[float], base: float = 0.3,
                    share: float = 0.1) -> tuple[pd.DataFrame, list[float]]:
    """One randomised experiment per cell: binary conversion with a planted uplift, revenue = 40 per
    conversion plus noise; returns the per-user table and the cells' true average effects."""
    rows, truth = [], []
    for c, effect in enumerate(effects):
        held = rng.random(n) < share
        y0 = rng.random(n) < base
        y1 = y0 | (rng.random(n) < effect / (1 - base))
        y = np.where(held, y0, y1)
        revenue = y * rng.gamma(4.0, 10.0, n)
        rows.append(pd.DataFrame({"segment": f"s{c}", "action": "x", "arm": np.where(held, "holdout", "treatment"),
                                  "conversion": y.astype(float), "revenue": revenue, "retention": y.astype(float)}))
        truth.append(float((y1.astype(float) - y0.astype(float)).mean()))
    return pd.concat(rows, ignore_index=True), truth


@pytest.mark.parametrize("noisy", [False, True])
def test_intervals_cover_the_true_effect_at_the_stated_rate(noisy):
    rng = np.random.default_rng(11)
    effects = [0.0, 0.05, 0.1, 0.2]
    plan = EffectsPlan(min_arm=20, revenue_clip=500.0)
    scales = np.array([21.0, 4.2, 10.5, 12.7, 10.5]) if noisy else None    # Laplace, as the units add it
    hits = []
    for _ in range(150):
        table, truth = simulated_cells(rng, 1500, effects)
        stats = cell_statistics(table, [f"s{c}" for c in range(4)], ["x"], clip=500.0 if noisy else None)
        noise_var = None
        if noisy:  # three units, each adding its own noise
            stats = stats + sum(rng.laplace(0, 1, stats.shape) * scales for _ in range(3))
            noise_var = 3 * 2 * scales ** 2
        found = estimate_effects(stats, [(f"s{c}", "x") for c in range(4)], plan, {"x": 1.0}, {"x": "sms"},
                                 noise_var, 500.0 if noisy else 1.0, holdout_share=0.1, units=3)
        hits += [e["ci_low"] <= t <= e["ci_high"] for e, t in zip(found, truth)]
    assert np.mean(hits) == pytest.approx(0.95, abs=0.03)


def test_without_noise_the_arms_are_the_exact_counts_and_uplift_is_the_difference_in_means():
    rng = np.random.default_rng(3)
    table, _ = simulated_cells(rng, 2000, [0.1])
    stats = cell_statistics(table, ["s0"], ["x"])
    [entry] = estimate_effects(stats, [("s0", "x")], EffectsPlan(), {"x": 2.0}, {"x": "sms"})
    treated, held = table[table["arm"] == "treatment"], table[table["arm"] == "holdout"]
    assert entry["n_treated"] == len(treated) and entry["n_control"] == len(held)
    assert entry["uplift"] == pytest.approx(treated["conversion"].mean() - held["conversion"].mean())
    revenue = entry["outcomes"]["revenue"]
    assert revenue["uplift"] == pytest.approx(treated["revenue"].mean() - held["revenue"].mean())
    assert revenue["se"] == pytest.approx(np.sqrt(treated["revenue"].var() / len(treated) +
                                                  held["revenue"].var() / len(held)), rel=1e-9)
    assert entry["roi"] == pytest.approx((revenue["uplift"] - 2.0) / 2.0)
    assert entry["arm_sizes"] == "exact counts"


def test_arm_sizes_use_the_holdout_share_only_when_the_counts_agree():
    n_t, n_h, v_t, v_h, how = arm_sizes(900.0, 100.0, 400.0, 0.1, units=5)
    assert (n_t, n_h) == pytest.approx((900.0, 100.0)) and v_h == pytest.approx(2 * 0.01 * 400 + 1.25)
    assert "holdout share" in how and v_h < 400 / 20
    # a unit that held out 30% shows: the released counts are used
    n_t, n_h, v_t, v_h, how = arm_sizes(700.0, 300.0, 4.0, 0.1, units=5)
    assert (n_t, n_h, v_h) == (700.0, 300.0, 4.0) and "not the playbook's" in how


def test_the_laplace_release_is_accounted_and_meets_its_pure_dp_bound():
    """Each answer is one Laplace release: alone it is (sum_s 1 / b_s, 0)-DP (the closed form, no
    accountant); the RDP accountant, which composes it in the ledger, charges at most the target."""
    from privacy.accounting import Release, epsilon, gaussian_noise_multiplier
    from privacy.effects_dp import NOISE_WEIGHTS, effects_release, effects_scales

    for outcome in NOISE_WEIGHTS:
        scales = effects_scales(1.0, 1e-6, outcome)
        release = effects_release(scales)
        assert release.mechanism == "laplace"
        pure = sum(1.0 / b for b in scales)          # the pure-DP epsilon of one answer
        assert release.noise_multiplier == pytest.approx(1.0 / pure)
        assert 0.99 < pure <= 1.0                   # RDP charges a little more than the pure bound
        assert epsilon([release], 1e-6) == pytest.approx(1.0, rel=1e-4)
        # composing 4 answers: basic composition gives 4 x pure; the RDP accountant is not tight
        # for pure DP and charges within 1% of it (more, never less than it can prove)
        assert epsilon([release.model_copy(update={"count": 4})], 1e-6) == pytest.approx(4 * pure, rel=0.01)
    # the headline sum's noise: Laplace std sqrt(2) b against the earlier Gaussian sigma at the
    # same epsilon and weights (4.53 x sqrt(sum w^-2) = 5.63)
    headline = effects_scales(1.0, 1e-6, "conversion")[STATS.index("conversions")]
    weights = NOISE_WEIGHTS["conversion"]
    gaussian = gaussian_noise_multiplier(1.0, 1e-6) * np.sqrt(sum(w ** -2 for w in weights))
    assert np.sqrt(2) * headline == pytest.approx(2.93, abs=0.02) and gaussian == pytest.approx(5.63, abs=0.02)
    assert Release(noise_multiplier=1.0, mechanism="laplace").event().__class__.__name__ == "LaplaceDpEvent"
    with pytest.raises(ValueError, match="needs 5 positive noise scales"):
        effects_release([1.0, 2.0])


def test_planted_uplift_is_realised_for_treated_users_only():
    from simulations.generator import GeneratorConfig, generate
    from simulations.planted_uplift import PLANTED_UPLIFT, cell_truth, plant_effects

    data = generate(GeneratorConfig(n_users=3000, n_units=1, seed=4))
    users = data.users
    rng = np.random.default_rng(0)
    actions = pd.DataFrame({"user_id": users["user_id"],
                            "action": np.where(users["archetype"] == "silent", "VIP privilege", "win-back offer"),
                            "arm": np.where(rng.random(len(users)) < 0.5, "treatment", "holdout"),
                            "segment": users["archetype"]})
    campaign = dt.date(2023, 11, 1)
    planted = plant_effects(data.events.drop(columns=["unit_id"]), users.set_index("user_id")["archetype"], actions,
                            campaign, 60, seed=1)
    truth = planted.truth
    extra = planted.events.loc[planted.events["event_id"].astype(str).str.startswith("planted-"), "user_id"]
    arm = actions.set_index("user_id")["arm"]
    assert (arm.reindex(extra) == "treatment").all() and len(extra) > 50
    assert truth.loc[truth["extra_purchase"], "d_revenue"].gt(0).all()
    assert set(truth["d_conversion"].unique()) <= {0.0, 1.0}
    cells = cell_truth(truth, actions.set_index("user_id")["segment"])
    assert cells.loc[("silent", "VIP privilege"), "conversion"] == 0.0      # planted: none
    assert PLANTED_UPLIFT["VIP privilege"]["silent"] == 0.0
    at_risk = cells.loc[("at_risk", "win-back offer"), "conversion"]
    assert 0.08 < at_risk < 0.2        # 0.20 extra purchases, less those who would buy anyway


def intervention_units(tmp_path, rate_a: float, rate_b: float, n: int = 1200) -> list:
    from fedseg.io import write_table

    rng = np.random.default_rng(5)
    paths = []
    for k in range(3):
        group = np.where(rng.random(n) < 0.5, "a", "b")
        treated = rng.random(n) < np.where(group == "a", rate_a, rate_b)
        offer = np.where(treated, "win-back offer", "no action")
        table = pd.DataFrame({"offer": offer, "segment": "at-risk", "within_gender": "at-risk & " + group})
        paths.append(write_table(table, tmp_path / f"interventions_unit_{k}.parquet"))
    return paths


def test_treatment_rate_disparity_within_a_segment_is_flagged(tmp_path):
    from simulations.intervention_fairness import intervention_fairness

    fair = intervention_fairness(intervention_units(tmp_path, 0.5, 0.5), ["gender"], ["at-risk"], bootstrap=50)
    assert fair["flags"] == []
    figures = fair["segments"]["at-risk"]["gender"]
    assert figures["treatment_rate"]["a"] == pytest.approx(0.5, abs=0.05) and not figures["significant"]
    assert "win-back offer" in figures["offers"]["categories"]   # the audit's per-offer parity
    biased = intervention_fairness(intervention_units(tmp_path, 0.6, 0.3), ["gender"], ["at-risk"], bootstrap=50)
    assert len(biased["flags"]) == 1 and "at-risk" in biased["flags"][0]
    rates = biased["segments"]["at-risk"]["gender"]
    assert rates["parity_ratio"] == pytest.approx(0.5, abs=0.06) and rates["four_fifths_flag"] and rates["significant"]


def test_the_fairness_audit_under_dp_is_accepted_and_charged_to_the_units_ledger(tmp_path):
    from audit.federated import DPConfig
    from privacy.ledger import BudgetLedger
    from simulations.effects_runner import _unit_account
    from simulations.intervention_fairness import intervention_fairness

    paths = intervention_units(tmp_path, 0.5, 0.5)
    ledger = tmp_path / "ledger.sqlite"
    accounts = [_unit_account(f"unit_{k}", "synthetic", ledger) for k in range(3)]
    fair = intervention_fairness(paths, ["gender"], ["at-risk"], bootstrap=20, dp=DPConfig(epsilon=1.0, delta=1e-6),
                                 accounts=accounts)
    assert fair["privacy"]["noise_sd_per_cell"] > 0 and fair["flags"] == []
    spend = {s.unit: s for s in BudgetLedger(ledger).summary()}
    assert set(spend) == {"unit_0", "unit_1", "unit_2"}
    assert all(s.releases_by_task["audit"].epsilon == pytest.approx(1.0, rel=1e-3) for s in spend.values())


def test_the_treatment_rate_flags_hold_a_five_percent_error_rate_for_the_whole_report():
    """Null data (treatment independent of group) in 4 segments x 2 attributes of 6 groups: the
    report-wide Bonferroni flags at most about 5% of reports; a per-family one flags far more."""
    from statistics import NormalDist
    from types import SimpleNamespace

    from simulations.intervention_fairness import _treatment_rates, flag_gaps

    rng = np.random.default_rng(11)
    flagged, flagged_per_family, reports = 0, 0, 400
    for _ in range(reports):
        report: dict = {"segments": {}, "flags": []}
        for segment in range(4):
            rate = rng.uniform(0.2, 0.5)
            report["segments"][f"s{segment}"] = {}
            for attribute in ("gender", "age_band"):
                sizes = rng.integers(120, 400, size=6)
                treated = rng.binomial(sizes, rate)
                sub = SimpleNamespace(groups=[f"g{i}" for i in range(6)], categories=["win-back offer", "no action"],
                                      cells=np.column_stack([treated, sizes - treated]).tolist())
                report["segments"][f"s{segment}"][attribute] = _treatment_rates(sub, 30, 0.0)
        flag_gaps(report)
        flagged += bool(report["flags"])
        per_family = float(NormalDist().inv_cdf(1 - 0.025 / 15))
        flagged_per_family += any(f["four_fifths_flag"] and f["z"] > per_family
                                  for s in report["segments"].values() for f in s.values())
    assert report["pairs_compared"] == 4 * 2 * 15
    assert report["segments"]["s0"]["gender"]["z_critical"] == pytest.approx(NormalDist().inv_cdf(1 - 0.025 / 120))
    print(f"null reports flagged: report-wide {flagged / reports:.3f}, per family {flagged_per_family / reports:.3f}")
    assert flagged / reports <= 0.06
    assert flagged_per_family / reports > 0.12   # the per-segment rule this replaced
