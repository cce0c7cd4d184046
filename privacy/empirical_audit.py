"""Empirical check that DP is not broken: the one-run canary audit of Steinke, Nasr and
Jagielski (2023), "Privacy auditing with one (1) training run".

Recipe: make ``m`` canaries (unique, out-of-distribution examples with random labels); flip a
fair coin per canary (the secret bit) and add the canaries whose coin is heads to the training
data; train once with the real pipeline; score every canary by how much the training moved
the model towards its label (change of the signed logit margin from the initial model); guess
"included" for the ``k_plus`` highest scores and "excluded" for the ``k_minus`` lowest, abstain
on the rest. If training is epsilon-DP, each guess is right with probability at most
``p = e^eps / (1 + e^eps)``, so the number of correct guesses ``v`` out of ``r`` is
stochastically dominated by ``Binomial(r, p)`` (their Theorem 3.1). The epsilon lower bound at
confidence ``1 - beta`` is the largest ``eps`` that this observation rejects:
``P[Binomial(r, p_eps) >= v] <= beta``.

Limits: with ``r`` guesses the bound cannot exceed about ``ln((1 - beta^(1/r)) ... )`` (4.2 for
200 guesses at 95%), so the audit catches large violations, not an epsilon-8 claim; the
``delta`` term of the theorem (``<= r * delta``-scale) is left out, which can only raise the
bound, i.e. make the audit stricter. Written by hand: no maintained library implements it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats


def epsilon_lower_bound(correct: int, guesses: int, confidence: float = 0.95) -> float:
    """Largest epsilon rejected at ``confidence`` given ``correct`` right guesses out of ``guesses``.

    0 when the guesses are no better than coin flips at that confidence.
    """
    if guesses <= 0 or correct <= 0:
        return 0.0
    beta = 1 - confidence

    def p_value(eps: float) -> float:
        p = 1 / (1 + math.exp(-eps))
        return float(stats.binom.sf(correct - 1, guesses, p))  # P[Bin >= correct]

    if p_value(0.0) > beta:
        return 0.0
    lo, hi = 0.0, 50.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if p_value(mid) <= beta:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass
class Canaries:
    """Canary inputs, their labels and the secret inclusion bits."""

    inputs: np.ndarray   # [m, d], standardised feature space
    labels: np.ndarray   # [m] in {0, 1}
    included: np.ndarray  # [m] bool, the secret bits


def make_canaries(m: int, d: int, radius: float = 6.0, seed: int = 0) -> Canaries:
    """``m`` random directions at distance ``radius`` (far outside the data), random labels,
    each included with probability 1/2 (seeded, so the auditor can replay the secret)."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(m, d))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return Canaries(inputs=radius * directions, labels=rng.integers(0, 2, m).astype(np.float32),
                    included=rng.random(m) < 0.5)


def canary_scores(logits_before: np.ndarray, logits_after: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """How far training moved each canary's logit towards its own label."""
    sign = 2 * np.asarray(labels) - 1
    return (np.asarray(logits_after) - np.asarray(logits_before)) * sign


@dataclass
class AuditResult:
    """Outcome of one audit."""

    guesses: int
    correct: int
    epsilon_lower_bound: float
    confidence: float
    canaries: int


def audit(scores: np.ndarray, included: np.ndarray, k_plus: int = 100, k_minus: int = 100,
          confidence: float = 0.95) -> AuditResult:
    """Guess from the scores and bound epsilon (see the module doc)."""
    order = np.argsort(scores)
    guess_in, guess_out = order[::-1][:k_plus], order[:k_minus]
    correct = int(included[guess_in].sum() + (~included[guess_out]).sum())
    guesses = k_plus + k_minus
    return AuditResult(guesses=guesses, correct=correct, canaries=len(scores), confidence=confidence,
                       epsilon_lower_bound=epsilon_lower_bound(correct, guesses, confidence))


def run_canary_audit(train_fn: Callable[[Canaries], tuple[Callable[[np.ndarray], np.ndarray],
                                                             Callable[[np.ndarray], np.ndarray]]],
                     m: int, d: int, seed: int = 0, k: int = 100, confidence: float = 0.95) -> AuditResult:
    """Run the whole audit: ``train_fn(canaries)`` trains with the included canaries added and
    returns (logits of the initial model, logits of the trained model) as functions of inputs."""
    canaries = make_canaries(m, d, seed=seed)
    before, after = train_fn(canaries)
    scores = canary_scores(before(canaries.inputs), after(canaries.inputs), canaries.labels)
    return audit(scores, canaries.included, k, k, confidence)
