"""Federated k-means on synthetic units with planted archetypes agrees with centralised k-means."""

from __future__ import annotations

import datetime as dt

import pytest

from fedseg.config import SegmentationPlan
from simulations.runner import SimulationConfig
from simulations.segment_runner import run_segment_job


def segment(tmp_path, epsilon, seed=0, previous_days=None):  # noqa: ANN001
    data = SimulationConfig.from_settings(dataset="synthetic", synthetic_users=20_000, units=5, seed=seed, out=tmp_path)
    plan = SegmentationPlan(cutoff=dt.date(2000, 1, 1), k=5, epsilon=epsilon)
    return run_segment_job(data, plan, default_previous_days=previous_days)


# seed 2: with 4 starts from the grid alone, Lloyd ended in a poorer basin (ARI 0.47, inertia
# 1.0175 x centralised); the k-means++ seedings among the 16 starts find the centralised one.
@pytest.mark.parametrize("seed", [0, 2])
def test_without_noise_federated_equals_centralised_kmeans(tmp_path, seed):
    report = segment(tmp_path, None, seed, previous_days=91)   # as fedseg segment: with transitions
    comparison = report["centralised_comparison"]
    assert comparison["adjusted_rand_index"] >= 0.95, comparison
    assert comparison["inertia_ratio"] <= 1.01
    assert report["figures"] == ["segments.png", "transitions.png"]   # sizes with churn rates, the heatmap
    from tests.support.pictures import assert_picture

    for name in report["figures"]:
        assert_picture(tmp_path / name)


# seed 3: before noisy cells under two noise deviations were read as empty, the histogram's
# noise haze pulled the initialisation into a poor basin (ARI 0.49)
@pytest.mark.parametrize("seed", [0, 3])
def test_with_dp_at_the_documented_epsilon_agreement_stays_high(tmp_path, seed):
    report = segment(tmp_path, 8.0, seed)
    assert report["privacy"]["epsilon"] == pytest.approx(8.0, rel=1e-6)
    comparison = report["centralised_comparison"]
    assert comparison["adjusted_rand_index"] >= 0.85, comparison
