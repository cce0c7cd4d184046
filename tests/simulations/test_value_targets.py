"""Issue 15's targets on the full default runs (minutes each: ``pytest -m slow tests/simulations/test_value_targets.py``).

- ``fedseg clv``: the federated model above every baseline (centralised aside) on normalized Gini
  and top-decile capture, above the goal (Gini 0.72, top-decile 0.55); at epsilon 4 within 0.02
  Gini of non-private (both scored exactly on the pooled test users);
- ``fedseg effects``: intervals cover the planted uplift in at least 90% of cells; at epsilon 1 with
  20,000 users every release is accepted and charged, coverage holds, and the intervals are wider
  by the factor measured and documented (the issue's 1.5x is NOT reached; docs/value-and-interventions.md).
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clv_dirs(tmp_path_factory):
    return tmp_path_factory.mktemp("clv")


@pytest.fixture(scope="module")
def clv_runs(clv_dirs):
    from simulations.runner import SimulationConfig, run_simulation_job

    base = clv_dirs
    plain = run_simulation_job(SimulationConfig.from_settings(target="clv", out=base / "plain"))
    private = run_simulation_job(SimulationConfig.from_settings(target="clv", out=base / "dp", privacy="user",
                                                                epsilon=4.0, baselines=True))
    return plain, private


def test_federated_clv_beats_every_baseline_on_cdnow(clv_runs, clv_dirs):
    plain, _ = clv_runs
    m, baselines = plain["metrics"], plain["baselines"]
    for name in ("bgnbd_gamma_gamma", "past_spend"):
        assert m["normalized_gini"] > baselines[name]["normalized_gini"], name
        assert m["top_decile_capture"] > baselines[name]["top_decile_capture"], name
    assert m["normalized_gini"] > 0.72 and m["top_decile_capture"] > 0.55
    assert abs(m["normalized_gini"] - baselines["centralised"]["normalized_gini"]) < 0.02
    from tests.support.pictures import assert_picture

    assert plain["figures"] == ["calibration.png", "gain.png"]
    for name in plain["figures"]:
        assert_picture(clv_dirs / "plain" / name)


def test_clv_at_epsilon_4_is_within_0_02_gini_of_non_private(clv_runs):
    plain, private = clv_runs
    assert private["privacy"]["epsilon"] == pytest.approx(4.0, rel=1e-3)
    gap = plain["metrics"]["exact_pooled"]["normalized_gini"] - private["metrics"]["exact_pooled"]["normalized_gini"]
    assert gap < 0.02


def test_effects_intervals_cover_the_planted_uplift_over_seeds(tmp_path):
    from simulations.effects_runner import EffectsJob, run_effects_job

    covered = []
    for seed in (0, 1, 2):
        report = run_effects_job(EffectsJob(seed=seed, out=tmp_path / f"s{seed}", research_seed=seed, fairness=False))
        covered += [e["covered"] for e in report["effects"] if "covered" in e]
    assert len(covered) >= 15
    assert sum(covered) / len(covered) >= 0.9


@pytest.mark.parametrize(("secagg", "widest"), [(False, 4.0), (True, 1.5)])
def test_effects_at_epsilon_1_with_20000_users(tmp_path, secagg, widest):
    """Median interval width ratio at epsilon 1, measured per seed: 2.17 to 2.83 with each unit
    adding full Laplace noise (eight runs), 1.33 to 1.48 with secure aggregation and noise shares
    sized for all five units (ten runs); the issue's target, 1.5, is the bound
    (docs/value-and-interventions.md)."""
    from fedseg.config import EffectsPlan
    from privacy.ledger import BudgetLedger
    from simulations.effects_runner import EffectsJob, run_effects_job

    ledger = tmp_path / "ledger.sqlite"
    report = run_effects_job(EffectsJob(out=tmp_path / "dp", ledger=ledger, research_seed=1,
                                        plan=EffectsPlan(epsilon=1.0, secagg=secagg)))
    assert report["privacy"]["epsilon"] == pytest.approx(1.0, rel=1e-3) and report["privacy"]["delta"] == 1e-6
    for unit in BudgetLedger(ledger).summary():
        assert unit.releases_by_task["effects"].epsilon == pytest.approx(1.0, rel=1e-3)
        assert unit.releases_by_task["audit"].epsilon == pytest.approx(1.0, rel=1e-3)
    summary = report["summary"]
    assert summary["coverage"] >= 0.8
    ratio = summary["interval_width_ratio"]["median"]
    assert 1.0 < ratio < widest
