"""Evaluation metrics that can be merged across units from aggregate statistics.

A unit reports, for its test users, the number of users ``n``, the sums of the log loss and of
the Brier score, and two histograms of predicted churn probability (one for churned users, one
for retained users) over :data:`HIST_BINS` equal-width bins of [0, 1]. Sums and histograms add
across units, so the coordinator computes the pooled figures without seeing a score:

- ``log_loss = sum(-y log p - (1-y) log(1-p)) / n`` (p clipped to [1e-7, 1 - 1e-7]);
- ``brier = sum((p - y)^2) / n``;
- ``auc = P(score of a random churned user > score of a random retained user)``, with pairs in
  the same bin counted one half. Against the exact AUC the error is at most half the share of
  (churned, retained) pairs that fall in one bin; with 2,000 bins it is below 1e-3 on CDNOW
  (checked in tests against scikit-learn).
"""

from __future__ import annotations

from typing import Final

import numpy as np

HIST_BINS: Final = 2000
EPS: Final = 1e-7


def score_histograms(probs: np.ndarray, labels: np.ndarray, bins: int = HIST_BINS) -> tuple[np.ndarray, np.ndarray]:
    """Counts per probability bin of positives (label 1) and negatives (label 0)."""
    idx = np.clip((np.asarray(probs) * bins).astype(np.int64), 0, bins - 1)
    labels = np.asarray(labels) > 0.5
    pos = np.bincount(idx[labels], minlength=bins)
    neg = np.bincount(idx[~labels], minlength=bins)
    return pos, neg


def auc_from_histograms(pos: np.ndarray, neg: np.ndarray) -> float:
    """ROC AUC from binned scores; ties within a bin count one half. NaN if a class is empty."""
    # Noisy (DP) counts may be negative; they are used as they are: clipping them at 0 would add
    # mass to empty bins and bias the AUC towards 0.5, while the formula is linear in each count.
    pos = np.asarray(pos, dtype=np.float64)
    neg = np.asarray(neg, dtype=np.float64)
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos <= 0 or n_neg <= 0:
        return float("nan")
    neg_below = np.cumsum(neg) - neg
    return float((pos * (neg_below + 0.5 * neg)).sum() / (n_pos * n_neg))


def loss_sums(probs: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """``(sum of log loss, sum of Brier score)`` over users."""
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1 - EPS)
    y = np.asarray(labels, dtype=np.float64)
    log_loss = -(y * np.log(p) + (1 - y) * np.log(1 - p)).sum()
    brier = ((p - y) ** 2).sum()
    return float(log_loss), float(brier)
