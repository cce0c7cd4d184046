"""Coverage of the fairness audit's intervals on simulated data with known truth.

Truth: scores ``s ~ U(0, 1)``, ``P(y = 1 | s) = s^1.5`` (a miscalibrated model), two groups with
selection rates that differ. Then, per group, the population figures are known in closed form:
calibration error over 10 bins ``sum_k |int_k (s^1.5 - s) ds|``, AUC ``int f1(s) F0(s) ds``,
TPR ``P(s >= t | y = 1)`` etc. The slow test runs 400 data sets and asks >= 93% coverage of
the 95% intervals; the fast one runs 120 (binomial SD of a 95% coverage is 2 points there, so it
asks >= 90%).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import integrate

from audit import FairnessSpec, fairness_audit

T = 0.5
Q = 1.5  # P(y=1|s) = s^Q


def truth() -> dict[str, float]:
    q = lambda s: s**Q  # noqa: E731
    py = integrate.quad(q, 0, 1)[0]
    ece = sum(abs(integrate.quad(lambda s: q(s) - s, k / 10, (k + 1) / 10)[0]) for k in range(10))
    f0cdf = lambda t: integrate.quad(lambda s: 1 - q(s), 0, t)[0] / (1 - py)  # noqa: E731
    auc = integrate.quad(lambda s: q(s) / py * f0cdf(s), 0, 1)[0]
    tpr = integrate.quad(q, T, 1)[0] / py
    fpr = integrate.quad(lambda s: 1 - q(s), T, 1)[0] / (1 - py)
    return {"calibration_error": ece, "auc": auc, "tpr": tpr, "fpr": fpr, "selection_rate": 1 - T}


def coverage(reps: int, n: int = 1500, B: int = 400) -> dict[str, float]:
    t = truth()
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


@pytest.mark.slow
def test_coverage_slow():
    cov = coverage(400)
    print("coverage of 95% intervals over 400 simulated data sets:", cov)
    assert min(cov.values()) >= 0.93, cov
