"""The intervention loop on Flower's simulation engine: synthetic units segment, act with holdouts,
the world answers with a planted uplift, and the federated measurement recovers it; the same
measurement from the units' files; the command's one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fedseg.config import EffectsPlan
from simulations.effects_runner import EffectsJob, run_effects_job
from tests.clients.test_cli_errors import one_error_line
from tests.support.pictures import assert_picture

KEYS = {"segment", "action", "n_treated", "n_control", "uplift", "ci_low", "ci_high", "roi"}


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    out = tmp_path_factory.mktemp("effects")
    job = EffectsJob(synthetic_users=6000, units=3, seed=3, out=out, research_seed=5, plan=EffectsPlan(min_arm=20))
    return out, run_effects_job(job)


def test_the_loop_writes_effects_with_intervals_roi_and_the_planted_truth(loop):
    out, report = loop
    assert json.loads((out / "effects.json").read_text())["summary"] == report["summary"]
    assert report["figures"] == ["uplift.png"]
    assert_picture(out / "uplift.png")
    estimated = [e for e in report["effects"] if e["uplift"] is not None]
    assert len(estimated) >= 4
    for e in estimated:
        assert KEYS <= set(e) and "planted_uplift" in e
        assert e["ci_low"] < e["uplift"] < e["ci_high"] and e["n_control"] >= 20
        assert e["roi"] == pytest.approx((e["outcomes"]["revenue"]["uplift"] - e["cost"]) / e["cost"])
    # 95% intervals: with a handful of cells, at most one may miss the planted effect by chance
    assert sum(not e["covered"] for e in estimated) <= 1
    assert report["summary"]["coverage"] == np.mean([e["covered"] for e in estimated])
    # some actions do nothing for some segments (planted 0), others a lot
    planted = [e["planted_uplift"] for e in estimated]
    assert min(planted) < 0.03 and max(planted) > 0.1


def test_units_keep_their_crm_files_and_the_measurement_used_their_holdouts(loop):
    out, report = loop
    for k in range(3):
        actions = pd.read_parquet(out / "units" / f"actions_unit_{k}.parquet")
        assert (out / "units" / f"actions_unit_{k}.csv").exists()
        entered = actions[actions["arm"] != "suppressed"]
        assert entered["holdout"].mean() == pytest.approx(0.1, abs=0.02)
    total = sum(e["n_treated"] + e["n_control"] for e in report["effects"])
    listed = sum(len(pd.read_parquet(out / "units" / f"actions_unit_{k}.parquet").query("arm != 'suppressed'"))
                 for k in range(3))
    assert total == listed  # every experiment user is counted once, in its cell and arm


def test_the_fairness_audit_of_the_interventions_ran_within_segments(loop):
    _, report = loop
    fairness = report["fairness"]
    assert set(fairness["segments"]) == set(report["plan"]["segments"])
    some = next(iter(fairness["segments"].values()))
    assert {"gender", "age_band"} <= set(some)
    assert all(0 <= r <= 1 for r in some["gender"]["treatment_rate"].values())
    # one Bonferroni correction over every pair of groups compared in the report, and the flags
    # follow the stated rule. (Attributes are independent of behaviour here, so a flag is a false
    # alarm; their rate on null data, at most 5% of reports, is measured over 400 reports in
    # tests/server/test_effects_estimates.py: one run of this fixture cannot measure a rate.)
    compared = [f for by_attribute in fairness["segments"].values() for f in by_attribute.values() if "z" in f]
    assert fairness["pairs_compared"] == sum(f["pairs"] for f in compared) > 0
    expected = [f for f in compared if f["four_fifths_flag"] and f["z"] > f["z_critical"]]
    assert len(fairness["flags"]) == len(expected)
    assert all(f["z_critical"] == compared[0]["z_critical"] for f in compared)


def test_the_same_measurement_from_the_units_files(loop, tmp_path):
    out, report = loop
    job = EffectsJob(dataset="files", out=tmp_path, fairness=False,
                     events=[out / "outcomes" / f"events_unit_{k}.parquet" for k in range(3)],
                     actions=[out / "units" / f"actions_unit_{k}.parquet" for k in range(3)],
                     plan=EffectsPlan(min_arm=20, segments=report["plan"]["segments"]))
    again = run_effects_job(job)
    assert again["plan"]["campaign_date"] == report["plan"]["campaign_date"]
    for a, b in zip(report["effects"], again["effects"]):
        assert (a["segment"], a["action"], a["uplift"]) == (b["segment"], b["action"], b["uplift"])


def test_the_measurement_under_dp_is_a_laplace_release_each_unit_charges(loop, tmp_path, capsys):
    """epsilon 1 on the units' files: every unit accepts and charges one Laplace release whose
    pure-DP bound (sum of 1 / scale over the five statistics) is what the accountant states; the
    intervals carry the noise; the console says what noise was added."""
    from privacy.ledger import BudgetLedger
    from simulations.value_cli import print_effects

    out, report = loop
    ledger = tmp_path / "ledger.sqlite"
    job = EffectsJob(dataset="files", out=tmp_path / "dp", fairness=False, ledger=ledger,
                     events=[out / "outcomes" / f"events_unit_{k}.parquet" for k in range(3)],
                     actions=[out / "units" / f"actions_unit_{k}.parquet" for k in range(3)],
                     plan=EffectsPlan(min_arm=20, segments=report["plan"]["segments"], epsilon=1.0, delta=1e-6))
    noisy = run_effects_job(job)
    privacy = noisy["privacy"]
    scales = list(privacy["laplace_scale_per_statistic"].values())
    assert privacy["mechanism"] == "laplace" and privacy["epsilon"] == pytest.approx(1.0, rel=1e-4)
    assert 0.99 < sum(1.0 / b for b in scales) <= 1.0          # the closed-form pure-DP epsilon
    spend = {s.unit: s for s in BudgetLedger(ledger).summary()}
    assert set(spend) == {"unit_0", "unit_1", "unit_2"}
    assert all(s.releases_by_task["effects"].epsilon == pytest.approx(1.0, rel=1e-4) for s in spend.values())
    exact = {(e["segment"], e["action"]): e for e in report["effects"] if e["uplift"] is not None}
    for e in noisy["effects"]:
        if e["uplift"] is not None and (e["segment"], e["action"]) in exact:
            plain = exact[(e["segment"], e["action"])]
            assert e["ci_high"] - e["ci_low"] > plain["ci_high"] - plain["ci_low"]
    print_effects(noisy, tmp_path / "dp")
    assert "Laplace noise of scale n" in " ".join(capsys.readouterr().out.split())


def _files_job(out, report, tmp_path, **plan):
    return EffectsJob(dataset="files", out=tmp_path, fairness=False,
                      events=[out / "outcomes" / f"events_unit_{k}.parquet" for k in range(3)],
                      actions=[out / "units" / f"actions_unit_{k}.parquet" for k in range(3)],
                      plan=EffectsPlan(min_arm=20, segments=report["plan"]["segments"], **plan))


def test_a_secure_sum_of_the_units_tables_equals_their_plain_sum(loop, tmp_path):
    """Secure aggregation on query.effects (the SecAgg+ rounds of training, on the measurement's
    table): the coordinator gets only the sum, and it is the plain sum up to the ring's stated
    rounding. Both runs clip revenue at the plan's clip (a ring sum needs bounded entries)."""
    out, report = loop
    plain = run_effects_job(_files_job(out, report, tmp_path / "plain"))
    secure = run_effects_job(_files_job(out, report, tmp_path / "secure", secagg=True))
    facts = secure["privacy"]["secure_aggregation"]
    assert facts["units_summed"] == facts["masked"] == 3 and facts["threshold"] == 2   # 3 units: 2 neighbours each
    for a, b in zip(plain["effects"], secure["effects"]):
        assert (a["segment"], a["action"]) == (b["segment"], b["action"])
        assert (b["n_treated"], b["n_control"]) == (a["n_treated"], a["n_control"])   # counts rounded back
        if a["uplift"] is not None:
            assert b["uplift"] == pytest.approx(a["uplift"], abs=1e-6)


