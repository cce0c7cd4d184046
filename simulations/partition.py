"""Spreading users over simulated units: IID, Dirichlet label skew, or the data's own column.

Every function returns a ``pandas.Series`` mapping ``user_id`` to a unit index 0..K-1; every
user is in exactly one unit, so splitting events by it loses nothing (:func:`split_events`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd


class PartitionError(ValueError):
    """The requested partition cannot be made; the message says why and what to change."""


def iid_partition(user_ids: pd.Series | np.ndarray, n_units: int, seed: int = 0) -> pd.Series:
    """Users shuffled and dealt round-robin: unit sizes differ by at most one."""
    users = pd.unique(np.asarray(user_ids, dtype=object))
    if n_units < 1 or n_units > len(users):
        raise PartitionError(f"cannot split {len(users)} users over {n_units} units")
    order = np.random.default_rng(seed).permutation(len(users))
    units = np.empty(len(users), dtype=np.int64)
    units[order] = np.arange(len(users)) % n_units
    return pd.Series(units, index=pd.Index(users, name="user_id"), name="unit")


def dirichlet_partition(
    user_ids: pd.Series | np.ndarray,
    labels: np.ndarray,
    n_units: int,
    alpha: float,
    seed: int = 0,
    min_users_per_unit: int = 10,
    max_tries: int = 100,
) -> pd.Series:
    """Label skew: for each class, the shares of its users over units ~ Dirichlet(alpha).

    Small ``alpha`` (0.1) gives units dominated by few classes and very different sizes; large
    ``alpha`` (100) is close to IID. Draws are repeated (up to ``max_tries``) until every unit has
    at least ``min_users_per_unit`` users; otherwise a clear error says to raise alpha or lower
    the number of units.
    """
    users = np.asarray(user_ids, dtype=object)
    labels = np.asarray(labels)
    if len(users) != len(labels):
        raise PartitionError("user_ids and labels differ in length")
    if not pd.Index(users).is_unique:
        raise PartitionError("user_ids must be unique (one label per user)")
    if n_units < 1:
        raise PartitionError(f"n_units must be at least 1, got {n_units}")
    if alpha <= 0:
        raise PartitionError(f"alpha must be positive, got {alpha}")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(max_tries):
        units = np.empty(len(users), dtype=np.int64)
        for c in classes:
            members = np.flatnonzero(labels == c)
            rng.shuffle(members)
            shares = rng.dirichlet(np.full(n_units, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(np.int64)
            for unit, part in enumerate(np.split(members, cuts)):
                units[part] = unit
        sizes = np.bincount(units, minlength=n_units)
        if sizes.min() >= min_users_per_unit:
            return pd.Series(units, index=pd.Index(users, name="user_id"), name="unit")
    raise PartitionError(
        f"after {max_tries} Dirichlet({alpha}) draws some unit still had fewer than {min_users_per_unit} "
        f"users (smallest {sizes.min()}); raise alpha, lower the number of units, or lower the minimum"
    )


def column_partition(frame: pd.DataFrame, column: str = "unit_id") -> pd.Series:
    """Units as the data defines them: each distinct value of ``column`` is a unit.

    A user appearing under several values is an error (a person shared by units would need a
    home-unit policy; see docs/privacy.md), reported with an example.
    """
    if column not in frame.columns:
        raise PartitionError(f"no column {column!r} to partition by")
    pairs = frame[["user_id", column]].drop_duplicates()
    shared = pairs["user_id"].duplicated(keep=False)
    if shared.any():
        example = pairs.loc[shared, "user_id"].iloc[0]
        raise PartitionError(f"{int(shared.sum())} user rows belong to several units (e.g. user {example!r}); "
                             "give every user one home unit")
    values = pairs[column]
    try:
        codes, _ = pd.factorize(values, sort=True)  # numeric units keep numeric order (2 < 10)
    except TypeError:  # mixed types that do not compare
        codes, _ = pd.factorize(values.astype(str), sort=True)
    return pd.Series(codes.astype(np.int64), index=pd.Index(pairs["user_id"].to_numpy(), name="user_id"), name="unit")


def split_events(events: pd.DataFrame, unit_of_user: pd.Series, n_units: int | None = None) -> list[pd.DataFrame]:
    """Per-unit event frames, unit 0..K-1 (``K = n_units`` or the largest unit index + 1).

    Every event goes to its user's unit, in the input order within a unit; raises if any
    event's user has no unit, so nothing is dropped (``sum(len(f)) == len(events)``).
    One stable sort of the unit codes, then slices: O(N log N), not one scan per unit.
    """
    unit = events["user_id"].map(unit_of_user)
    if unit.isna().any():
        missing = events.loc[unit.isna(), "user_id"].iloc[0]
        raise PartitionError(f"user {missing!r} has events but no unit")
    unit = unit.astype(np.int64).to_numpy()
    k = int(unit_of_user.max()) + 1 if n_units is None else n_units
    if len(unit) and (unit.min() < 0 or unit.max() >= k):
        raise PartitionError(f"unit indices must lie in 0..{k - 1}")
    order = np.argsort(unit, kind="stable")
    bounds = np.searchsorted(unit[order], np.arange(k + 1))
    return [events.iloc[order[bounds[i]:bounds[i + 1]]].reset_index(drop=True) for i in range(k)]
