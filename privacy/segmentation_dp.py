"""The releases of a federated segmentation: one Gaussian mechanism per noisy table of each step.

The sensitivities are the shared definitions of :func:`fedseg.segments.step_sensitivities`; a
unit builds its releases from the noise it is asked to add (and charges them before answering),
the coordinator builds the same list to calibrate and state the run's epsilon.
"""

from __future__ import annotations

import math
from typing import Any

from fedseg.segments import step_sensitivities
from privacy.accounting import Release


def step_releases(step: str, config: dict[str, Any]) -> list[Release]:
    """The releases a segmentation step makes, from the noise in its config.

    Empty when the step adds no noise at all (an exact, non-private answer); a part left without
    noise while others have some is a release of noise multiplier 0 (unbounded epsilon), which a
    unit's account refuses."""
    sigmas = [(float(config.get(key, 0.0)), sens_sq) for key, sens_sq in step_sensitivities(step, config)]
    if all(sigma <= 0 for sigma, _ in sigmas):
        return []
    return [Release(noise_multiplier=max(sigma, 0.0) / math.sqrt(sens_sq), task="segmentation")
            for sigma, sens_sq in sigmas]
