"""The one-run canary audit: detects a non-private run, stays below the claim of a DP run,
catches a run whose noise is far below its claim."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import torch

from clients.dataset import UnitData, feature_moments, prepare_unit
from fedseg.scaling import global_scaler
from clients.training import TrainParams, train_local, train_local_dpsgd
from fedseg.config import FeatureConfig
from fedseg.models import build_model
from privacy.empirical_audit import epsilon_lower_bound, run_canary_audit
from privacy.accounting import Release, calibrate

Q, STEPS, DELTA = 0.05, 600, 1e-5


def test_lower_bound_function_matches_the_checked_figures():
    # 200 guesses, all right: the ceiling of a 200-guess audit at 95% (notes: about 4.2)
    assert epsilon_lower_bound(200, 200) == pytest.approx(np.log(0.05 ** (1 / 200) / (1 - 0.05 ** (1 / 200))), rel=1e-6)
    assert 4.1 < epsilon_lower_bound(200, 200) < 4.3
    assert epsilon_lower_bound(104, 200) == 0.0          # coin flips
    assert epsilon_lower_bound(150, 200) < epsilon_lower_bound(170, 200) < epsilon_lower_bound(190, 200)


@pytest.fixture(scope="module")
def base():
    from fedseg.datasets import load_cdnow

    events = load_cdnow()
    keep = set(events["user_id"].drop_duplicates().sample(3000, random_state=0))
    data = prepare_unit(events[events["user_id"].isin(keep)].reset_index(drop=True),
                        FeatureConfig(cutoff=dt.date(1997, 9, 30)))
    data.test_mask[:] = False
    mean, std = global_scaler([feature_moments(data.static)])
    return data, mean, std


def trainer(base, noise_multiplier: float | None):  # noqa: ANN001
    data0, mean, std = base

    def train(canaries):  # noqa: ANN001
        inside = canaries.inputs[canaries.included]
        data = UnitData(user_ids=np.r_[data0.user_ids, [f"canary{i}" for i in range(len(inside))]],
                        static=np.r_[data0.static, inside * std + mean],
                        labels=np.r_[data0.labels, canaries.labels[canaries.included]].astype(np.float32),
                        test_mask=np.zeros(len(data0.static) + len(inside), dtype=bool))

        def logits(model):  # noqa: ANN001
            model.eval()
            return lambda x: model(torch.as_tensor(x, dtype=torch.float32)).detach().numpy()

        before = logits(build_model("mlp", seed=1))
        model = build_model("mlp", seed=1)
        if noise_multiplier is None:
            train_local(model, data, mean, std, TrainParams(epochs=30, learning_rate=0.005, batch_size=64))
        else:
            # a research run: the sample and the noise come from fixed seeds, so the audit is repeatable
            train_local_dpsgd(model, data, mean, std, noise_multiplier, 5.0, Q, STEPS, 0.005,
                              sample_generator=torch.Generator().manual_seed(0),
                              noise_generator=torch.Generator().manual_seed(1))
        return before, logits(model)

    return train


def calibrated_z(epsilon: float) -> float:
    # DP-SGD alone (the scaler release is absent here)
    return calibrate(lambda z: [Release(noise_multiplier=z, sample_rate=Q, count=STEPS)], epsilon, DELTA)


def test_non_private_training_is_caught_leaking(base):
    result = run_canary_audit(trainer(base, None), m=1000, d=12, seed=3)
    assert result.correct > 140 and result.epsilon_lower_bound > 0.5


def test_dp_run_stays_below_its_claim(base):
    claimed = 2.0
    result = run_canary_audit(trainer(base, calibrated_z(claimed)), m=1000, d=12, seed=3)
    assert result.epsilon_lower_bound <= claimed


def test_a_noise_bug_is_caught(base):
    # a run that claims epsilon 1 but whose noise was switched off (clipping still on). A run with
    # a twentieth of the noise gave a bound of only 0.41 here: one run catches gross bugs only.
    claimed = 1.0
    result = run_canary_audit(trainer(base, 0.0), m=1000, d=12, seed=3)
    assert result.epsilon_lower_bound > claimed
