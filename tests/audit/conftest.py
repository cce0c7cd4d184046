"""Small real datasets for the audit tests (generated, written to real files)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest


def scored_frame(n: int = 6000, seed: int = 0) -> pd.DataFrame:
    """Predictions with group-dependent base rates and score shifts; a tiny group 'd'."""
    rng = np.random.default_rng(seed)
    g = rng.choice(["a", "b", "c"], n, p=[0.5, 0.3, 0.2])
    g[:12] = "d"
    region = rng.choice(["north", "south"], n)
    y = (rng.random(n) < np.where(g == "a", 0.3, 0.45)).astype(int)
    s = np.clip(rng.normal(0.3 + 0.3 * y + 0.08 * (g == "b"), 0.2), 0, 1)
    return pd.DataFrame({"gender": g, "region": region, "churned": y, "score": s,
                         "offer": rng.choice(["none", "coupon", "upgrade"], n, p=[0.6, 0.3, 0.1])})


@pytest.fixture
def scored() -> pd.DataFrame:
    return scored_frame()
