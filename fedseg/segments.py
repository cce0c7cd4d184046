"""Segmentation definitions both sides share: the bounded activity space, the fixed RFM bins and
segment vocabularies, and the sensitivity of every segmentation release.

The units compute per-user values with them (:mod:`clients.segments`); the coordinator reads
aggregates with them (:mod:`server.segmentation`). Bounds are fixed in advance, never taken
from data, so one user's activity vector lies in [0, 1]^5 (L2 norm at most sqrt(5)).
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np

ACTIVITY_DIMS: Final = ("frequency", "recency", "monetary", "trend", "tenure")
D: Final = len(ACTIVITY_DIMS)
FREQ_CAP: Final = 50.0
RECENCY_CAP_DAYS: Final = 365.0
MONEY_CAP: Final = 5000.0
TENURE_CAP_DAYS: Final = 365.0
GRID_BINS: Final = 4  # per dimension for the initialisation histogram: 4^5 = 1024 cells


def vectors_to_profile(centroids: np.ndarray) -> list[dict[str, float]]:
    """Centroids back in natural units (purchase days, days, currency units, trend, days)."""
    out = []
    for c in np.atleast_2d(centroids):
        out.append({
            "frequency": float(np.expm1(c[0] * np.log1p(FREQ_CAP))),
            "recency_days": float(c[1] * RECENCY_CAP_DAYS),
            "monetary_total": float(np.expm1(c[2] * np.log1p(MONEY_CAP))),
            "trend": float(c[3] * 2 - 1),
            "tenure_days": float(c[4] * TENURE_CAP_DAYS),
        })
    return out


def grid_centers(d: int = D, bins: int = GRID_BINS) -> np.ndarray:
    """Centre of every grid cell, in :func:`grid_cell` order."""
    axes = (np.arange(bins) + 0.5) / bins
    mesh = np.meshgrid(*([axes] * d), indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=1)


#: Fixed bin edges (left-closed) for the RFM histograms, in natural units. Coarse enough that
#: DP noise summed over the bins below a quantile stays small, fine enough to score on.
RECENCY_EDGES: Final = np.arange(0, 735, 7.0)                 # weeks of days, 0 .. 104+ weeks
FREQUENCY_EDGES: Final = np.arange(0, 101, 1.0)               # whole purchase days, 0 .. 100+
MONETARY_EDGES: Final = np.concatenate([[0.0], np.round(np.geomspace(1, 100_000, 120), 2)])

RFM_EDGES: Final = {"recency": RECENCY_EDGES, "frequency": FREQUENCY_EDGES, "monetary": MONETARY_EDGES}
#: Predicted CLV is money too: its histogram (tiers by CLV) uses the monetary bins.
CLV_EDGES: Final = MONETARY_EDGES
#: Every scored quantity's bin edges (RFM and, with tiers by CLV, the CLV).
SCORE_EDGES: Final = {**RFM_EDGES, "clv": CLV_EDGES}


def quantile_bins(histogram: np.ndarray, quantiles: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)) -> list[int]:
    """For each q, the first bin whose cumulative share reaches q (the inverted-CDF quantile).

    Negative noisy counts are treated as 0. With exact counts this is exactly the pooled
    ``numpy.quantile(binned values, q, method="inverted_cdf")``.
    """
    counts = np.maximum(np.asarray(histogram, dtype=float), 0.0)
    total = counts.sum()
    if total <= 0:
        raise ValueError("empty histogram: no users to compute thresholds from")
    cdf = np.cumsum(counts) / total
    return [int(np.searchsorted(cdf, q - 1e-12, side="left")) for q in quantiles]


#: The 11-segment RFM scheme on (R, FM) with FM = round-half-up((F + M) / 2); see docs/segments.md.
RFM_SEGMENT_NAMES: Final = ("Champions", "Loyal", "Potential Loyalist", "New Customers", "Promising",
                            "Need Attention", "About To Sleep", "At Risk", "Cannot Lose Them",
                            "Hibernating", "Lost")
RFM_GRID: Final = {  # R -> names for FM = 1..5
    5: ("New Customers", "Potential Loyalist", "Potential Loyalist", "Champions", "Champions"),
    4: ("Promising", "Potential Loyalist", "Potential Loyalist", "Loyal", "Loyal"),
    3: ("About To Sleep", "About To Sleep", "Need Attention", "Loyal", "Loyal"),
    2: ("Hibernating", "Hibernating", "At Risk", "At Risk", "Cannot Lose Them"),
    1: ("Lost", "Hibernating", "At Risk", "At Risk", "Cannot Lose Them"),
}
VALUE_TIERS: Final = ("basic", "active", "high-value", "VIP")


# --------------------------------------------------------------------------------------
# What one user can change in each segmentation release (add/remove one end user)
# --------------------------------------------------------------------------------------

#: Count tables in the final release (sizes, churned, RFM segments, tiers, stages, warnings).
FINAL_TABLES: Final = 6
#: Per-segment score sums in the final release when units hold scores: churn probability, CLV / clip.
SCORE_SUMS: Final = 2
#: The segmentation steps, in protocol order (message types ``query.seg_<step>``).
STEPS: Final = ("grid", "lloyd", "rfm", "final")


def step_sensitivities(step: str, config: dict[str, Any]) -> list[tuple[str, float]]:
    """(noise config key, squared L2 sensitivity) of each Gaussian release a step makes.

    One user (add/remove) changes: one grid cell count (1); in each of the R candidate centroid
    sets one centroid's count (1) and its sum (L2 <= sqrt(d), vectors lie in [0, 1]^d), so
    R d for the sums and R for the counts; one bin of each of the three RFM histograms (3), and
    of the CLV histogram when tiers are by CLV (``tier-by = clv``: 4); one count in each of the
    final tables and the profile sum of its segment (T + d), plus, with scores (``score-sums``),
    its churn probability (in [0, 1]) and its CLV divided by its clip (in [0, 1]) in its segment's
    sums (T + d + 2); one cell of the transition matrix (1). A unit computes these itself from
    what it is asked to send.
    """
    if step == "grid":
        return [("sigma", 1.0)]
    if step == "lloyd":
        restarts = int(config.get("restarts", 1))
        return [("sigma-sums", float(restarts * D)), ("sigma-counts", float(restarts))]
    if step == "rfm":
        return [("sigma", 4.0 if config.get("tier-by") == "clv" else 3.0)]
    if step == "final":
        out = [("sigma", float(FINAL_TABLES + D + (SCORE_SUMS if int(config.get("score-sums", 0)) else 0)))]
        if "previous-cutoff" in config:
            out.append(("sigma-transitions", 1.0))
        return out
    raise ValueError(f"unknown segmentation step {step!r}; one of {', '.join(STEPS)}")
