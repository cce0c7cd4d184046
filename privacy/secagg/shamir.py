"""Shamir secret sharing over GF(p), p = 2^521 - 1 (a Mersenne prime, so any 64-byte secret fits).

Written by hand: no maintained Python library offers it over a large prime field with the
interface the protocol needs; it is small and property-tested (tests/privacy/secagg).
"""

from __future__ import annotations

import secrets

PRIME = (1 << 521) - 1


def split(secret: int, holders: list[int], threshold: int) -> dict[int, int]:
    """Shares ``f(x)`` for each holder id x (ids >= 1), f random of degree threshold-1, f(0)=secret."""
    if not 0 <= secret < PRIME:
        raise ValueError("secret out of the field")
    if threshold < 1 or threshold > len(holders):
        raise ValueError(f"threshold {threshold} with {len(holders)} holders")
    if len(set(holders)) != len(holders) or min(holders) < 1:
        raise ValueError("holder ids must be distinct and >= 1")
    coefficients = [secret] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares = {}
    for x in holders:
        y = 0
        for c in reversed(coefficients):
            y = (y * x + c) % PRIME
        shares[x] = y
    return shares


def reconstruct(shares: dict[int, int]) -> int:
    """f(0) by Lagrange interpolation from any ``threshold`` shares (more are fine)."""
    if not shares:
        raise ValueError("no shares")
    total = 0
    xs = list(shares)
    for i in xs:
        num, den = 1, 1
        for j in xs:
            if j != i:
                num = (num * -j) % PRIME
                den = (den * (i - j)) % PRIME
        total = (total + shares[i] * num * pow(den, -1, PRIME)) % PRIME
    return total
