"""Privacy accounting: every epsilon fedseg states comes from here.

- Poisson-subsampled Gaussian mechanisms composed T times (DP-SGD, client-level DP): Google's
  ``dp-accounting`` (RDP by default; PLD, tighter, on request).
- Gaussian releases of counts and sums (segmentation, federated audits) in zero-concentrated DP:
  a release of L2 sensitivity D with noise sigma costs rho = D^2 / (2 sigma^2), rho adds up,
  and epsilon = rho + 2 sqrt(rho ln(1/delta)) (Bun and Steinke 2016, Prop. 1.3).
"""

from __future__ import annotations

import math
from typing import Literal

import dp_accounting as dpa


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float,
            accountant: Literal["rdp", "pld"] = "rdp") -> float:
    """epsilon after ``steps`` Poisson-sampled (rate ``sample_rate``) Gaussian releases."""
    if noise_multiplier <= 0:
        return float("inf")
    event = dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(sample_rate, dpa.GaussianDpEvent(noise_multiplier)),
                                    steps)
    acc = dpa.pld.PLDAccountant() if accountant == "pld" else dpa.rdp.RdpAccountant()
    return float(acc.compose(event).get_epsilon(delta))


def noise_multiplier_for(target_epsilon: float, sample_rate: float, steps: int, delta: float,
                         accountant: Literal["rdp", "pld"] = "rdp") -> float:
    """Smallest noise multiplier whose :func:`epsilon` is at most ``target_epsilon`` (bisection)."""
    lo, hi = 0.05, 200.0
    if epsilon(hi, sample_rate, steps, delta, accountant) > target_epsilon:
        raise ValueError(f"epsilon {target_epsilon} is out of reach even with noise multiplier {hi}")
    if epsilon(lo, sample_rate, steps, delta, accountant) <= target_epsilon:
        return lo
    while hi / lo > 1 + 1e-5:
        mid = (lo * hi) ** 0.5
        if epsilon(mid, sample_rate, steps, delta, accountant) <= target_epsilon:
            hi = mid
        else:
            lo = mid
    return hi


def rho_for_epsilon(epsilon: float, delta: float) -> float:
    """The largest zCDP rho with ``rho + 2 sqrt(rho ln(1/delta)) <= epsilon``."""
    log_term = math.log(1 / delta)
    return (math.sqrt(log_term + epsilon) - math.sqrt(log_term)) ** 2


def epsilon_for_rho(rho: float, delta: float) -> float:
    """``rho + 2 sqrt(rho ln(1/delta))`` (Bun and Steinke 2016, Prop. 1.3)."""
    return rho + 2 * math.sqrt(rho * math.log(1 / delta))
