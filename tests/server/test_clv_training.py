"""Federated CLV on Flower's simulation engine: the churn loop trains the hurdle model, units send
only value aggregates, user-level DP is accepted, charged and accounted like training."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from fedseg.config import TrainingPlan
from tests.support.flower import run_flower

CUTOFF = dt.date(1997, 9, 30)


@pytest.fixture(scope="module")
def clv_run(cdnow_units, tmp_path_factory):
    out = tmp_path_factory.mktemp("clv")
    plan = TrainingPlan(target="clv", num_rounds=3, min_available_units=3, min_fit_units=3, output_dir=out,
                        population=4000)
    results, grid = run_flower(plan, cdnow_units)
    return out, results[0], grid


def test_the_training_loop_learns_customer_value(clv_run, cdnow_units):
    out, result, grid = clv_run
    first, last = result.history[0], result.history[-1]
    assert first["normalized_gini"] < 0.2 < 0.65 < last["normalized_gini"]   # learns to rank spend
    assert last["top_decile_capture"] > 0.45 and 0.5 < last["bias"] < 2.0
    from clients.dataset import is_test_user
    from clients.features import build_features
    from fedseg.config import FeatureConfig

    test_users = sum(int(is_test_user(build_features(pd.read_parquet(f), FeatureConfig(cutoff=CUTOFF))["user_id"]).sum())
                     for f in cdnow_units)
    assert last["n_eval"] == test_users  # an exact count of the units' test users, merged
    # units sent only the allowed value aggregates; the arrays are the CLV model's
    from fedseg.models import expected_shapes
    from fedseg.protocol import ALLOWED_METRICS, EVALUATE

    for reply in grid.replies:
        assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
        if reply.metadata.message_type == EVALUATE:
            assert set(reply.content["metrics"].keys()) <= ALLOWED_METRICS[EVALUATE]
            assert "joint" in reply.content["metrics"]
        if "arrays" in reply.content:
            shapes = {k: tuple(v.shape) for k, v in reply.content["arrays"].items()}
            assert shapes == expected_shapes("mlp", "clv")


def test_the_federated_figures_equal_the_exact_pooled_ones(clv_run, cdnow_units):
    """Gini and top-decile capture from merged histograms agree with the exact pooled computation
    on the same test users to the stated bin error; MAE exactly."""
    from clients.dataset import prepare_unit
    from fedseg.config import FeatureConfig
    from fedseg.value_metrics import exact_clv_metrics
    from simulations.baseline import score_arrays

    _, result, _ = clv_run
    events = pd.concat([pd.read_parquet(f) for f in cdnow_units], ignore_index=True)
    data = prepare_unit(events, FeatureConfig(cutoff=CUTOFF, horizon_days=273))
    pred = score_arrays(data, "mlp", result.arrays, result.scaler_mean, result.scaler_std, target="clv")
    exact = exact_clv_metrics(data.spend[data.test_mask], pred)
    last = result.history[-1]
    assert last["mae"] == pytest.approx(exact["mae"], rel=1e-4)
    assert last["normalized_gini"] == pytest.approx(exact["normalized_gini"], abs=0.003)
    assert last["top_decile_capture"] == pytest.approx(exact["top_decile_capture"], abs=0.005)
    assert last["spearman"] == pytest.approx(exact["spearman"], abs=0.015)


def test_calibration_and_gain_pictures_from_the_merged_evaluation(clv_run, tmp_path):
    """``fedseg clv`` draws its pictures from the last federated evaluation's merged histograms."""
    from simulations.figures import bin_groups, model_charts
    from tests.support.pictures import assert_picture

    _, result, _ = clv_run
    paths = model_charts("clv", result.evaluation, tmp_path)
    assert [p.name for p in paths] == ["calibration.png", "gain.png"]
    for path in paths:
        assert_picture(path)
    # the tenths of the calibration curve hold about a tenth of the test users each
    counts = np.asarray(result.evaluation["pred-count"], dtype=float)
    tenths = np.bincount(bin_groups(counts), weights=counts, minlength=10) / counts.sum()
    assert np.all(np.abs(tenths - 0.1) < 0.05), tenths


