"""The release of a federated effect measurement: one Gaussian mechanism on each unit's table of
outcome sums per segment x action x arm (:mod:`fedseg.effects`).

One end user is in one unit, one cell and one arm, and changes the five statistics of that cell
and arm (``n``, conversions, revenue, revenue squared, retained; revenue clipped and in units of
its clip) by at most 1 each. The unit adds Gaussian noise ``sigma_s`` to every entry of statistic
``s``; rescaling entry ``s`` by ``1 / sigma_s`` makes the noise 1 and one user's change a vector of
L2 norm ``sqrt(sum_s sigma_s^-2)``, so one answer is one Gaussian release of noise multiplier
``z = 1 / sqrt(sum_s sigma_s^-2)`` (:func:`effects_release`; the unit computes it from the noise
it is asked to add, and charges it before answering).

The coordinator spends the budget where it matters (:func:`effects_sigmas`): the headline
outcome's sum gets the least noise, the counts more (the arm sizes are estimated from the cell
total and the playbook's holdout share, :func:`server.effects.arm_sizes`, where their noise matters
little), the other outcomes more: ``sigma_s = c w_s`` with the weights of :data:`NOISE_WEIGHTS` and
``c`` set so that ``z`` meets the target epsilon by the accountant (:mod:`privacy.accounting`). With
equal weights this is the plain ``sqrt(5)``-sensitivity mechanism; the weights cut the headline
sum's noise variance by a factor 3.2 (2.7 for revenue) at the same epsilon.
"""

from __future__ import annotations

import math

from fedseg.effects import STATS
from privacy.accounting import Release, gaussian_noise_multiplier

#: Relative noise of each statistic (``n``, conversions, revenue, revenue_sq, retained) by headline
#: outcome: 1 on the headline sum (1.5 on revenue squared for revenue), 3 on the count, 2.5-3 elsewhere.
NOISE_WEIGHTS: dict[str, tuple[float, ...]] = {
    "conversion": (3.0, 1.0, 2.5, 3.0, 2.5),
    "revenue": (3.0, 2.5, 1.0, 1.5, 2.5),
    "retention": (3.0, 2.5, 2.5, 3.0, 1.0),
}


def effects_release(sigmas: list[float]) -> Release:
    """The release a unit makes when it adds noise ``sigmas[s]`` to statistic ``s`` of its table."""
    if len(sigmas) != len(STATS) or min(sigmas) <= 0:
        raise ValueError(f"an effects release needs {len(STATS)} positive noise levels, one per statistic")
    return Release(noise_multiplier=1.0 / math.sqrt(sum(s ** -2 for s in sigmas)), task="effects")


def effects_sigmas(epsilon: float, delta: float, outcome: str = "conversion") -> list[float]:
    """Per-statistic noise that makes one answer cost ``epsilon`` at ``delta`` (RDP accountant)."""
    weights = NOISE_WEIGHTS[outcome]
    scale = gaussian_noise_multiplier(epsilon, delta) * math.sqrt(sum(w ** -2 for w in weights))
    return [scale * w for w in weights]
