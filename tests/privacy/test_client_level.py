"""Client-level (central) DP accounts for everything it sends (issue 13, point 2).

Before: the units' exact evaluation replies went out every round (round 0 included) and the
start-up standardisation query was noised for one user but charged nothing; and Flower's
``DifferentialPrivacyServerSideFixedClipping`` divides its noise by the configured number of
units while averaging over those that replied, so a round where a unit failed was under-noised.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from server.dp import clip_to_norm, noisy_mean_update, sample_units


def test_the_noise_matches_the_sensitivity_whatever_number_of_units_replied():
    """Adding or removing one unit moves the clipped sum by at most C; the noise on the sum is
    z C and the denominator is the expected number of units, whoever replied."""
    z, C, expected = 1.3, 0.5, 5.0
    rng = np.random.default_rng(0)
    for replied in (5, 3, 1):
        updates = [clip_to_norm(rng.normal(0, 10, 40), C) for _ in range(replied)]
        total = np.sum(updates, axis=0)
        draws = np.stack([noisy_mean_update(total, z, C, expected, rng) for _ in range(4000)])
        noise_std = (draws - total / expected).std()
        # sensitivity of the released mean: C / expected; its noise: z C / expected
        assert noise_std / (C / expected) == pytest.approx(z, rel=0.03)
    assert np.linalg.norm(clip_to_norm(np.full(40, 3.0), C)) == pytest.approx(C)


def test_units_are_poisson_sampled():
    counts = [len(sample_units(list(range(100)), 0.2, np.random.default_rng(s))) for s in range(300)]
    assert np.mean(counts) == pytest.approx(20, rel=0.05) and len(set(counts)) > 5   # not a fixed number
    assert sample_units([3, 1, 2], 1.0) == [3, 1, 2]


def test_client_level_run_releases_only_what_it_accounts(tmp_path, cdnow_units):
    from privacy.accounting import default_delta
    from fedseg.config import TrainingPlan
    from tests.support.flower import run_flower
    from tests.privacy.test_dp_training import opacus_rdp_epsilon

    plan = TrainingPlan(num_rounds=2, cutoff=dt.date(1997, 9, 30), horizon_days=273, output_dir=tmp_path,
                        min_available_units=3, min_fit_units=3, privacy="client", noise_multiplier=1.0,
                        population=4000)
    results, grid = run_flower(plan, cdnow_units)
    sent_types = {m.metadata.message_type for m in grid.sent}
    assert sent_types == {"query.privacy", "train"}     # no start-up statistics, no evaluation replies
    result = results[0]
    assert all("auc" not in r for r in result.history)
    assert result.privacy["delta"] == default_delta(4000)
    assert result.privacy["epsilon"] == pytest.approx(opacus_rdp_epsilon([(1.0, 1.0, 2)], default_delta(4000)), rel=1e-2)
    assert "NOT the coordinator" in result.privacy["guarantee_holds_against"]
    assert result.history[-1]["epsilon"] == pytest.approx(result.privacy["epsilon"])