def test_under_secure_aggregation_each_unit_adds_only_its_share_of_the_noise(loop, tmp_path, capsys):
    """epsilon 1 with --secagg: the same accepted and charged Laplace release per unit, but each
    unit adds Gamma-difference shares sized for t = 2, so the 3 summed shares carry 3/2 of one
    Laplace release's variance instead of 3 of them; the console says so."""
    from privacy.ledger import BudgetLedger
    from simulations.value_cli import print_effects

    out, report = loop
    ledger = tmp_path / "ledger.sqlite"
    job = _files_job(out, report, tmp_path / "dp", secagg=True, epsilon=1.0, delta=1e-6)
    noisy = run_effects_job(job.model_copy(update={"ledger": ledger}))
    assert noisy["privacy"]["epsilon"] == pytest.approx(1.0, rel=1e-4)
    assert noisy["privacy"]["secure_aggregation"]["threshold"] == 2
    assert noisy["privacy"]["secure_aggregation"]["min_survivors"] == 3   # all units: one Laplace release in all
    spend = {s.unit: s for s in BudgetLedger(ledger).summary()}
    assert all(spend[f"unit_{k}"].releases_by_task["effects"].epsilon == pytest.approx(1.0, rel=1e-4) for k in range(3))
    print_effects(noisy, tmp_path / "dp")
    said = " ".join(capsys.readouterr().out.split())
    assert "the coordinator saw only the sum over 3 units (threshold 2, at least 3 survivors); each unit added a " \
        "1/3 share of that noise" in said


