"""Validated secure-aggregation settings."""

from __future__ import annotations

import math

from pydantic import BaseModel, Field, model_validator


class SecAggError(RuntimeError):
    """The protocol cannot go on (too few units, a forged or replayed message, ...)."""


class SecAggConfig(BaseModel):
    """Settings of one secure-aggregation round.

    ``clip_range`` R bounds every coordinate of an update to [-R, R] (client-side clipping);
    ``modulus_bits`` b is the ring Z_(2^b) of masked values; each coordinate is quantised to
    ``q = min(b - ceil(log2(n)), 52)`` bits so the sum of n units never wraps (52: levels stay
    exact in float64). Decoding error per coordinate of the sum is at most
    ``n * R * (1 / (2^q - 1) + 2^-48)`` (grid rounding plus float64 rounding).
    """

    threshold: float = Field(0.6, gt=0, description="Reconstruction threshold t: a count (>= 2), or a "
                             "fraction of the units (< 1).")
    degree: int | None = Field(None, ge=2, description="Neighbours per unit in the masking graph; default "
                               "min(n - 1, 2 * ceil(log2 n)), rounded up to even.")
    clip_range: float = Field(1.0, gt=0, description="Every update coordinate is clipped to [-R, R].")
    modulus_bits: int = Field(48, ge=24, le=62, description="Masked values live in Z_(2^bits).")

    @model_validator(mode="after")
    def _threshold_shape(self) -> "SecAggConfig":
        if self.threshold >= 1 and self.threshold != int(self.threshold):
            raise ValueError("threshold must be a whole count (>= 2) or a fraction below 1")
        if self.threshold >= 1 and self.threshold < 2:
            raise ValueError("threshold must be at least 2 units")
        return self

    def degree_for(self, n: int) -> int:
        if n < 3:
            raise SecAggError(f"secure aggregation needs at least 3 units, got {n}: with 2, each unit could "
                              "subtract its own update from the sum and read the other's")
        k = self.degree or 2 * math.ceil(math.log2(n))
        k += k % 2  # a circulant graph: k/2 neighbours on each side of the ring
        return min(k, n - 1)  # n - 1: everybody is a neighbour

    def threshold_for(self, n: int) -> int:
        """t for n units; refuses configurations that cannot be reconstructed or hide nothing."""
        degree = self.degree_for(n)
        t = int(self.threshold) if self.threshold >= 1 else math.ceil(self.threshold * (degree + 1))
        if t < 2:
            t = 2
        if t > n:
            raise SecAggError(f"threshold {t} exceeds the {n} units; lower the threshold or add units")
        if t > degree + 1:
            raise SecAggError(f"threshold {t} exceeds the {degree + 1} holders of each unit's shares "
                              f"({n} units, degree {degree}); lower the threshold or add units")
        return t

    def quant_bits(self, n: int) -> int:
        from privacy.secagg.quantize import MAX_QUANT_BITS

        q = self.modulus_bits - math.ceil(math.log2(max(n, 2)))
        if q < 16:
            raise SecAggError(f"{self.modulus_bits}-bit ring leaves {q} bits per value for {n} units; raise modulus_bits")
        return min(q, MAX_QUANT_BITS)
