"""Scores into segments: the coordinator sends the global churn and CLV models, every unit scores its
users locally, and churn probability, CLV and value at risk reach its per-user segment file and its
CRM action list; --churn-threshold raises warnings; value tiers can follow predicted CLV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedseg.config import SegmentationPlan
from tests.support.flower import CUTOFF
from tests.server.test_segmentation import run_segmentation_on


def save_model(path: Path, target: str, events: pd.DataFrame, seed: int) -> Path:
    """A global model file as a training run writes it (weights from a seed; a real scaler)."""
    from clients.dataset import prepare_unit
    from fedseg.checkpoint import Checkpoint, save_checkpoint
    from fedseg.config import FeatureConfig
    from fedseg.models import build_model, model_version
    from fedseg.scaling import global_scaler
    from clients.dataset import feature_moments

    data = prepare_unit(events, FeatureConfig(cutoff=CUTOFF))
    mean, std = global_scaler([feature_moments(data.static)])
    model = build_model("mlp", seed=seed, target=target)  # type: ignore[arg-type]
    if target == "clv":  # a plausible spend level: log(1 + spend) around 3.5
        import torch

        with torch.no_grad():
            model.body.net[-1].bias[1] = 3.5
    arrays = {k: v.numpy() for k, v in model.state_dict().items()}
    save_checkpoint(path.parent, Checkpoint(1, arrays, mean.tolist(), std.tolist(), extra={
        "model": "mlp", "target": target, "model_version": model_version(model.state_dict()), "horizon_days": 273,
        "cutoff": CUTOFF.isoformat()}), name=path.name)
    return path


@pytest.fixture(scope="module")
def scored_segmentation(cdnow_units, tmp_path_factory):
    base = tmp_path_factory.mktemp("scored")
    events = pd.concat([pd.read_parquet(f) for f in cdnow_units], ignore_index=True)
    churn = save_model(base / "churn" / "model.npz", "churn", events, seed=1)
    clv = save_model(base / "clv" / "model.npz", "clv", events, seed=2)
    plan = SegmentationPlan(cutoff=CUTOFF, k=3, min_units=3, churn_model=churn, clv_model=clv, tier_by="clv",
                            churn_threshold=0.5)
    report, grid = run_segmentation_on(cdnow_units, plan, base / "out")
    return report, grid, base / "out", churn, clv


def test_units_score_with_the_models_and_keep_the_scores_locally(scored_segmentation, cdnow_units):
    from clients.scoring import score_users

    report, grid, out, churn, clv = scored_segmentation
    files = sorted(out.glob("segments_unit_*.parquet"))
    table = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    assert {"churn_probability", "clv", "value_at_risk", "clv_score"} <= set(table.columns)
    # the same scores as `fedseg score` with the same model files on one unit's events
    events = pd.read_parquet(cdnow_units[0])
    local = score_users(events, churn, cutoff=CUTOFF, clv_model_path=clv).set_index("user_id")
    mine = table.set_index("user_id").loc[local.index]
    assert np.allclose(mine["churn_probability"], local["churn_probability"], atol=1e-6)
    assert np.allclose(mine["clv"], local["clv"], rtol=1e-5)
    assert np.allclose(mine["value_at_risk"], mine["churn_probability"] * mine["clv"], rtol=1e-9)
    # warnings name the probability at the plan's threshold
    by_prob = table["warning"].fillna("").str.contains("churn probability")
    assert by_prob.sum() == int((table["churn_probability"] >= 0.5).sum()) > 0
    # only aggregates left the units: per-segment sums, no per-user value
    for reply in grid.replies:
        for value in reply.content["metrics"].values():
            assert not isinstance(value, list) or len(value) <= 1024
    clv_total = sum(s["clv_total"] for s in report["segments"])
    assert clv_total == pytest.approx(table["clv"].sum(), rel=1e-6)
    for s in report["segments"]:
        members = table[table["segment"] == s["segment"]]
        assert s["mean_churn_probability"] == pytest.approx(members["churn_probability"].mean(), rel=1e-6)


def test_value_tiers_follow_predicted_clv(scored_segmentation):
    from clients.segments import binned, quintile_score, value_tier
    from fedseg.segments import CLV_EDGES

    report, _, out, _, _ = scored_segmentation
    table = pd.concat([pd.read_parquet(f) for f in sorted(out.glob("segments_unit_*.parquet"))], ignore_index=True)
    assert report["value_tiers_by"] == "clv" and "clv" in report["rfm_thresholds"]
    thresholds = report["rfm_threshold_bins"]["clv"]
    pooled = [int(np.quantile(binned(table["clv"].to_numpy(), CLV_EDGES), q, method="inverted_cdf"))
              for q in (0.2, 0.4, 0.6, 0.8)]
    assert thresholds == pooled  # federated CLV quintiles equal the pooled ones
    score = quintile_score(binned(table["clv"].to_numpy(), CLV_EDGES), thresholds, higher_is_better=True)
    assert (table["clv_score"] == score).all()
    assert (table["value_tier"] == value_tier(table["r_score"], table["f_score"], score)).all()
    assert sum(report["value_tiers"].values()) == len(table)


def test_the_action_list_carries_the_scores_ranked_by_value_at_risk(scored_segmentation):
    _, _, out, _, _ = scored_segmentation
    for path in sorted(out.glob("actions_unit_*.parquet")):
        actions = pd.read_parquet(path)
        again = pd.read_csv(path.with_suffix(".csv"), dtype={"user_id": str})
        assert list(again.columns) == list(actions.columns) and (again["user_id"] == actions["user_id"]).all()
        assert set(actions["ranked_by"]) == {"value_at_risk"}
        assert (np.diff(actions["value_at_risk"].to_numpy()) <= 1e-12).all()
        assert actions[["churn_probability", "clv"]].notna().all().all()


def test_the_churn_threshold_decides_the_probability_warnings():
    from clients.segment_handlers import segment_users
    from clients.features import build_features
    from fedseg.config import FeatureConfig
    from fedseg.datasets import load_cdnow

    events = load_cdnow()
    features = build_features(events[events["user_id"] < "00400"], FeatureConfig(cutoff=CUTOFF))
    scores = pd.DataFrame({"user_id": features["user_id"], "churn_probability": np.linspace(0, 1, len(features))})
    cfg = {"thr-recency": [10, 20, 30, 40], "thr-frequency": [0, 1, 2, 3], "thr-monetary": [40, 50, 60, 70],
           "centroids": np.full(5, 0.5).tolist(), "k": 1, "inactivity-days": 10_000.0}
    warned = {t: segment_users(features, {**cfg, "churn-threshold": t}, scores)["warning"].notna().sum()
              for t in (0.3, 0.7, 0.9)}
    n = len(features)
    assert warned[0.3] > warned[0.7] > warned[0.9] > 0
    assert warned[0.7] == pytest.approx(0.3 * n, abs=2)
    # without scores the threshold has nothing to act on: only inactivity warns
    assert segment_users(features, {**cfg, "churn-threshold": 0.3})["warning"].notna().sum() == 0


def test_a_model_given_for_the_wrong_target_is_one_clear_error(scored_segmentation):
    from fedseg.errors import FedsegError
    from server.segmentation import model_records

    _, _, _, churn, clv = scored_segmentation
    with pytest.raises(FedsegError, match="is a clv model; give it as --clv-model"):
        model_records(SegmentationPlan(cutoff=CUTOFF, churn_model=clv))
    with pytest.raises(FedsegError, match="no such file"):
        model_records(SegmentationPlan(cutoff=CUTOFF, churn_model=churn.parent / "missing.npz"))
    with pytest.raises(ValueError, match="tier-by clv needs CLV scores"):
        SegmentationPlan(cutoff=CUTOFF, tier_by="clv", churn_model=churn)


def test_score_sums_and_clv_histogram_are_in_the_units_sensitivity():
    """With scores, the final step's L2 sensitivity grows by the two per-segment sums and the RFM
    step's by the CLV histogram; the calibrated plan still meets epsilon by Opacus' analysis."""
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    from fedseg.segments import step_sensitivities
    from server.segmentation import noise_plan, planned_releases

    assert step_sensitivities("rfm", {"tier-by": "clv"}) == [("sigma", 4.0)]
    assert step_sensitivities("final", {"score-sums": 1})[0][1] == step_sensitivities("final", {})[0][1] + 2
    plan = SegmentationPlan(cutoff=CUTOFF, epsilon=2.0, unit_scores=True, tier_by="clv", population=20_000)
    noise = noise_plan(plan)
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [128, 256, 512]
    rdp = sum(compute_rdp(q=1.0, noise_multiplier=r.noise_multiplier, steps=r.count, orders=orders)
              for r in planned_releases(plan, noise))
    assert get_privacy_spent(orders=orders, rdp=rdp, delta=noise.delta)[0] == pytest.approx(2.0, rel=1e-2)
    final = [r for r in planned_releases(plan, noise) if r.noise_multiplier == pytest.approx(
        noise.sigma_final / np.sqrt(step_sensitivities("final", {"score-sums": 1})[0][1]))]
    assert final, "the units' final release uses the sensitivity with score sums"
