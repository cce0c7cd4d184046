"""Partitions put every user in exactly one unit; Dirichlet skew is real; nothing is dropped."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulations.partition import (
    PartitionError,
    column_partition,
    dirichlet_partition,
    iid_partition,
    split_events,
)


@given(n_users=st.integers(5, 400), n_units=st.integers(1, 5), seed=st.integers(0, 10))
@settings(max_examples=40, deadline=None)
def test_iid_puts_every_user_in_one_unit_with_balanced_sizes(n_users, n_units, seed):
    users = [f"u{i}" for i in range(n_users)]
    mapping = iid_partition(users, n_units, seed)
    assert sorted(mapping.index) == sorted(users)
    sizes = np.bincount(mapping.to_numpy(), minlength=n_units)
    assert sizes.max() - sizes.min() <= 1


def test_dirichlet_small_alpha_skews_labels_and_sizes_large_alpha_does_not():
    rng = np.random.default_rng(0)
    users = np.array([f"u{i}" for i in range(20_000)], dtype=object)
    labels = rng.integers(0, 4, len(users))

    def label_spread(alpha: float) -> float:
        mapping = dirichlet_partition(users, labels, 5, alpha=alpha, seed=1)
        shares = pd.crosstab(mapping.to_numpy(), labels, normalize="index").to_numpy()
        return float(np.abs(shares - 0.25).max())

    assert label_spread(0.1) > 0.4       # some unit is dominated by one label
    assert label_spread(100.0) < 0.05    # close to the global mix
    mapping = dirichlet_partition(users, labels, 5, alpha=0.1, seed=1)
    assert len(mapping) == len(users) and mapping.index.is_unique


def test_dirichlet_refuses_when_units_would_be_empty():
    users = np.array([f"u{i}" for i in range(30)], dtype=object)
    with pytest.raises(PartitionError, match="raise alpha"):
        dirichlet_partition(users, np.zeros(30, dtype=int), 10, alpha=0.01, min_users_per_unit=5, max_tries=5)


def test_column_partition_and_split_keep_every_event():
    events = pd.DataFrame({"user_id": ["a", "a", "b", "c", "c", "c"], "unit_id": ["x", "x", "y", "x", "x", "x"],
                           "amount": range(6)})
    mapping = column_partition(events)
    parts = split_events(events, mapping)
    assert sum(len(p) for p in parts) == len(events)
    assert {tuple(sorted(p["user_id"].unique())) for p in parts} == {("a", "c"), ("b",)}
    shared = pd.DataFrame({"user_id": ["a", "a"], "unit_id": ["x", "y"]})
    with pytest.raises(PartitionError, match="belong to several units"):
        column_partition(shared)
    with pytest.raises(PartitionError, match="has events but no unit"):
        split_events(events, mapping.drop("b"))
