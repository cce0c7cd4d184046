"""The releases of a federated KPI report: one Gaussian mechanism per noisy table.

The sensitivities are the shared definitions of :func:`fedseg.kpis.table_sensitivities`, which a
unit evaluates on the settings it is asked to answer (so a coordinator cannot understate them);
the unit builds its releases from the noise it is asked to add and charges them before answering.
The coordinator builds the same list to calibrate the noise and state the report's epsilon.
"""

from __future__ import annotations

import math
from typing import Any

from fedseg.kpis import TABLES, table_sensitivities
from privacy.accounting import Release, split_gaussian_budget

TASK = "kpis"


def kpi_releases(config: dict[str, Any]) -> list[Release]:
    """The releases of a KPI answer, from the ``sigma-<table>`` keys of its config.

    Empty when no table is noised (an exact, non-private answer); a table left without noise while
    others have some is a release of noise multiplier 0 (unbounded epsilon), which a unit refuses."""
    sigmas = {name: float(config.get(f"sigma-{name}", 0.0)) for name in TABLES}
    if all(s <= 0 for s in sigmas.values()):
        return []
    sens_sq = table_sensitivities(config)
    return [Release(noise_multiplier=max(sigmas[name], 0.0) / math.sqrt(sens_sq[name]), task=TASK)
            for name in TABLES]


def kpi_sigmas(epsilon: float, delta: float, shares: dict[str, float], config: dict[str, Any]) -> dict[str, float]:
    """Noise standard deviation per table so that the whole report costs ``epsilon`` at ``delta``."""
    sens_sq = table_sensitivities(config)
    return split_gaussian_budget(epsilon, delta, {name: (shares[name], sens_sq[name]) for name in TABLES})
