"""Floats to the ring Z_(2^b) and back.

``encode(x) = round((clip(x, -R, R) + R) / (2R) * L)`` with ``L = 2^q - 1``; a sum of n
encodings decodes as ``sum * 2R / L - n R``. Each rounding is off by at most half a step, so
the decoded sum of n units is within ``n * R / L`` of the sum of the clipped values.
"""

from __future__ import annotations

import numpy as np


def levels(q_bits: int) -> int:
    return (1 << q_bits) - 1


def encode(x: np.ndarray, clip_range: float, q_bits: int) -> np.ndarray:
    """Quantise to integers in [0, 2^q - 1] (uint64)."""
    scaled = np.clip(np.asarray(x, dtype=np.float64), -clip_range, clip_range)  # a new array
    scaled += clip_range  # in place, in the order of the formula above
    scaled /= 2 * clip_range
    scaled *= levels(q_bits)
    np.rint(scaled, out=scaled)
    return scaled.astype(np.uint64)


def decode_sum(total: np.ndarray, n: int, clip_range: float, q_bits: int) -> np.ndarray:
    """The float sum of n encoded vectors from their integer sum (taken mod 2^b, no wrap)."""
    return np.asarray(total, dtype=np.float64) * (2 * clip_range) / levels(q_bits) - n * clip_range


def error_bound(n: int, clip_range: float, q_bits: int) -> float:
    """Largest |decoded sum - true clipped sum| per coordinate."""
    return n * clip_range / levels(q_bits)