def test_gamma_difference_shares_of_t_units_sum_to_the_laplace_law():
    """Any t shares sum to Laplace(b): variance 2 b^2 and the Laplace kurtosis (excess 3), checked
    on 200,000 draws; m > t shares carry m / t of the variance."""
    from clients.effects import laplace_shares

    rng = np.random.default_rng(0)
    b, t = np.array([2.0]), 4
    total = sum(laplace_shares((200_000, 1), b, t, rng) for _ in range(t)).ravel()
    assert total.var() == pytest.approx(2 * b[0] ** 2, rel=0.02)
    assert np.mean(np.abs(total)) == pytest.approx(b[0], rel=0.02)                 # E|X| = b for Laplace(b)
    assert (np.mean(total ** 4) / total.var() ** 2 - 3) == pytest.approx(3.0, abs=0.3)
    more = sum(laplace_shares((200_000, 1), b, t, rng) for _ in range(6)).ravel()
    assert more.var() == pytest.approx(6 / t * 2 * b[0] ** 2, rel=0.02)


runner = CliRunner()


@pytest.mark.parametrize(("args", "message"), [
    (["--events", "nowhere.csv"], "--events nowhere.csv: no such file"),
    (["--outcome", "happiness"], "--outcome: Input should be 'conversion', 'revenue' or 'retention'"),
    (["--delta", "1e-6"], "--delta without --epsilon"),
    (["--dataset", "cdnow"], "--dataset 'cdnow': use synthetic, or give --events and --actions files"),
    (["--retention-days", "90"], "longer than the window"),
    (["--secagg", "--secagg-threshold", "1.5"], "--secagg-threshold 1.5: give a whole count of units (>= 2)"),
    (["--secagg", "--units", "2"], "--secagg needs at least 3 units (got 2)"),
    (["--secagg", "--secagg-survivors", "2"], "--secagg-survivors 2: give a whole count of units (>= 3)"),
    (["--secagg", "--secagg-survivors", "6"], "--secagg-survivors 6 is more than the 5 units"),
])
def test_effects_mistakes_are_one_line(args, message, tmp_path):
    from fedseg.cli import app

    result = runner.invoke(app, ["effects", "--out", str(tmp_path), *args])
    assert message in one_error_line(result)


def test_files_mode_needs_pairs(tmp_path):
    from fedseg.cli import app

    events = tmp_path / "e.csv"
    events.write_text("user_id,ts,event_type\nu1,2024-01-01,purchase\n")
    result = runner.invoke(app, ["effects", "--events", str(events), "--actions", str(events), "--out",
                                 str(tmp_path / "o")])
    assert "one --events and one --actions file per unit, at least two units" in one_error_line(result)
