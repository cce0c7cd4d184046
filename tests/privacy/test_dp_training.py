"""User- and client-level DP in federated training: accounting checked independently, real runs."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from privacy.accounting import Release, calibrate, default_delta, epsilon, group_epsilons, sampled_gaussian_epsilon
from privacy.training_dp import SCALER_SENSITIVITY, TrainingPrivacy


def opacus_rdp_epsilon(parts: list[tuple[float, float, int]], delta: float) -> float:
    """Opacus' own RDP analysis (an independent implementation) of composed (z, q, steps) parts."""
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [128, 256, 512]
    rdp = sum(compute_rdp(q=q, noise_multiplier=z, steps=steps, orders=orders) for z, q, steps in parts)
    return float(get_privacy_spent(orders=orders, rdp=rdp, delta=delta)[0])


@pytest.mark.parametrize(("z", "q", "steps", "delta"), [(1.1, 0.01, 1000, 1e-5), (0.8, 0.05, 300, 1e-6),
                                                        (2.0, 0.2, 50, 1e-4)])
def test_rdp_epsilon_matches_opacus_and_pld_is_tighter(z, q, steps, delta):
    ours = sampled_gaussian_epsilon(z, q, steps, delta)
    # two independent RDP implementations; they differ only in the set of RDP orders they scan
    assert ours == pytest.approx(opacus_rdp_epsilon([(z, q, steps)], delta), rel=1e-2)
    assert sampled_gaussian_epsilon(z, q, steps, delta, accountant="pld") <= ours


def test_checked_figures_from_the_notes():
    assert sampled_gaussian_epsilon(1.1, 0.01, 1000, 1e-5) == pytest.approx(1.7118, abs=1e-4)
    assert sampled_gaussian_epsilon(1.1, 0.01, 1000, 1e-5, accountant="pld") == pytest.approx(1.5154, abs=1e-3)
    z = calibrate(lambda v: [Release(noise_multiplier=v, sample_rate=0.01, count=1000)], 1.7118, 1e-5)
    assert z == pytest.approx(1.1, rel=1e-3)


def test_heterogeneous_releases_compose_as_opacus_computes_them():
    """The scaler query (a Gaussian, q = 1) composed with DP-SGD: one RDP sum over orders."""
    releases = [Release(noise_multiplier=20.0, group="train"), Release(noise_multiplier=1.0, sample_rate=0.02,
                                                                     count=500, group="train")]
    assert epsilon(releases, 1e-6) == pytest.approx(opacus_rdp_epsilon([(20.0, 1.0, 1), (1.0, 0.02, 500)], 1e-6),
                                                    rel=1e-2)


def test_the_printed_epsilon_is_the_larger_of_the_training_and_test_users():
    train = [Release(noise_multiplier=1.0, sample_rate=0.02, count=500, group="train")]
    test = [Release(noise_multiplier=0.5, count=3, group="test")]
    groups = group_epsilons(train + test, 1e-6)
    assert groups["train"] == pytest.approx(opacus_rdp_epsilon([(1.0, 0.02, 500)], 1e-6), rel=1e-2)
    assert groups["test"] == pytest.approx(opacus_rdp_epsilon([(0.5, 1.0, 3)], 1e-6), rel=1e-2)
    assert epsilon(train + test, 1e-6) == max(groups.values()) == groups["test"]


def test_calibrated_user_plan_meets_target_and_accumulates_over_rounds():
    plan = TrainingPrivacy.plan("user", rounds=10, delta=1e-5, target_epsilon=4.0, sample_rate=0.02, local_epochs=1)
    assert plan.steps_per_round == 50
    spent = [plan.epsilon_after(r) for r in range(11)]
    assert all(a < b for a, b in zip(spent, spent[1:]))
    assert spent[-1] == pytest.approx(4.0, rel=0.01) and spent[-1] <= 4.0 + 1e-9
    groups = group_epsilons(plan.releases(10), 1e-5)
    assert groups["train"] <= 4.0 + 1e-9 and groups["test"] <= 4.0 + 1e-9
    # the training users' figure, recomputed by Opacus: scaler Gaussian + 500 DP-SGD steps
    assert groups["train"] == pytest.approx(opacus_rdp_epsilon(
        [(plan.scaler_sigma / SCALER_SENSITIVITY, 1.0, 1), (plan.noise_multiplier, 0.02, 500)], 1e-5), rel=1e-2)
    # 5 rounds of 50 steps are one accountant over 250 steps
    five = epsilon([Release(noise_multiplier=plan.scaler_sigma / SCALER_SENSITIVITY, group="train"),
                    Release(noise_multiplier=plan.noise_multiplier, sample_rate=0.02, count=250, group="train")], 1e-5)
    assert group_epsilons(plan.releases(5), 1e-5)["train"] == pytest.approx(five)


