"""User- and client-level DP in federated training: accounting checked independently, real runs."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from privacy.accounting import epsilon, noise_multiplier_for
from privacy.training_dp import UserLevelPlan, client_level_epsilon, training_event, event_epsilon
from server.dp import default_delta


def opacus_rdp_epsilon(z: float, q: float, steps: int, delta: float) -> float:
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(z, q, steps)]
    return float(accountant.get_epsilon(delta=delta))


@pytest.mark.parametrize(("z", "q", "steps", "delta"), [(1.1, 0.01, 1000, 1e-5), (0.8, 0.05, 300, 1e-6),
                                                        (2.0, 0.2, 50, 1e-4)])
def test_rdp_epsilon_matches_opacus_and_pld_is_tighter(z, q, steps, delta):
    ours = epsilon(z, q, steps, delta)
    # two independent RDP implementations; they differ only in the set of RDP orders they scan
    assert ours == pytest.approx(opacus_rdp_epsilon(z, q, steps, delta), rel=5e-3)
    assert epsilon(z, q, steps, delta, accountant="pld") <= ours


def test_checked_figures_from_the_notes():
    assert epsilon(1.1, 0.01, 1000, 1e-5) == pytest.approx(1.7118, abs=1e-4)
    assert epsilon(1.1, 0.01, 1000, 1e-5, accountant="pld") == pytest.approx(1.5154, abs=1e-3)
    z = noise_multiplier_for(1.7118, 0.01, 1000, 1e-5)
    assert z == pytest.approx(1.1, rel=1e-3)


def test_calibrated_user_plan_meets_target_and_accumulates_over_rounds():
    plan = UserLevelPlan(target_epsilon=4.0, delta=1e-5, sample_rate=0.02, steps_per_round=50, rounds=10).calibrate()
    assert plan.epsilon_train_rdp <= 4.0 and plan.epsilon_train_rdp == pytest.approx(4.0, rel=0.01)
    assert plan.epsilon_eval_rdp <= 4.0
    assert plan.epsilon_train_pld <= plan.epsilon_train_rdp
    # the composed event costs more than DP-SGD alone, which Opacus confirms independently
    sgd_only = opacus_rdp_epsilon(plan.noise_multiplier, 0.02, 500, 1e-5)
    assert sgd_only < plan.epsilon_train_rdp
    # spend grows round by round and reaches the plan's figure at the last round
    spent = [plan.epsilon_after(r) for r in range(11)]
    assert all(a < b for a, b in zip(spent, spent[1:]))
    assert spent[-1] == pytest.approx(max(plan.epsilon_train_rdp, plan.epsilon_eval_rdp))
    # 5 rounds of 50 steps = one accountant over 250 steps
    five = event_epsilon(training_event(plan.noise_multiplier, 0.02, 250, plan.scaler_z), 1e-5)
    assert plan.train_epsilon(plan.noise_multiplier, steps=250) == pytest.approx(five)


def test_client_level_epsilon_shows_few_units_give_weak_guarantees():
    # all 5 units every round, z = 1, 100 rounds: a unit-level epsilon far above anything useful
    assert client_level_epsilon(1.0, 5, 5, 100, 1e-5) > 40
    # 100 units, 20 sampled, z = 1, 200 rounds: about 22 (notes: "about 22" with Poisson sampling)
    assert 15 < client_level_epsilon(1.0, 20, 100, 200, 1e-5) < 30


def test_default_delta_is_below_one_over_n():
    for n in (5, 10, 23570, 100_000, 1_000_000):
        d = default_delta(n)
        assert d < 1 / n and d >= 1 / (100 * n)
    assert default_delta(23570) == 1e-5 and default_delta(100_000) == 1e-6


def test_user_level_run_on_flower_spends_what_it_states(cdnow_dp_units, tmp_path):
    from server.training import TrainingPlan
    from tests.federated.conftest import run_flower

    plan = TrainingPlan(num_rounds=3, cutoff=dt.date(1997, 9, 30), horizon_days=273, output_dir=tmp_path,
                        min_available_units=3, min_fit_units=3, privacy="user", target_epsilon=4.0,
                        sample_rate=0.05, local_epochs=1)
    results, grid = run_flower(plan, cdnow_dp_units)
    privacy = results[0].privacy
    assert privacy["mode"] == "user" and privacy["epsilon"] <= 4.0 + 1e-9
    assert privacy["steps"] == 3 * privacy["steps_per_round"] == 60
    assert privacy["delta"] < 1 / 4000
    # DP-SGD alone, recomputed by Opacus' own accountant, stays below the stated training-user epsilon
    assert opacus_rdp_epsilon(privacy["noise_multiplier"], 0.05, 60, privacy["delta"]) < privacy["epsilon_training_users"]
    # units weigh equally and report noisy, coarse evaluation histograms
    train_replies = [r for r in grid.replies if r.metadata.message_type.startswith("train")]
    assert {r.content["metrics"]["num-examples"] for r in train_replies} == {1}
    eval_replies = [r for r in grid.replies if r.metadata.message_type.startswith("evaluate")]
    hist = np.asarray(eval_replies[0].content["metrics"]["hist-pos"])
    assert len(hist) == 20 and not np.allclose(hist, np.round(hist))
    epsilons = [r["epsilon"] for r in results[0].history]
    assert all(a < b for a, b in zip(epsilons, epsilons[1:]))
    assert results[0].history[-1]["auc"] > 0.65


@pytest.fixture(scope="module")
def cdnow_dp_units(tmp_path_factory):
    from tests.federated.conftest import small_cdnow, write_units

    return write_units(small_cdnow(6000), 3, tmp_path_factory.mktemp("dpunits"))


@pytest.mark.parametrize("model_name", ["mlp"])  # user-level DP trains the MLP (nn.GRU is not Opacus-compatible)
def test_dpsgd_steps_over_empty_poisson_batches_on_a_small_unit(model_name):
    """A unit of 60 users at q = 0.02 draws an empty batch on about 30% of steps; those steps
    are noise-only updates (as accounted), not errors (found in a deployment run)."""
    import torch

    from clients.dataset import feature_moments, global_scaler, prepare_unit
    from clients.training import train_local_dpsgd
    from fedseg.config import FeatureConfig
    from fedseg.models import build_model, uses_sequences
    from simulations.cdnow import load_cdnow

    events = load_cdnow()
    keep = set(events["user_id"].drop_duplicates().sample(60, random_state=3))
    data = prepare_unit(events[events["user_id"].isin(keep)].reset_index(drop=True),
                        FeatureConfig(cutoff=dt.date(1997, 9, 30)), with_sequences=uses_sequences(model_name))
    data.test_mask[:] = False
    mean, std = global_scaler([feature_moments(data.static)])
    model = build_model(model_name, seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    _, taken = train_local_dpsgd(model, data, mean, std, noise_multiplier=1.0, max_grad_norm=1.0,
                                 sample_rate=0.02, steps=60, learning_rate=0.01, seed=0)
    assert taken == 60
    after = list(model.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a.detach(), b) for a, b in zip(after, before))
