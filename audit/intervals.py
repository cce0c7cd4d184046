"""Confidence intervals that contain their estimate and respect its range.

One job: interval methods for the fairness audit, vectorised over groups (numpy arrays
broadcast). ``level`` is the two-sided confidence level, ``z = Phi^-1(1 - (1 - level) / 2)``.

* :func:`wilson` -- a rate ``x / n`` (Wilson 1927 score interval)::

      centre = (x + z^2/2) / (n + z^2),  half = z sqrt(x (n - x) / n + z^2 / 4) / (n + z^2)

  Always inside [0, 1], contains ``x / n``, good coverage down to a handful of counts (the
  Wald interval is not: it collapses to a point at 0 or n).
* :func:`newcombe` -- a difference of two independent rates ``p1 - p2`` (Newcombe 1998,
  method 10, the "hybrid score" interval): with Wilson limits ``(l_i, u_i)``::

      L = d - sqrt((p1 - l1)^2 + (u2 - p2)^2),   U = d + sqrt((u1 - p1)^2 + (p2 - l2)^2)

  Inside [-1, 1], contains ``d``.
* :func:`mover_ratio` -- a ratio of two independent rates ``p1 / p2`` by the method of
  variance estimates recovery (MOVER-R; Donner and Zou 2012, Stat Methods Med Res 21:347;
  Zou and Donner 2008, Stat Med 27:1693) from the same Wilson limits: the limits solve
  ``(p1 - theta p2)^2 = (p1 - l1)^2 + theta^2 (u2 - p2)^2`` (lower) and
  ``(p1 - theta p2)^2 = (u1 - p1)^2 + theta^2 (p2 - l2)^2`` (upper); written in the
  rationalised form that is stable when a Wilson limit reaches 0. Contains ``p1 / p2``, never
  negative; the upper limit is ``inf`` when the reference rate could be 0 (``x2 = 0``: the
  ratio itself is undefined and reported as ``None``). Consistent with Newcombe (both are MOVER
  with Wilson limits) and reciprocal: the interval of ``p2 / p1`` is ``[1/U, 1/L]``.
* :func:`range_interval`, :func:`min_ratio_interval` -- summary figures over groups
  (``max - min`` of rates, ``min / max`` of rates) by projecting simultaneous pairwise
  intervals: every pair's Newcombe (or MOVER-R) interval at level ``1 - (1 - level) / M``
  (Bonferroni over the ``M`` pairs), then ``max_pairs |d|`` lies in
  ``[max_pairs dist(CI, 0), max_pairs max(|L|, |U|)]`` whenever all pairwise intervals hold,
  i.e. with probability at least ``level``. Conservative (coverage above ``level``), contains
  the estimate, stays in range, and needs only counts (so it is federated for free). Percentile
  bootstrap intervals of these max-type statistics are biased upwards and, near zero, can miss
  the estimate itself (0.020 reported with [0.021, 0.077]).
* :func:`bca` -- bootstrap statistics (AUC, calibration error): bias-corrected and
  accelerated percentile interval (Efron 1987) with the acceleration from a jackknife the
  caller supplies; the interval is clipped to the statistic's range and widened, if needed,
  to reach the estimate (this happens only when nearly all replicates fall on one side,
  ``|z0| > z``, where BCa itself stops correcting).
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr, ndtri


def z_value(level: float) -> float:
    return float(ndtri(0.5 + level / 2))


def wilson(x: np.ndarray, n: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of ``x / n``; NaN where ``n <= 0``. ``x`` is clipped to [0, n]
    (noisy DP counts can leave that range)."""
    x, n = np.broadcast_arrays(np.asarray(x, float), np.asarray(n, float))
    z = z_value(level) if np.ndim(level) == 0 else ndtri(0.5 + np.asarray(level) / 2)
    ok = n > 0
    nn = np.where(ok, n, 1.0)
    xx = np.clip(x, 0, nn)
    z2 = z * z
    centre = (xx + z2 / 2) / (nn + z2)
    half = z * np.sqrt(np.maximum(xx * (nn - xx) / nn, 0) + z2 / 4) / (nn + z2)
    lo = np.where(ok, np.clip(centre - half, 0, 1), np.nan)
    hi = np.where(ok, np.clip(centre + half, 0, 1), np.nan)
    # exact endpoints at the boundary (rounding can leave 1e-17 above 0)
    lo = np.where(ok & (xx <= 0), 0.0, lo)
    hi = np.where(ok & (xx >= nn), 1.0, hi)
    return lo, hi


