"""Partitioning: every user in exactly one unit, no event dropped, skew as asked, clear errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulations.generator import GeneratorConfig, generate
from simulations.partition import (
    PartitionError,
    column_partition,
    dirichlet_partition,
    iid_partition,
    split_events,
)


@st.composite
def event_frames(draw):
    n_users = draw(st.integers(1, 40))
    users = [f"u{i}" for i in range(n_users)]
    n_events = draw(st.integers(0, 200))
    picks = draw(st.lists(st.integers(0, n_users - 1), min_size=n_events, max_size=n_events))
    return users, pd.DataFrame({"user_id": pd.Series([users[i] for i in picks], dtype=object),
                                "seq": np.arange(n_events)})


def _check_split(events: pd.DataFrame, mapping: pd.Series, n_units: int | None = None) -> list[pd.DataFrame]:
    parts = split_events(events, mapping, n_units)
    assert sum(len(p) for p in parts) == len(events)
    for k, part in enumerate(parts):
        assert (part["user_id"].map(mapping) == k).all()
        assert part["seq"].is_monotonic_increasing  # input order kept within a unit
    seen = [set(p["user_id"]) for p in parts]
    for i in range(len(seen)):
        for j in range(i + 1, len(seen)):
            assert not seen[i] & seen[j]
    return parts


@given(frame=event_frames(), n_units=st.integers(1, 6), seed=st.integers(0, 1000))
@settings(max_examples=60, deadline=None)
def test_iid_split_keeps_every_event_and_user_once(frame, n_units, seed):
    users, events = frame
    if n_units > len(users):
        with pytest.raises(PartitionError, match="cannot split"):
            iid_partition(users, n_units, seed)
        return
    mapping = iid_partition(users, n_units, seed)
    assert mapping.index.is_unique and sorted(mapping.index) == sorted(users)
    sizes = np.bincount(mapping.to_numpy(), minlength=n_units)
    assert sizes.max() - sizes.min() <= 1
    parts = _check_split(events, mapping, n_units)
    assert len(parts) == n_units
    pd.testing.assert_series_equal(mapping, iid_partition(users, n_units, seed))


@given(n_users=st.integers(60, 600), n_classes=st.integers(1, 5), n_units=st.integers(2, 5),
       alpha=st.sampled_from([0.1, 0.5, 1.0, 10.0]), seed=st.integers(0, 100))
@settings(max_examples=40, deadline=None)
def test_dirichlet_gives_every_unit_its_minimum_or_says_why(n_users, n_classes, n_units, alpha, seed):
    users = np.array([f"u{i}" for i in range(n_users)], dtype=object)
    labels = np.random.default_rng(seed).integers(0, n_classes, n_users)
    try:
        mapping = dirichlet_partition(users, labels, n_units, alpha=alpha, seed=seed, min_users_per_unit=5,
                                      max_tries=20)
    except PartitionError as err:
        assert "raise alpha" in str(err)
        return
    assert mapping.index.is_unique and len(mapping) == n_users
    assert np.bincount(mapping.to_numpy(), minlength=n_units).min() >= 5
    events = pd.DataFrame({"user_id": pd.Series(np.repeat(users, 2), dtype=object), "seq": np.arange(2 * n_users)})
    _check_split(events, mapping, n_units)


def test_dirichlet_skew_strong_at_small_alpha():
    rng = np.random.default_rng(0)
    users = np.array([f"u{i}" for i in range(10_000)], dtype=object)
    labels = rng.integers(0, 4, len(users))

    def spread(alpha: float) -> tuple[float, float]:
        mapping = dirichlet_partition(users, labels, 5, alpha=alpha, seed=3)
        shares = pd.crosstab(mapping.to_numpy(), labels, normalize="index").to_numpy()
        sizes = np.bincount(mapping.to_numpy(), minlength=5)
        return float(np.abs(shares - 0.25).max()), float(sizes.max() / sizes.min())

    label_skew, size_ratio = spread(0.1)
    assert label_skew > 0.4 and size_ratio > 2
    label_skew, size_ratio = spread(1000.0)
    assert label_skew < 0.05 and size_ratio < 1.2


def test_dirichlet_refusals_are_clear():
    users = np.array([f"u{i}" for i in range(30)], dtype=object)
    with pytest.raises(PartitionError, match="raise alpha"):
        dirichlet_partition(users, np.zeros(30, dtype=int), 10, alpha=0.05, min_users_per_unit=5, max_tries=5)
    with pytest.raises(PartitionError, match="unique"):
        dirichlet_partition(np.array(["a", "a"], dtype=object), np.array([0, 1]), 1, alpha=1.0, min_users_per_unit=0)
    with pytest.raises(PartitionError, match="differ in length"):
        dirichlet_partition(users, np.zeros(3), 2, alpha=1.0)
    with pytest.raises(PartitionError, match="alpha must be positive"):
        dirichlet_partition(users, np.zeros(30), 2, alpha=0.0)


def test_column_partition_keeps_numeric_unit_order_and_refuses_shared_users():
    events = pd.DataFrame({"user_id": ["a", "b", "c", "c", "d"], "unit_id": [10, 2, 2, 2, 0], "seq": range(5)})
    mapping = column_partition(events)
    assert mapping.to_dict() == {"a": 2, "b": 1, "c": 1, "d": 0}  # 0 < 2 < 10, not "10" < "2"
    parts = _check_split(events, mapping)
    assert [sorted(set(p["user_id"])) for p in parts] == [["d"], ["b", "c"], ["a"]]
    with pytest.raises(PartitionError, match="belong to several units"):
        column_partition(pd.DataFrame({"user_id": ["a", "a"], "unit_id": [1, 2]}))
    with pytest.raises(PartitionError, match="no column"):
        column_partition(events, "region")


def test_split_refuses_users_without_a_unit_and_pads_empty_units():
    events = pd.DataFrame({"user_id": ["a", "b"], "seq": [0, 1]})
    with pytest.raises(PartitionError, match="has events but no unit"):
        split_events(events, pd.Series({"a": 0}))
    parts = split_events(events, pd.Series({"a": 0, "b": 0}), n_units=3)
    assert [len(p) for p in parts] == [2, 0, 0]
    with pytest.raises(PartitionError, match="must lie in"):
        split_events(events, pd.Series({"a": 0, "b": 4}), n_units=3)


def test_generator_units_survive_column_partition():
    data = generate(GeneratorConfig(n_users=3000, n_units=12, seed=4, unit_size_alpha=1.0))
    mapping = column_partition(data.events, "unit_id")
    parts = split_events(data.events, mapping, n_units=12)
    assert sum(len(p) for p in parts) == len(data.events)
    for k, part in enumerate(parts):
        assert (part["unit_id"] == k).all()  # unit index k is the generator's unit k
