"""Floats to the ring Z_(2^b) and back.

``encode(x) = round((clip(x, -R, R) + R) / (2R) * L)`` with ``L = 2^q - 1``; a sum of n
encodings decodes as ``sum * 2R / L - n R``. Each rounding is off by at most half a step, so
the decoded sum of n units is within ``n * R / L`` of the sum of the clipped values, plus the
float64 rounding of the arithmetic itself, at most ``n * R * 2^-48`` (the operations add up to
about 14 unit roundoffs, 2^-53, of ``n R``; 2^-48 is 32 of them). The second term is a quarter
of the first at q = 46, equal at q = 48 and dominant above.

``q`` is at most :data:`MAX_QUANT_BITS` = 52: then ``L`` and every level are exact float64
integers and ``encode`` never exceeds ``L`` (so n encodings never wrap mod 2^b). With larger q,
``float(2^q - 1)`` rounds up to ``2^q`` and a sum of values at the clip edge could wrap to 0.
"""

from __future__ import annotations

import numpy as np


MAX_QUANT_BITS = 52  # levels must be exact float64 integers (53-bit significand)


def levels(q_bits: int) -> int:
    return (1 << q_bits) - 1


def encode(x: np.ndarray, clip_range: float, q_bits: int) -> np.ndarray:
    """Quantise to integers in [0, 2^q - 1] (uint64); refuses NaN, which would otherwise cast to
    an arbitrary integer and silently corrupt the sum (infinities are clipped like any value)."""
    if not 1 <= q_bits <= MAX_QUANT_BITS:
        raise ValueError(f"q_bits must be in 1..{MAX_QUANT_BITS}, got {q_bits}")
    scaled = np.clip(np.asarray(x, dtype=np.float64), -clip_range, clip_range)  # a new array
    if np.isnan(scaled).any():
        raise ValueError("the update holds NaN; it cannot be quantised")
    scaled += clip_range  # in place, in the order of the formula above
    scaled /= 2 * clip_range
    scaled *= levels(q_bits)
    np.rint(scaled, out=scaled)
    return scaled.astype(np.uint64)


def decode_sum(total: np.ndarray, n: int, clip_range: float, q_bits: int) -> np.ndarray:
    """The float sum of n encoded vectors from their integer sum (taken mod 2^b, no wrap)."""
    return np.asarray(total, dtype=np.float64) * (2 * clip_range) / levels(q_bits) - n * clip_range


def error_bound(n: int, clip_range: float, q_bits: int) -> float:
    """Largest |decoded sum - true clipped sum| per coordinate: rounding to the grid plus float64."""
    return n * clip_range * (1.0 / levels(q_bits) + 2.0 ** -48)
