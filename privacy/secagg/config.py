"""Validated secure-aggregation settings."""

from __future__ import annotations

import hashlib
import json
import math

from pydantic import BaseModel, Field, model_validator

from fedseg.errors import FedsegError


class SecAggError(FedsegError):
    """The protocol cannot go on (too few units, a forged or replayed message, ...): the round is
    abandoned; one line for the person running it (exit 1)."""

    exit_code = 1


class SecAggConfig(BaseModel):
    """Settings of one secure-aggregation round.

    ``clip_range`` R bounds every coordinate of an update to [-R, R] (client-side clipping);
    ``modulus_bits`` b is the ring Z_(2^b) of masked values; each coordinate is quantised to
    ``q = min(b - ceil(log2(n)), 52)`` bits so the sum of n units never wraps (52: levels stay
    exact in float64). Decoding error per coordinate of the sum is at most
    ``n * R * (1 / (2^q - 1) + 2^-48)`` (grid rounding plus float64 rounding). ``l2_clip`` C > 0
    makes every unit L2-clip its update to C before quantising (client-level DP).

    A unit pins these settings when it advertises its keys for a round: the hash of their
    canonical form (:meth:`settings_hash`) is inside its signed advertisement, every unit checks
    at share that all advertisements carry its own hash, and a stage sent with other settings is
    refused.
    """

    threshold: float = Field(0.6, gt=0, description="Reconstruction threshold t: a count (>= 2), or a "
                             "fraction of the units (< 1).")
    degree: int | None = Field(None, ge=2, description="Neighbours per unit in the masking graph; default "
                               "min(n - 1, 2 * ceil(log2 n)), rounded up to even.")
    clip_range: float = Field(1.0, gt=0, description="Every update coordinate is clipped to [-R, R].")
    modulus_bits: int = Field(48, ge=24, le=62, description="Masked values live in Z_(2^bits).")
    l2_clip: float = Field(0.0, ge=0, description="Units L2-clip their update to this norm first (0: no clip).")
    min_survivors: int = Field(0, ge=0, description="Every unit refuses to sign or unmask a survivor set U3 of "
                               "fewer units (0: the threshold and the unit's own floors only). Distributed DP noise "
                               "is sized for it: any sum the coordinator can decode holds at least this many shares.")

    @model_validator(mode="after")
    def _threshold_shape(self) -> "SecAggConfig":
        if self.threshold >= 1 and self.threshold != int(self.threshold):
            raise ValueError("threshold must be a whole count (>= 2) or a fraction below 1")
        if self.threshold >= 1 and self.threshold < 2:
            raise ValueError("threshold must be at least 2 units")
        return self

    def canonical(self) -> str:
        """The settings as canonical JSON (sorted keys, no spaces): what :meth:`settings_hash` hashes.
        ``min_survivors`` 0 is left out, so rounds without it keep their earlier hash."""
        settings = self.model_dump(mode="json")
        if not settings["min_survivors"]:
            del settings["min_survivors"]
        return json.dumps(settings, sort_keys=True, separators=(",", ":"))

    def settings_hash(self) -> bytes:
        """SHA-256 of the canonical settings, inside every signed advertisement."""
        return hashlib.sha256(b"fedseg-secagg-settings|" + self.canonical().encode()).digest()

    def degree_for(self, n: int) -> int:
        if n < 3:
            raise SecAggError(f"secure aggregation needs at least 3 units, got {n}: with 2, each unit could "
                              "subtract its own update from the sum and read the other's")
        k = self.degree or 2 * math.ceil(math.log2(n))
        k += k % 2  # a circulant graph: k/2 neighbours on each side of the ring
        return min(k, n - 1)  # n - 1: everybody is a neighbour

    def threshold_for(self, n: int) -> int:
        """t for n units; refuses configurations that cannot be reconstructed or hide nothing.

        t must be a strict majority of each unit's k + 1 share holders: every honest holder
        reveals at most one of a unit's two shares (``b`` or ``s``) per round, so a coordinator
        collecting t of each would need 2t <= k + 1 holders (docs/secure-aggregation.md)."""
        degree = self.degree_for(n)
        t = int(self.threshold) if self.threshold >= 1 else math.ceil(self.threshold * (degree + 1))
        if t < 2:
            t = 2
        if t > n:
            raise SecAggError(f"threshold {t} exceeds the {n} units; lower the threshold or add units")
        if t > degree + 1:
            raise SecAggError(f"threshold {t} exceeds the {degree + 1} holders of each unit's shares "
                              f"({n} units, degree {degree}); lower the threshold or add units")
        if 2 * t <= degree + 1:
            raise SecAggError(f"threshold {t} is not a majority of the {degree + 1} holders of each unit's shares "
                              f"({n} units, degree {degree}): a deviating coordinator could collect both shares "
                              f"of one unit; use at least {(degree + 1) // 2 + 1}")
        return t

    def survivors_for(self, n: int) -> int:
        """The fewest units in any survivor set U3 that honest units sign for n advertisers: the
        threshold, :attr:`min_survivors` and 3 (a unit's own ``secagg-min-units`` may add to this).
        Refuses a floor above n: no round could complete."""
        floor = max(3, self.threshold_for(n), self.min_survivors)
        if floor > n:
            raise SecAggError(f"the round asks for at least {floor} surviving units but only {n} advertised keys")
        return floor

    def quant_bits(self, n: int) -> int:
        from privacy.secagg.quantize import MAX_QUANT_BITS

        q = self.modulus_bits - math.ceil(math.log2(max(n, 2)))
        if q < 16:
            raise SecAggError(f"{self.modulus_bits}-bit ring leaves {q} bits per value for {n} units; raise modulus_bits")
        return min(q, MAX_QUANT_BITS)
