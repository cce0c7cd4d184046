"""Feature standardisation from aggregates: what the coordinator computes from the units' moments.

Shared by both sides: units send their share (count, sums, sums of squares of the transformed
features, :mod:`clients.dataset`), the coordinator merges them here, and every unit standardises
with the result. :data:`FEATURE_CAPS` are fixed in advance, never read from data: dividing by them
maps every user into [-1, 1]^d, which bounds one user's share of the sums under DP and gives the
public standardisation of client-level DP.
"""

from __future__ import annotations

import numpy as np

#: Fixed caps of the transformed features (not read from data): dividing by them maps every
#: user into [-1, 1]^d, which bounds one user's share of the scaler sums under DP.
FEATURE_CAPS = np.array([
    np.log1p(3650),   # recency_days (10 years)
    np.log1p(1000),   # frequency
    np.log1p(1e6),    # monetary_total
    np.log1p(1e6),    # monetary_mean
    np.log1p(3650),   # tenure_days
    np.log1p(7),      # active_days_7
    np.log1p(30),     # active_days_30
    np.log1p(90),     # active_days_90
    np.log1p(1e5),    # events_total
    np.log1p(3650),   # ipi_mean
    np.log1p(3650),   # ipi_std
    1.0,              # trend
])


def scaler_from_bounded(moments: list[tuple[float, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std in feature units from (noisy) moments of the capped features."""
    n = max(sum(m[0] for m in moments), 1.0)
    mean_u = np.sum([m[1] for m in moments], axis=0) / n
    var_u = np.maximum(np.sum([m[2] for m in moments], axis=0) / n - mean_u**2, 1e-4)
    return mean_u * FEATURE_CAPS, np.sqrt(var_u) * FEATURE_CAPS


def global_scaler(moments: list[tuple[int, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation from the units' moments (population variance, floor 1e-6)."""
    n = sum(m[0] for m in moments)
    if n == 0:
        raise ValueError("no users in any unit: cannot standardise features")
    total = np.sum([m[1] for m in moments], axis=0)
    total_sq = np.sum([m[2] for m in moments], axis=0)
    mean = total / n
    var = np.maximum(total_sq / n - mean**2, 0.0)
    return mean, np.sqrt(np.maximum(var, 1e-12)).clip(min=1e-6)


def public_scaler() -> tuple[list[float], list[float]]:
    """Standardisation from public bounds only (client-level DP): ``x / FEATURE_CAPS``."""
    return [0.0] * len(FEATURE_CAPS), [float(c) for c in FEATURE_CAPS]
