"""What the coordinator itself does for a differentially private training run.

Under user-level DP the coordinator adds nothing: every unit adds its own noise (DP-SGD) and
the coordinator averages the units' models with equal weights. Under client-level DP (central
DP, a trusted coordinator) it does three things, here:

- **samples units** independently with probability ``q`` each round (Poisson sampling; the
  accountant's amplification bound assumes exactly this, and needs no minimum number of units);
- **clips** each received update ``u_i = w_i - w`` to L2 norm ``C`` (skipped under secure
  aggregation, where the units clip before masking);
- **adds Gaussian noise** ``N(0, (z C)^2)`` to the *sum* of the clipped updates and divides by the
  expected number of units per round, ``q N`` (a fixed public denominator: McMahan et al. 2018).

Adding or removing one unit changes the sum by at most ``C``, so each round is a Poisson
sampled Gaussian mechanism with noise multiplier ``z`` whatever the number of replies: a unit
that fails mid-round simply contributes nothing, and the noise still matches the sensitivity.

Written here instead of using Flower's ``DifferentialPrivacyServerSideFixedClipping`` because
that wrapper divides its noise by the configured number of sampled units but averages over the
units that replied (a round where a unit fails is under-noised), and samples a fixed number of
units without replacement, which its accountant does not cover with amplification.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def sample_units(node_ids: Sequence[int], rate: float, rng: np.random.Generator | None = None) -> list[int]:
    """Each node independently with probability ``rate`` (all of them when ``rate`` is 1)."""
    if rate >= 1:
        return list(node_ids)
    rng = rng or np.random.default_rng()
    return [nid for nid in node_ids if rng.random() < rate]


def clip_to_norm(update: np.ndarray, norm: float) -> np.ndarray:
    """``update * min(1, norm / ||update||_2)``."""
    length = float(np.linalg.norm(update))
    return update if length <= norm else update * (norm / length)


def noisy_mean_update(clipped_sum: np.ndarray, noise_multiplier: float, clipping_norm: float,
                      expected_units: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """``(sum + N(0, (z C)^2)) / expected_units``: the private mean update of a round."""
    if expected_units <= 0:
        raise ValueError("the expected number of units per round must be positive")
    rng = rng or np.random.default_rng()
    noise = rng.normal(0.0, noise_multiplier * clipping_norm, clipped_sum.shape)
    return (clipped_sum + noise) / expected_units
