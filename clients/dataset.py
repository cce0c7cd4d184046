"""A unit's training data: transformed features, event sequences, labels and its test split.

Static inputs are ``log1p`` of the non-negative features (counts, days and money are heavy
tailed) and ``trend`` as it is; they are then standardised with the *global* mean and
standard deviation agreed through the federation (:func:`feature_moments` gives a unit's
share: count, sums and sums of squares; never rows).

The test split is a fixed 20% of users chosen by a salted hash of ``user_id`` (``hash % 5 == 0``),
independent of how users are spread over units, so federated, centralised and baseline
models are all scored on the same users.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from clients.features import DAY_NS, build_features
from fedseg.config import MODEL_FEATURES, FeatureConfig
from fedseg.scaling import FEATURE_CAPS
from fedseg.sequences import DEFAULT_SEQ_LEN, SEQ_EVENT_TYPES, SEQ_NUMERIC

#: Features used as they are; every other model feature is non-negative and gets log1p.
UNLOGGED = ("trend",)
TEST_FRACTION_MODULUS = 5


def transform_static(features: pd.DataFrame) -> np.ndarray:
    """``[n_users, len(MODEL_FEATURES)]`` float64: log1p of non-negative features, trend as is."""
    columns = []
    for name in MODEL_FEATURES:
        values = features[name].to_numpy(dtype=np.float64)
        columns.append(values if name in UNLOGGED else np.log1p(np.maximum(values, 0.0)))
    return np.stack(columns, axis=1)


#: Salt of the test-split hash, so the split is independent of any hash-based partition.
TEST_SPLIT_SALT = "fedseg-test-split:"


def is_test_user(user_ids: pd.Series) -> np.ndarray:
    """Deterministic 20% test split by a salted hash of the user id (same in every process)."""
    salted = TEST_SPLIT_SALT + pd.Series(user_ids, dtype=object).astype(str)
    hashed = pd.util.hash_pandas_object(salted, index=False)
    return (hashed.to_numpy() % TEST_FRACTION_MODULUS) == 0


def build_sequences(
    events: pd.DataFrame, user_ids: pd.Series, t_ref_ns: int, seq_len: int = DEFAULT_SEQ_LEN
) -> tuple[np.ndarray, np.ndarray]:
    """Each user's last ``seq_len`` history events, left-padded.

    Returns ``types`` (``int64 [n, L]``; 0 padding, 1.. known types, last index other) and
    ``values`` (``float32 [n, L, 3]``): ``log1p(gap to the previous event, days) / 5``,
    ``log1p(amount) / 5``, ``log1p(days before t_ref) / 6`` (fixed scales, so no statistics
    are needed for them).
    """
    n = len(user_ids)
    types = np.zeros((n, seq_len), dtype=np.int64)
    values = np.zeros((n, seq_len, SEQ_NUMERIC), dtype=np.float32)
    ts = events["ts"].to_numpy(dtype="datetime64[ns]").astype(np.int64)
    hist = ts < t_ref_ns
    row = pd.Index(user_ids).get_indexer(events["user_id"].to_numpy()[hist])
    keep = row >= 0
    row = row[keep]
    ts_h = ts[hist][keep]
    if len(row) == 0:
        return types, values
    order = np.lexsort((ts_h, row))
    row, ts_h = row[order], ts_h[order]
    amount = events["amount"].to_numpy(dtype=np.float64)[hist][keep][order]
    etype = events["event_type"].to_numpy()[hist][keep][order]
    vocab = {name: i + 1 for i, name in enumerate(SEQ_EVENT_TYPES)}
    other = len(SEQ_EVENT_TYPES) + 1
    code = pd.Series(etype).map(vocab).fillna(other).to_numpy(dtype=np.int64)
    same_user = np.r_[False, row[1:] == row[:-1]]
    gap_days = np.where(same_user, np.diff(ts_h, prepend=ts_h[:1]) / DAY_NS, 0.0)
    # rank from the end within each user: 0 = most recent
    counts = np.bincount(row, minlength=n)
    ends = np.cumsum(counts)
    rank_from_end = ends[row] - 1 - np.arange(len(row))
    take = rank_from_end < seq_len
    col = seq_len - 1 - rank_from_end[take]
    r = row[take]
    types[r, col] = code[take]
    values[r, col, 0] = np.log1p(gap_days[take]) / 5.0
    values[r, col, 1] = np.log1p(np.maximum(amount[take], 0.0)) / 5.0
    values[r, col, 2] = np.log1p((t_ref_ns - ts_h[take]) / DAY_NS) / 6.0
    return types, values


@dataclass
class UnitData:
    """Everything a unit trains and evaluates on (stays on the unit)."""

    user_ids: np.ndarray
    static: np.ndarray          # transformed, not yet standardised, float64 [n, d]
    labels: np.ndarray          # float32 [n], 1 = churned
    test_mask: np.ndarray       # bool [n]
    spend: np.ndarray | None = None  # float64 [n], spend in the label window (the CLV label), currency units
    seq_types: np.ndarray | None = None
    seq_values: np.ndarray | None = None

    @property
    def n_train(self) -> int:
        return int((~self.test_mask).sum())

    @property
    def n_test(self) -> int:
        return int(self.test_mask.sum())


def prepare_unit(
    events: pd.DataFrame,
    config: FeatureConfig,
    users: pd.DataFrame | None = None,
    with_sequences: bool = False,
    seq_len: int = DEFAULT_SEQ_LEN,
) -> UnitData:
    """Features, labels, split and (optionally) sequences of one unit's events."""
    features = build_features(events, config, users=users)
    data = UnitData(
        user_ids=features["user_id"].to_numpy(),
        static=transform_static(features),
        labels=features["churned"].to_numpy(dtype=np.float32),
        test_mask=is_test_user(features["user_id"]),
        spend=features["future_spend"].to_numpy(dtype=np.float64),
    )
    if with_sequences:
        t_ref = int(np.datetime64(config.t_ref, "ns").astype(np.int64))
        data.seq_types, data.seq_values = build_sequences(events, features["user_id"], t_ref, seq_len)
    return data


def feature_moments(static: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """A unit's share of the global standardisation: ``(n, sum x, sum x^2)`` per feature."""
    return len(static), static.sum(axis=0), (static**2).sum(axis=0)


def bounded_moments(static: np.ndarray, sigma: float, rng: np.random.Generator | None = None
                    ) -> tuple[float, np.ndarray, np.ndarray]:
    """DP share of the standardisation: moments of ``clip(x / FEATURE_CAPS, -1, 1)`` plus
    Gaussian noise of standard deviation ``sigma`` on the count and on every sum.

    One user changes the count by 1, each of the d sums and d sums of squares by at most 1:
    L2 sensitivity ``sqrt(1 + 2d)`` (5 for d = 12).
    """
    rng = rng or np.random.default_rng()
    u = np.clip(static / FEATURE_CAPS, -1.0, 1.0)
    d = u.shape[1]
    return (len(u) + rng.normal(0, sigma), u.sum(axis=0) + rng.normal(0, sigma, d),
            (u**2).sum(axis=0) + rng.normal(0, sigma, d))