def _rate(x: np.ndarray, n: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.clip(x, 0, np.maximum(n, 0)) / np.where(n > 0, n, 1), np.nan)


def newcombe(x1, n1, x2, n2, level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # noqa: ANN001
    """Difference ``p1 - p2`` of independent rates with Newcombe's hybrid score interval."""
    p1, p2 = _rate(np.asarray(x1, float), np.asarray(n1, float)), _rate(np.asarray(x2, float), np.asarray(n2, float))
    l1, u1 = wilson(x1, n1, level)
    l2, u2 = wilson(x2, n2, level)
    d = p1 - p2
    lo = d - np.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    hi = d + np.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return d, np.clip(lo, -1, 1), np.clip(hi, -1, 1)


def mover_ratio(x1, n1, x2, n2, level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # noqa: ANN001
    """Ratio ``p1 / p2`` of independent rates with the MOVER-R interval from Wilson limits.

    NaN where ``p2`` is 0 or undefined; ``hi = inf`` where the reference's Wilson lower limit is 0.
    """
    p1, p2 = _rate(np.asarray(x1, float), np.asarray(n1, float)), _rate(np.asarray(x2, float), np.asarray(n2, float))
    l1, u1 = wilson(x1, n1, level)
    l2, u2 = wilson(x2, n2, level)
    with np.errstate(invalid="ignore", divide="ignore"):
        b = p1 * p2
        # lower: a L^2 - 2 b L + c = 0, smaller root c / (b + sqrt(b^2 - a c))
        a, c = u2 * (2 * p2 - u2), l1 * (2 * p1 - l1)
        den = b + np.sqrt(np.maximum(b * b - a * c, 0))
        lo = np.where(den > 0, c / np.where(den > 0, den, 1), 0.0)
        # upper: a' U^2 - 2 b U + c' = 0, larger root (b + sqrt(b^2 - a' c')) / a'
        a2, c2 = l2 * (2 * p2 - l2), u1 * (2 * p1 - u1)
        hi = np.where(a2 > 0, (b + np.sqrt(np.maximum(b * b - a2 * c2, 0))) / np.where(a2 > 0, a2, 1), np.inf)
        r = np.where(p2 > 0, p1 / np.where(p2 > 0, p2, 1), np.nan)
    bad = np.isnan(r)
    lo = np.where(bad, np.nan, np.minimum(np.maximum(lo, 0), r))
    hi = np.where(bad, np.nan, np.maximum(hi, r))
    return r, lo, hi


def _pairs(g: int) -> tuple[np.ndarray, np.ndarray]:
    i, j = np.triu_indices(g, 1)
    return i, j


def range_interval(xs: list[np.ndarray], ns: list[np.ndarray], level: float = 0.95) -> tuple[float, float, float]:
    """``max over rate families of (max_g p - min_g p)`` with the projected simultaneous interval.

    ``xs[f]``, ``ns[f]``: counts and denominators of family f (e.g. TPR and FPR) per group;
    groups with ``n <= 0`` are skipped. Returns (value, low, high); NaNs if fewer than 2 groups.
    """
    fams = []
    for x, n in zip(xs, ns):
        x, n = np.asarray(x, float), np.asarray(n, float)
        keep = n > 0
        fams.append((x[keep], n[keep]))
    m = sum(len(x) * (len(x) - 1) // 2 for x, _ in fams)
    if m == 0:
        return float("nan"), float("nan"), float("nan")
    lev = 1 - (1 - level) / m
    val, lo, hi = 0.0, 0.0, 0.0
    for x, n in fams:
        if len(x) < 2:
            continue
        i, j = _pairs(len(x))
        d, low, high = newcombe(x[i], n[i], x[j], n[j], lev)
        val = max(val, float(np.max(np.abs(d))))
        lo = max(lo, float(np.max(np.maximum(0, np.maximum(low, -high)))))
        hi = max(hi, float(np.max(np.maximum(np.abs(low), np.abs(high)))))
    return val, lo, hi


def min_ratio_interval(x: np.ndarray, n: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """``min_g p / max_g p`` with the projected simultaneous MOVER-R interval (module doc)."""
    x, n = np.asarray(x, float), np.asarray(n, float)
    keep = n > 0
    x, n = x[keep], n[keep]
    g = len(x)
    if g < 2:
        return float("nan"), float("nan"), float("nan")
    p = _rate(x, n)
    if np.max(p) <= 0:
        return float("nan"), float("nan"), float("nan")
    lev = 1 - (1 - level) / (g * (g - 1) // 2)
    i, j = np.where(~np.eye(g, dtype=bool))
    r, lo, hi = mover_ratio(x[i], n[i], x[j], n[j], lev)
    ok = ~np.isnan(r)
    val = float(np.min(p) / np.max(p))
    low = float(min(np.min(lo[ok]), val))
    high = float(max(np.min(hi[ok]), val))
    return val, low, min(high, 1.0)


def bca(point: np.ndarray, reps: np.ndarray, jack: np.ndarray | None, weights: np.ndarray | None,
        level: float = 0.95, bounds: tuple[float, float] = (-np.inf, np.inf)) -> tuple[np.ndarray, np.ndarray]:
    """BCa interval per column of ``reps`` (B x G) around ``point`` (G).

    ``jack`` (J x G) are leave-one-out values with ``weights`` (J x G, how many observations each
    stands for) for the acceleration ``a = sum w d^3 / (6 (sum w d^2)^1.5)``, ``d = mean - jack``;
    without them ``a = 0`` (BC). The interval is clipped to ``bounds`` and widened to the point.
    """
    point = np.asarray(point, float)
    reps = np.asarray(reps, float)
    B = np.sum(~np.isnan(reps), axis=0)
    below = np.sum(reps < point, axis=0) + 0.5 * np.sum(reps == point, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.clip(below / np.maximum(B, 1), 1 / (B + 1), B / (B + 1))
    z0 = ndtri(frac)
    a = np.zeros_like(point)
    if jack is not None and weights is not None:
        w = np.where(np.isnan(jack), 0.0, weights)
        jj = np.where(np.isnan(jack), 0.0, jack)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.sum(w * jj, axis=0) / np.sum(w, axis=0)
            d = np.where(w > 0, mean - jj, 0.0)
            s2 = np.sum(w * d * d, axis=0)
            a = np.where(s2 > 0, np.sum(w * d ** 3, axis=0) / (6 * s2 ** 1.5), 0.0)
    z = z_value(level)
    lo_q, hi_q = [], []
    for zz in (-z, z):
        t = z0 + zz
        with np.errstate(invalid="ignore", divide="ignore"):
            q = ndtr(z0 + t / (1 - a * t))
        (lo_q if zz < 0 else hi_q).append(q)
    lo = np.full_like(point, np.nan)
    hi = np.full_like(point, np.nan)
    for gi in range(point.size):
        r = reps[:, gi]
        r = r[~np.isnan(r)]
        if r.size < 2 or np.isnan(point[gi]):
            continue
        ql, qh = float(lo_q[0][gi]), float(hi_q[0][gi])
        if np.isnan(ql) or np.isnan(qh):
            ql, qh = (1 - level) / 2, 1 - (1 - level) / 2
        lo[gi], hi[gi] = np.quantile(r, [np.clip(ql, 0, 1), np.clip(qh, 0, 1)])
    lo = np.clip(np.minimum(lo, point), *bounds)
    hi = np.clip(np.maximum(hi, point), *bounds)
    return lo, hi
