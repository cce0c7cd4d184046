"""RFM thresholds, segment vocabulary, tiers, churn warnings and the playbook's contact policy."""

from __future__ import annotations

import datetime as dt
import itertools

import numpy as np
import pandas as pd
import pytest

from clients.features import build_features
from clients.playbook import PlaybookConfig, PlaybookRule, churn_warnings, plan_actions
from clients.segments import add_noise, binned, rfm_histograms, rfm_segment, value_tier
from fedseg.config import FeatureConfig
from fedseg.segments import RFM_EDGES, RFM_SEGMENT_NAMES, quantile_bins
from fedseg.config import SegmentationPlan
from server.segmentation import noise_plan
from fedseg.datasets import load_cdnow

COLUMNS = {"recency": "recency_days", "frequency": "frequency", "monetary": "monetary_total"}


@pytest.fixture(scope="module")
def cdnow_features() -> pd.DataFrame:
    return build_features(load_cdnow(), FeatureConfig(cutoff=dt.date(1997, 9, 30)))


def unit_histograms(features: pd.DataFrame, n_units: int = 5) -> list[dict[str, np.ndarray]]:
    parts = pd.util.hash_pandas_object(features["user_id"], index=False).to_numpy() % n_units
    return [rfm_histograms(features[parts == k]) for k in range(n_units)]


def test_federated_thresholds_equal_pooled_quantiles_exactly(cdnow_features):
    hists = unit_histograms(cdnow_features)
    for name, edges in RFM_EDGES.items():
        federated = quantile_bins(sum(h[name] for h in hists))
        pooled_bins = binned(cdnow_features[COLUMNS[name]].to_numpy(), edges)
        pooled = [int(np.quantile(pooled_bins, q, method="inverted_cdf")) for q in (0.2, 0.4, 0.6, 0.8)]
        assert federated == pooled, name


def test_dp_thresholds_within_one_bin_at_documented_epsilon(cdnow_features):
    hists = unit_histograms(cdnow_features)
    sigma = noise_plan(SegmentationPlan(cutoff=dt.date(1997, 9, 30), epsilon=4.0)).sigma_rfm
    assert sigma > 0
    rng = np.random.default_rng(7)
    for name in RFM_EDGES:
        exact = quantile_bins(sum(h[name] for h in hists))
        for _ in range(10):
            noisy = quantile_bins(sum(add_noise(h[name], sigma, rng) for h in hists))
            assert max(abs(a - b) for a, b in zip(noisy, exact)) <= 1, name


def test_every_rfm_code_has_exactly_one_named_segment_and_tier():
    codes = np.array(list(itertools.product(range(1, 6), repeat=3)))
    names = rfm_segment(codes[:, 0], codes[:, 1], codes[:, 2])
    assert len(names) == 125 and set(names) == set(RFM_SEGMENT_NAMES)
    assert rfm_segment(np.array([5]), np.array([5]), np.array([5]))[0] == "Champions"
    assert rfm_segment(np.array([1]), np.array([1]), np.array([1]))[0] == "Lost"
    assert rfm_segment(np.array([5]), np.array([1]), np.array([1]))[0] == "New Customers"
    assert rfm_segment(np.array([1]), np.array([5]), np.array([5]))[0] == "Cannot Lose Them"
    tiers = value_tier(codes[:, 0], codes[:, 1], codes[:, 2])
    assert set(tiers) == {"basic", "active", "high-value", "VIP"}
    assert value_tier(np.array([1]), np.array([5]), np.array([5]))[0] == "VIP"


def test_segmentation_noise_spends_exactly_the_budget_by_an_independent_accountant():
    """Every step is a Gaussian release; Opacus' RDP analysis (independent of dp-accounting)
    of the planned releases gives the target epsilon."""
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    from server.segmentation import planned_releases

    plan = SegmentationPlan(cutoff=dt.date(2024, 1, 1), epsilon=3.0, previous_cutoff=dt.date(2023, 10, 1),
                            population=20_000)
    noise = noise_plan(plan)
    assert noise.epsilon == pytest.approx(3.0, rel=1e-4) and noise.delta == 1e-6
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [128, 256, 512]
    rdp = sum(compute_rdp(q=1.0, noise_multiplier=r.noise_multiplier, steps=r.count, orders=orders)
              for r in planned_releases(plan, noise))
    assert get_privacy_spent(orders=orders, rdp=rdp, delta=1e-6)[0] == pytest.approx(3.0, rel=1e-2)
    # the units compute the same releases from the noise they are asked to add
    from privacy.segmentation_dp import step_releases

    [sums, counts] = step_releases("lloyd", {"sigma-sums": noise.sigma_lloyd_sums, "restarts": 1,
                                                "sigma-counts": noise.sigma_lloyd_counts})
    assert sums.noise_multiplier == pytest.approx(noise.sigma_lloyd_sums / np.sqrt(5))
    assert counts.noise_multiplier == pytest.approx(noise.sigma_lloyd_counts)


def test_churn_warnings_name_their_reason():
    table = pd.DataFrame({"days_since_last_event": [3.0, 45.0, 10.0], "churn_probability": [0.9, 0.2, 0.1]})
    reasons = churn_warnings(table, inactivity_days=30, churn_threshold=0.7)
    assert reasons[0] == "churn probability 0.90 >= 0.70"
    assert reasons[1] == "no activity for 45 days (threshold 30)"
    assert reasons[2] is None


def test_playbook_priorities_caps_and_quiet_periods():
    table = pd.DataFrame({
        "user_id": ["a", "b", "c", "d"],
        "rfm_segment": ["At Risk", "Champions", "At Risk", "Lost"],
        "value_tier": ["VIP", "VIP", "basic", "basic"],
        "lifecycle_stage": ["decline", "growth", "decline", "decline"],
        "warning": [None, None, "no activity for 40 days (threshold 30)", None],
    })
    config = PlaybookConfig(rules=[
        PlaybookRule(action="win-back offer", priority=1, rfm_segments=["At Risk"]),
        PlaybookRule(action="VIP privilege", priority=2, value_tiers=["VIP"]),
    ], max_contacts=2, window_days=30, quiet_days=7)
    log = pd.DataFrame({"user_id": ["a", "b", "b"], "ts": ["2024-03-28", "2024-03-05", "2024-03-10"]})
    actions = plan_actions(table, config, today=dt.date(2024, 3, 31), contact_log=log).set_index("user_id")
    assert set(actions.index) == {"a", "b", "c"}                 # d matches no rule
    assert actions.loc["a", "action"] == "win-back offer"        # priority 1 beats VIP privilege
    assert actions.loc["a", "suppressed"] and "within the last 7 days" in actions.loc["a", "suppressed_reason"]
    assert actions.loc["b", "suppressed"] and "2 contacts already" in actions.loc["b", "suppressed_reason"]
    assert not actions.loc["c", "suppressed"]