def test_score_writes_clv_and_value_at_risk(clv_run, cdnow_units, tmp_path):
    from clients.scoring import ModelFileError, score_users

    out, result, _ = clv_run
    events = pd.read_parquet(cdnow_units[0])
    scores = score_users(events, clv_model_path=out / "model.npz", cutoff=CUTOFF)
    assert len(scores) == events["user_id"].nunique() and (scores["clv"] >= 0).all()
    assert (scores["clv_model_version"] == result.model_version).all() and (scores["clv_horizon_days"] == 273).all()
    assert "churn_probability" not in scores and "value_at_risk" not in scores
    with pytest.raises(ModelFileError, match="same target"):
        score_users(events, out / "model.npz", cutoff=CUTOFF, clv_model_path=out / "model.npz")


def test_clv_privacy_plan_is_accounted_as_opacus_computes_it():
    """A CLV run's releases: scaler + DP-SGD (training users), one evaluation of sensitivity sqrt(8)
    (test users); the calibrated plan meets the target, by Opacus' independent RDP analysis."""
    from privacy.training_dp import TrainingPrivacy, evaluation_release
    from tests.privacy.test_dp_training import opacus_rdp_epsilon

    plan = TrainingPlan(target="clv", num_rounds=10, privacy="user", target_epsilon=4.0, population=23_570)
    privacy = TrainingPrivacy.for_plan(plan)
    assert privacy.delta == 1e-6 and privacy.target == "clv"
    last = privacy.round_releases(10)[-1]
    assert last == evaluation_release(privacy.eval_sigma, target="clv")
    assert last.noise_multiplier == pytest.approx(privacy.eval_sigma / np.sqrt(8))
    assert opacus_rdp_epsilon([(last.noise_multiplier, 1.0, 1)], 1e-6) == pytest.approx(4.0, rel=2e-2)
    train = opacus_rdp_epsilon([(privacy.scaler_sigma / 5.0, 1.0, 1),
                                (privacy.noise_multiplier, privacy.sample_rate, privacy.steps_per_round * 10)], 1e-6)
    assert train == pytest.approx(4.0, rel=2e-2) and privacy.epsilon_after(10) <= 4.0 + 1e-9


@pytest.mark.slow
def test_user_level_dp_is_accepted_charged_and_accounted(cdnow_units, tmp_path):
    """The CLV run's releases go through the same acceptance and ledger as churn training; the
    epsilon the units charged equals Opacus' independent RDP analysis of those releases."""
    from privacy.ledger import BudgetLedger
    from privacy.training_dp import TrainingPrivacy
    from clients.client_app import make_client_app
    from tests.privacy.test_dp_training import opacus_rdp_epsilon

    ledger = tmp_path / "ledger.sqlite"
    plan = TrainingPlan(target="clv", num_rounds=2, min_available_units=3, min_fit_units=3,
                        output_dir=tmp_path / "run", population=4000, privacy="user", target_epsilon=4.0)
    results, grid = run_flower(plan, cdnow_units, client_app=make_client_app(cdnow_units, ledger_path=ledger,
                                                                            dataset_id="cdnow-sample"))
    result = results[0]
    privacy = TrainingPrivacy.for_plan(plan)
    assert privacy.target == "clv" and result.privacy["epsilon"] == pytest.approx(4.0, rel=1e-3)
    # test users: one evaluation release of sensitivity sqrt(8) (fedseg.value_metrics)
    assert result.privacy["epsilon_test_users"] == pytest.approx(
        opacus_rdp_epsilon([(privacy.eval_sigma / np.sqrt(8), 1.0, 1)], privacy.delta), rel=2e-2)
    assert result.privacy["epsilon_training_users"] == pytest.approx(opacus_rdp_epsilon(
        [(privacy.scaler_sigma / 5.0, 1.0, 1), (privacy.noise_multiplier, privacy.sample_rate,
                                               privacy.steps_per_round * 2)], privacy.delta), rel=2e-2)
    book = BudgetLedger(ledger).summary()
    assert len(book) == 3
    for entry in book:
        assert entry.spent_epsilon == pytest.approx(4.0, rel=1e-3)
        assert set(entry.releases_by_task) == {"training"}
    last = result.history[-1]
    assert last["n_eval"] == pytest.approx(800, abs=150)  # a noisy count of the test users
    assert all(not r.has_error() for r in grid.replies)
