"""Coverage of the fairness audit's intervals on simulated data with known truth.

Truth: scores ``s ~ U(0, 1)``, ``P(y = 1 | s) = s^1.5`` (a miscalibrated model), two groups with
selection rates that differ. Then, per group, the population figures are known in closed form:
calibration error over 10 bins ``sum_k |int_k (s^1.5 - s) ds|``, AUC ``int f1(s) F0(s) ds``,
TPR ``P(s >= t | y = 1)`` etc. The slow test runs 400 data sets and asks >= 93% coverage of
the 95% intervals in four settings (including a small nearly calibrated group and a calibrated
model, where the true calibration error is 0); the fast ones run 120 (binomial SD of a 95%
coverage is 2 points there, so they ask >= 90%).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import integrate

from audit import FairnessSpec, fairness_audit

T = 0.5
Q = 1.5  # P(y=1|s) = s^Q


def truth(Q: float = Q) -> dict[str, float]:  # noqa: N803
    q = lambda s: s**Q  # noqa: E731
    py = integrate.quad(q, 0, 1)[0]
    ece = sum(abs(integrate.quad(lambda s: q(s) - s, k / 10, (k + 1) / 10)[0]) for k in range(10))
    f0cdf = lambda t: integrate.quad(lambda s: 1 - q(s), 0, t)[0] / (1 - py)  # noqa: E731
    auc = integrate.quad(lambda s: q(s) / py * f0cdf(s), 0, 1)[0]
    tpr = integrate.quad(q, T, 1)[0] / py
    fpr = integrate.quad(lambda s: 1 - q(s), T, 1)[0] / (1 - py)
    return {"calibration_error": ece, "auc": auc, "tpr": tpr, "fpr": fpr, "selection_rate": 1 - T}


def coverage(reps: int, n: int = 1500, B: int = 400, Q: float = Q) -> dict[str, float]:  # noqa: N803
    t = truth(Q)
    hits = {k: 0 for k in t}
    for seed in range(reps):
        rng = np.random.default_rng(1000 + seed)
        s = rng.random(n)
        y = (rng.random(n) < s**Q).astype(int)
        frame = pd.DataFrame({"g": "a", "y": y, "s": s})
        rep = fairness_audit(frame, FairnessSpec(label="y", score="s", groups=["g"], bootstrap=B, seed=seed))
        gf = rep.attributes["g"].groups["a"]
        for k, v in t.items():
            e = getattr(gf, k)
            hits[k] += e.ci_low <= v <= e.ci_high
    return {k: h / reps for k, h in hits.items()}


def test_truth_is_what_a_large_sample_shows():
    rng = np.random.default_rng(0)
    s = rng.random(400_000)
    y = (rng.random(400_000) < s**Q).astype(int)
    gf = fairness_audit(pd.DataFrame({"g": "a", "y": y, "s": s}),
                        FairnessSpec(label="y", score="s", groups=["g"], bootstrap=0)).attributes["g"].groups["a"]
    for k, v in truth().items():
        assert abs(getattr(gf, k).value - v) < 0.004, k


def test_coverage_fast():
    cov = coverage(120)
    assert min(cov.values()) >= 0.90, cov


def test_coverage_fast_small_nearly_calibrated():
    """Small group, calibration gaps near 0 (where a bootstrap of the ECE covered 8%)."""
    cov = coverage(120, n=400, Q=1.1)
    assert min(cov.values()) >= 0.90, cov


@pytest.mark.slow
@pytest.mark.parametrize("n,Q", [(1500, 1.5), (400, 1.1), (400, 1.0), (3000, 1.2)])
def test_coverage_slow(n, Q):  # noqa: N803
    cov = coverage(400, n=n, Q=Q)
    print(f"coverage of 95% intervals over 400 simulated data sets (n={n}, P(y|s)=s^{Q}):", cov)
    assert min(cov.values()) >= 0.93, cov
