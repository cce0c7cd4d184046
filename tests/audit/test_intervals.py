"""Interval methods: containment, range, agreement with published values, coverage on simulated truth."""

from __future__ import annotations

import numpy as np
import pytest

from audit.intervals import mover_ratio, min_ratio_interval, newcombe, range_interval, wilson

R = 4000  # simulated data sets per case (vectorised: milliseconds)


def test_wilson_newcombe_published_values():
    # Newcombe (1998) Table II, example (a): 56/70 vs 48/80 -> 0.2000 [0.0524, 0.3339] (method 10)
    d, lo, hi = newcombe(56, 70, 48, 80)
    assert abs(d - 0.2) < 1e-12 and abs(lo - 0.0524) < 5e-5 and abs(hi - 0.3339) < 5e-5
    # Wilson 95% for 0/10: [0, 0.2775]; 10/10: [0.7225, 1]
    assert np.allclose(np.array(wilson(0, 10)).ravel(), [0, 0.27753], atol=5e-5)
    assert np.allclose(np.array(wilson(10, 10)).ravel(), [0.72247, 1], atol=5e-5)


def test_mover_ratio_contains_estimate_and_is_reciprocal():
    rng = np.random.default_rng(0)
    x1, x2 = rng.integers(0, 60, 500), rng.integers(1, 60, 500)
    n1, n2 = x1 + rng.integers(0, 80, 500), x2 + rng.integers(0, 80, 500)
    r, lo, hi = mover_ratio(x1, n1, x2, n2)
    assert np.all((lo <= r + 1e-12) & (r <= hi + 1e-12) & (lo >= 0))
    ok = x1 > 0
    r2, lo2, hi2 = mover_ratio(x2[ok], n2[ok], x1[ok], n1[ok])
    np.testing.assert_allclose(lo2, 1 / hi[ok], rtol=1e-9)
    np.testing.assert_allclose(hi2, 1 / lo[ok], rtol=1e-9)


@pytest.mark.parametrize("p1,p2,n1,n2", [(0.3, 0.3, 400, 1500), (0.05, 0.08, 200, 900), (0.6, 0.45, 60, 300),
                                         (0.02, 0.02, 500, 500), (0.9, 0.95, 80, 2000)])
def test_rate_difference_ratio_coverage(p1, p2, n1, n2):
    """Each of Wilson, Newcombe and MOVER-R covers the truth in at least 93% of 4000 simulated data sets."""
    rng = np.random.default_rng(int(p1 * 1000 + n1))
    x1, x2 = rng.binomial(n1, p1, R), rng.binomial(n2, p2, R)
    lo, hi = wilson(x1, n1)
    assert np.mean((lo <= p1) & (p1 <= hi)) >= 0.93
    d, lo, hi = newcombe(x1, n1, x2, n2)
    assert np.mean((lo <= p1 - p2) & (p1 - p2 <= hi)) >= 0.93
    assert np.all((lo <= d) & (d <= hi)) and np.all((lo >= -1) & (hi <= 1))
    r, lo, hi = mover_ratio(x1, n1, x2, n2)
    ok = ~np.isnan(r)
    cov = np.mean((lo[ok] <= p1 / p2) & (p1 / p2 <= hi[ok]))
    assert cov >= 0.93 and np.all((lo[ok] <= r[ok]) & (r[ok] <= hi[ok]))


@pytest.mark.parametrize("rates", [(0.30, 0.30, 0.30), (0.30, 0.34, 0.25), (0.10, 0.10)])
def test_summary_intervals_cover_and_contain(rates):
    """Demographic-parity difference/ratio and equalized-odds-style ranges over groups."""
    rng = np.random.default_rng(len(rates))
    n = np.array([1500, 700, 300][:len(rates)])
    p = np.array(rates)
    truth_diff, truth_ratio = p.max() - p.min(), p.min() / p.max()
    cover_d = cover_r = 0
    for _ in range(600):
        x = rng.binomial(n, p)
        v, lo, hi = range_interval([x], [n])
        assert lo <= v <= hi and 0 <= lo and hi <= 1
        cover_d += lo <= truth_diff <= hi
        v, lo, hi = min_ratio_interval(x, n)
        assert lo <= v <= hi and 0 <= lo and hi <= 1
        cover_r += lo <= truth_ratio <= hi
    assert cover_d / 600 >= 0.93 and cover_r / 600 >= 0.93
