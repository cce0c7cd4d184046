"""The release of a federated effect measurement: one Laplace mechanism on each unit's table of
outcome sums per segment x action x arm (:mod:`fedseg.effects`).

One end user is in one unit, one cell and one arm, and changes the five statistics of that cell
and arm (``n``, conversions, revenue, revenue squared, retained; revenue clipped and in units of
its clip) by at most 1 each. The unit adds Laplace noise of scale ``b_s`` to every entry of
statistic ``s``; one user's change then moves the privacy loss by at most ``sum_s 1 / b_s``, so one
answer is a Laplace release of L1 sensitivity ``sum_s 1 / b_s`` and unit scale, noise multiplier
``z = 1 / sum_s b_s^-1`` (:func:`effects_release`; the unit computes it from the noise it is asked to
add, and charges it before answering). Alone, that release is ``(1 / z, 0)``-DP; the ledger composes
it with the unit's other releases by the RDP accountant (:mod:`privacy.accounting`).

Under secure aggregation (``EffectsPlan.secagg``) the coordinator sees only the sum of at least
``t`` units' tables, and each unit adds a ``1/t`` share of the noise instead
(:func:`clients.effects.laplace_shares`); the release it accepts and charges is the same.

Why Laplace and not Gaussian: this is one low-dimensional release per user (five numbers), where
pure-DP Laplace noise is much smaller than Gaussian noise at the same (epsilon, delta). At epsilon 1,
delta 1e-6 the Gaussian needs ``z = 4.53`` (noise std 4.53 per unit of L2 sensitivity), the Laplace
``z = 1.005`` (noise std ``sqrt(2) z = 1.42`` per unit of L1 sensitivity); with the weights below the
headline sum's noise std falls from 5.63 to 2.93 (0.27 of the variance).

The coordinator spends the budget where it matters (:func:`effects_scales`): the headline
outcome's sum gets the least noise, the counts more (the arm sizes are estimated from the cell
total and the playbook's holdout share, :func:`server.effects.arm_sizes`, where their noise matters
little), the other outcomes more: ``b_s = c w_s`` with the weights of :data:`NOISE_WEIGHTS` and ``c``
set so that ``z`` meets the target epsilon by the accountant. The weights minimise a weighted sum of
the noise variances ``sum_s a_s 2 b_s^2`` under ``sum_s 1 / b_s = 1 / z``: ``b_s`` proportional to
``a_s^(-1/3)``. They are the Gaussian weights of the earlier mechanism (``sigma_s`` proportional to
``a_s^(-1/4)``) raised to the power 4/3, so the statistics keep the same relative importance.
"""

from __future__ import annotations

from fedseg.effects import STATS
from privacy.accounting import Release, laplace_noise_multiplier

#: Relative importance of each statistic (``n``, conversions, revenue, revenue_sq, retained) by
#: headline outcome, as Gaussian noise weights (1 on the headline sum, 1.5 on revenue squared for
#: revenue, 3 on the count, 2.5-3 elsewhere); the Laplace scales are proportional to their 4/3 power.
NOISE_WEIGHTS: dict[str, tuple[float, ...]] = {
    "conversion": (3.0, 1.0, 2.5, 3.0, 2.5),
    "revenue": (3.0, 2.5, 1.0, 1.5, 2.5),
    "retention": (3.0, 2.5, 2.5, 3.0, 1.0),
}


def effects_release(scales: list[float]) -> Release:
    """The release a unit makes when it adds Laplace noise of scale ``scales[s]`` to statistic ``s``."""
    if len(scales) != len(STATS) or min(scales) <= 0:
        raise ValueError(f"an effects release needs {len(STATS)} positive noise scales, one per statistic")
    return Release(noise_multiplier=1.0 / sum(1.0 / b for b in scales), task="effects", mechanism="laplace")


def effects_scales(epsilon: float, delta: float, outcome: str = "conversion") -> list[float]:
    """Per-statistic Laplace scales that make one answer cost ``epsilon`` at ``delta`` (RDP accountant)."""
    weights = [w ** (4.0 / 3.0) for w in NOISE_WEIGHTS[outcome]]
    scale = laplace_noise_multiplier(epsilon, delta) * sum(1.0 / w for w in weights)
    return [scale * w for w in weights]
