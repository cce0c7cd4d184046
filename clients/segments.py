"""Unit-side segmentation: bounded activity vectors, local k-means statistics, RFM scoring.

Everything here runs on a unit's own users; what it returns for the coordinator is aggregate
(per-centroid sums and counts, histogram counts, per-segment totals), optionally with Gaussian
noise added by the unit itself before anything leaves (see :func:`add_noise`).

Activity vector (each coordinate in [0, 1], bounds fixed in advance, never taken from data,
so one user's vector has L2 norm at most ``sqrt(d)``):

====  ===================================================  =========================
dim   value                                                 meaning of 1
====  ===================================================  =========================
0     ``log1p(frequency) / log1p(50)``                      50+ purchase days
1     ``recency_days / 365``                                a year or more since buying
2     ``log1p(monetary_total) / log1p(5000)``               5,000+ currency units
3     ``(trend + 1) / 2``                                   all recent activity new
4     ``tenure_days / 365``                                 a customer for a year+
====  ===================================================  =========================
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fedseg.segments import (
    FREQ_CAP,
    FREQUENCY_EDGES,
    GRID_BINS,
    MONETARY_EDGES,
    MONEY_CAP,
    RECENCY_CAP_DAYS,
    RECENCY_EDGES,
    RFM_GRID,
    TENURE_CAP_DAYS,
)


def activity_vectors(features: pd.DataFrame) -> np.ndarray:
    """``[n, 5]`` bounded activity vectors (see the module table)."""
    freq = np.log1p(features["frequency"].to_numpy(dtype=float)) / np.log1p(FREQ_CAP)
    rec = features["recency_days"].to_numpy(dtype=float) / RECENCY_CAP_DAYS
    money = np.log1p(features["monetary_total"].to_numpy(dtype=float)) / np.log1p(MONEY_CAP)
    trend = (features["trend"].to_numpy(dtype=float) + 1.0) / 2.0
    tenure = features["tenure_days"].to_numpy(dtype=float) / TENURE_CAP_DAYS
    return np.clip(np.stack([freq, rec, money, trend, tenure], axis=1), 0.0, 1.0)


def grid_cell(vectors: np.ndarray, bins: int = GRID_BINS) -> np.ndarray:
    """Index of each vector's cell in the ``bins^d`` grid over [0, 1]^d."""
    idx = np.minimum((vectors * bins).astype(np.int64), bins - 1)
    weights = bins ** np.arange(vectors.shape[1])[::-1]
    return idx @ weights


def grid_histogram(vectors: np.ndarray, bins: int = GRID_BINS) -> np.ndarray:
    """Users per grid cell (sensitivity 1 per user: one user sits in one cell)."""
    return np.bincount(grid_cell(vectors, bins), minlength=bins ** vectors.shape[1]).astype(np.float64)


def assign(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid (squared Euclidean distance) for each vector."""
    d2 = ((vectors[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
    return d2.argmin(axis=1)


def lloyd_statistics(vectors: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-centroid sums ``[k, d]``, counts ``[k]`` and the unit's inertia (sum of squared distances)."""
    labels = assign(vectors, centroids)
    k = len(centroids)
    sums = np.zeros((k, vectors.shape[1]))
    np.add.at(sums, labels, vectors)
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    inertia = float(((vectors - centroids[labels]) ** 2).sum())
    return sums, counts, inertia


def add_noise(values: np.ndarray, sigma: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """``values + N(0, sigma^2)`` per entry; ``sigma = 0`` returns the values unchanged.

    Each unit adds the full noise itself, so what the coordinator sees from one unit is already
    protected (without secure aggregation the coordinator sees each unit's share).
    """
    if sigma <= 0:
        return np.asarray(values, dtype=np.float64)
    rng = rng or np.random.default_rng()
    return np.asarray(values, dtype=np.float64) + rng.normal(0.0, sigma, size=np.shape(values))


# --------------------------------------------------------------------------------------
# RFM: histograms over fixed bins, quintile scores, the 11 named segments, value tiers
# --------------------------------------------------------------------------------------

def binned(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Index of the bin of each value: ``edges[i] <= v < edges[i+1]``; the last bin is open."""
    return np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 1)


def rfm_histograms(features: pd.DataFrame) -> dict[str, np.ndarray]:
    """Users per fixed bin of recency (days), frequency (purchase days) and monetary total."""
    return {
        "recency": np.bincount(binned(features["recency_days"].to_numpy(), RECENCY_EDGES),
                               minlength=len(RECENCY_EDGES)).astype(float),
        "frequency": np.bincount(binned(features["frequency"].to_numpy(), FREQUENCY_EDGES),
                                 minlength=len(FREQUENCY_EDGES)).astype(float),
        "monetary": np.bincount(binned(features["monetary_total"].to_numpy(), MONETARY_EDGES),
                                minlength=len(MONETARY_EDGES)).astype(float),
    }


def quintile_score(bin_index: np.ndarray, threshold_bins: list[int], higher_is_better: bool) -> np.ndarray:
    """Score 1-5: how many thresholds the value's bin lies above (+1); reversed for recency."""
    above = (np.asarray(bin_index)[:, None] > np.asarray(threshold_bins)[None, :]).sum(axis=1)
    return (above + 1) if higher_is_better else (5 - above)


def rfm_segment(r: np.ndarray, f: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Segment name for each (R, F, M) score triple (every one of the 125 codes has one)."""
    fm = np.floor((np.asarray(f) + np.asarray(m) + 1) / 2).astype(int)
    table = np.array([[RFM_GRID[rr][c - 1] for c in range(1, 6)] for rr in range(1, 6)], dtype=object)
    return table[np.asarray(r) - 1, fm - 1]


def value_tier(r: np.ndarray, f: np.ndarray, m: np.ndarray) -> np.ndarray:
    """VIP: M = 5 and F >= 4; high-value: M >= 4; active: F >= 3 or R >= 4; else basic."""
    r, f, m = map(np.asarray, (r, f, m))
    tier = np.full(len(r), "basic", dtype=object)
    tier[(f >= 3) | (r >= 4)] = "active"
    tier[m >= 4] = "high-value"
    tier[(m == 5) & (f >= 4)] = "VIP"
    return tier


def rfm_scores(features: pd.DataFrame, thresholds: dict[str, list[int]]) -> pd.DataFrame:
    """R, F, M scores, the RFM code, segment name and value tier of each user."""
    r = quintile_score(binned(features["recency_days"].to_numpy(), RECENCY_EDGES),
                       thresholds["recency"], higher_is_better=False)
    f = quintile_score(binned(features["frequency"].to_numpy(), FREQUENCY_EDGES), thresholds["frequency"], True)
    m = quintile_score(binned(features["monetary_total"].to_numpy(), MONETARY_EDGES), thresholds["monetary"], True)
    return pd.DataFrame({
        "r_score": r, "f_score": f, "m_score": m,
        "rfm_code": [f"{a}{b}{c}" for a, b, c in zip(r, f, m)],
        "rfm_segment": rfm_segment(r, f, m),
        "value_tier": value_tier(r, f, m),
    }, index=features.index)