def test_client_level_releases_are_poisson_sampled_gaussians_of_whole_units():
    plan = TrainingPrivacy.plan("client", rounds=100, delta=1e-5, noise_multiplier=1.0)
    assert not plan.sends_scaler_query and not plan.evaluates_after(100) and not plan.evaluates_after(0)
    assert plan.epsilon_after(100) == pytest.approx(opacus_rdp_epsilon([(1.0, 1.0, 100)], 1e-5), rel=1e-2)
    assert plan.epsilon_after(100) > 40     # a handful of units, all sampled: far from useful
    sampled = TrainingPrivacy.plan("client", rounds=200, delta=1e-5, noise_multiplier=1.0, unit_sample_rate=0.2)
    assert 15 < sampled.epsilon_after(200) < 30   # notes: "about 22" for 20 of 100 units per round


def test_default_delta_is_at_most_one_tenth_of_one_over_n():
    for n in (5, 10, 23570, 100_000, 1_000_000):
        d = default_delta(n)
        assert d <= 1 / (10 * n) and d > 1 / (100 * n)
    assert default_delta(23570) == 1e-6 and default_delta(100_000) == 1e-6 and default_delta(1_000_000) == 1e-7


def test_user_level_run_on_flower_spends_what_it_states(cdnow_dp_units, tmp_path):
    from fedseg.config import TrainingPlan
    from tests.support.flower import run_flower

    plan = TrainingPlan(num_rounds=3, cutoff=dt.date(1997, 9, 30), horizon_days=273, output_dir=tmp_path,
                        min_available_units=3, min_fit_units=3, privacy="user", target_epsilon=4.0,
                        sample_rate=0.05, local_epochs=1, population=6000)
    results, grid = run_flower(plan, cdnow_dp_units)
    privacy = results[0].privacy
    assert privacy["mode"] == "user" and privacy["epsilon"] <= 4.0 + 1e-9
    assert privacy["steps"] == 3 * privacy["steps_per_round"] == 60
    assert privacy["delta"] == 1e-5 == default_delta(6000)
    assert privacy["epsilon"] == max(privacy["epsilon_training_users"], privacy["epsilon_test_users"])
    # every unit's own accountant agreed with the coordinator's figure before anything was released
    assert {round(u["epsilon"], 9) for u in privacy["units_accepted"].values()} == {round(privacy["epsilon"], 9)}
    # DP-SGD alone, recomputed by Opacus' own accountant, stays below the stated training-user epsilon
    assert opacus_rdp_epsilon([(privacy["noise_multiplier"], 0.05, 60)], privacy["delta"]) < \
        privacy["epsilon_training_users"]
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
    from tests.support.flower import small_cdnow, write_units

    return write_units(small_cdnow(6000), 3, tmp_path_factory.mktemp("dpunits"))


@pytest.mark.parametrize("model_name", ["mlp"])  # user-level DP trains the MLP (nn.GRU is not Opacus-compatible)
def test_dpsgd_steps_over_empty_poisson_batches_on_a_small_unit(model_name):
    """A unit of 60 users at q = 0.02 draws an empty batch on about 30% of steps; those steps
    are noise-only updates (as accounted), not errors (found in a deployment run)."""
    import torch

    from clients.dataset import feature_moments, prepare_unit
    from fedseg.scaling import global_scaler
    from clients.training import train_local_dpsgd
    from fedseg.config import FeatureConfig
    from fedseg.models import build_model, uses_sequences
    from fedseg.datasets import load_cdnow

    events = load_cdnow()
    keep = set(events["user_id"].drop_duplicates().sample(60, random_state=3))
    data = prepare_unit(events[events["user_id"].isin(keep)].reset_index(drop=True),
                        FeatureConfig(cutoff=dt.date(1997, 9, 30)), with_sequences=uses_sequences(model_name))
    data.test_mask[:] = False
    mean, std = global_scaler([feature_moments(data.static)])
    model = build_model(model_name, seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    _, taken = train_local_dpsgd(model, data, mean, std, noise_multiplier=1.0, max_grad_norm=1.0,
                                 sample_rate=0.02, steps=60, learning_rate=0.01)
    assert taken == 60
    after = list(model.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a.detach(), b) for a, b in zip(after, before))


def test_a_too_small_unit_says_so_without_stating_its_size():
    """The reason of a unit's failure reaches the coordinator: it names no user count."""
    from clients.dataset import feature_moments, prepare_unit
    from fedseg.scaling import global_scaler
    from clients.training import UnitCannotTrain, train_local_dpsgd
    from fedseg.config import FeatureConfig
    from fedseg.models import build_model
    from fedseg.datasets import load_cdnow

    events = load_cdnow()
    keep = set(events["user_id"].drop_duplicates().sample(23, random_state=1))
    data = prepare_unit(events[events["user_id"].isin(keep)].reset_index(drop=True), FeatureConfig(cutoff=dt.date(1997, 9, 30)))
    mean, std = global_scaler([feature_moments(data.static)])
    with pytest.raises(UnitCannotTrain) as info:
        train_local_dpsgd(build_model("mlp"), data, mean, std, 1.0, 1.0, sample_rate=0.02, steps=5, learning_rate=0.01)
    assert str(data.n_train) not in str(info.value) and "too few training users" in str(info.value)
