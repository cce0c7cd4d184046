"""Incremental monitoring on a unit: fold new events into the per-user state, then emit lifecycle
transitions, tier changes and warnings as they occur, and turn them into the unit's action list.

One update (:func:`apply_update`) is one SQLite transaction (:class:`clients.state_store.StateStore`):

1. the batch is skipped if its content hash was applied before; events whose ``event_id`` was
   applied before are dropped;
2. the state's day moves to ``as_of`` (default: the later of the state's day and the batch's last
   event day; it never moves back);
3. the batch's users are read, their records merged (:func:`clients.user_state.merge_batch`) and
   written back; the users whose timer fired (``next_check <= as_of``: a stage, tier or warning
   can change with time alone, e.g. an inactivity threshold passed) are read too;
4. each of those users is evaluated at ``as_of``: lifecycle stage (:func:`clients.features.lifecycle_stage`),
   value tier (RFM scores on the configured thresholds), inactivity (``inactivity_days`` without any
   event) and churn probability (``--scores``) against ``churn_threshold``. A change is an alert;
   an alert is emitted once per episode (a warning reopens only after its condition cleared);
5. alerts become at most one action per user by the playbook (:func:`clients.playbook.plan_actions`,
   lowest priority number wins), capped by the unit's contact policy against its earlier actions;
6. the user's next check is the first day any of these can change without new events (the day
   an inactivity, decline, tenure or recency-score threshold is crossed, or an active day leaves
   the 30- or 60-day trend windows), so an update costs time in proportion to the new events and
   the timers that fire, not to the history.

The first update of an empty state is the **baseline**: it builds the state and emits nothing.
"""

from __future__ import annotations

import datetime as dt
import gc
import hashlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from clients.features import DAY_NS, _sorted_unique
from clients.playbook import DEFAULT_RULES, PlaybookConfig, PlaybookRule, plan_actions
from clients.segments import binned, quintile_score, rfm_histograms, rfm_segment
from clients.state_store import Loaded, StateStore, bucket_of, log_segment, pack_pairs, purchase_pairs
from clients.user_state import (FLAG_CHURN, FLAG_INACTIVE, NO_DAY, RECORD, UNSET, concat, empty_records,
                                features_from_records, group_batch, in_sorted, late_purchase_users, merge_batch,
                                raw, take, ukey, user_keys)
from fedseg.config import LIFECYCLE_STAGES, LifecycleRules, SegmentationPlan
from fedseg.errors import FedsegError
from fedseg.segments import FREQUENCY_EDGES, MONETARY_EDGES, RECENCY_EDGES, VALUE_TIERS, quantile_bins

try:  # numpy's switch behind NUMPY_MADVISE_HUGEPAGE (numpy 2.x); without it the update only runs slower
    from numpy._core.multiarray import _set_madvise_hugepage
except ImportError:  # pragma: no cover - another numpy layout
    def _set_madvise_hugepage(enabled: bool) -> bool:
        return enabled

NEVER: Final = 2**31 - 1
MONITOR_RULES: Final = [*DEFAULT_RULES,
                        PlaybookRule(action="re-engagement reminder", priority=7, warning=True)]


class MonitorConfig(BaseModel):
    """The unit's monitoring settings (kept in the state file; changed only when given again)."""

    inactivity_days: float = Field(SegmentationPlan.model_fields["inactivity_days"].default, gt=0,
                                   description="Warn once a user has had no event of any type for this many days.")
    churn_threshold: float = Field(SegmentationPlan.model_fields["churn_threshold"].default, gt=0, lt=1,
                                   description="Warn when a user's churn probability reaches this (with --scores).")
    lifecycle: LifecycleRules = LifecycleRules()
    rfm_thresholds: dict[str, list[int]] | None = Field(
        None, description="Quintile threshold bins of recency, frequency and monetary (fedseg segment's "
        "rfm_threshold_bins); None: the unit's own quintiles, fixed at the baseline.")
    playbook: PlaybookConfig = Field(default_factory=lambda: PlaybookConfig(rules=list(MONITOR_RULES)))


class MonitorError(FedsegError):
    """An update cannot be applied (the message says why; nothing was changed)."""


@dataclass
class UpdateResult:
    """What one update did."""

    batch_id: str
    status: str                     # "applied", "baseline" or "already applied"
    as_of: dt.date | None
    events: int = 0
    duplicates: int = 0
    users_in_batch: int = 0
    new_users: int = 0
    timers_fired: int = 0
    alerts: pd.DataFrame = field(default_factory=pd.DataFrame)
    actions: pd.DataFrame = field(default_factory=pd.DataFrame)
    seconds: dict[str, float] = field(default_factory=dict)
    #: ``alerts`` and ``actions`` as the Parquet segments kept in the state's log (b"" for none):
    #: the command writes these bytes to its files instead of encoding the frames again
    segments: tuple[bytes, bytes] = (b"", b"")


def _as_text(values: np.ndarray) -> np.ndarray:
    """``str`` of each value, as an object array; no conversion when every value is a string already
    (the canonical frame's ids are: converting a million strings costs a second)."""
    if pd.api.types.infer_dtype(values, skipna=False) == "string":
        return values
    return pd.Series(values, dtype=object).astype(str).to_numpy(object)


def batch_id_of(events: pd.DataFrame) -> str:
    """``sha256:<hex>`` of the canonical batch (values and order): the batch's identity."""
    digest = hashlib.sha256(pd.util.hash_pandas_object(events, index=False).to_numpy().tobytes())
    return "sha256:" + digest.hexdigest()[:32]


def day_of(day: dt.date) -> int:
    return (day - dt.date(1970, 1, 1)).days


def date_of(day: int) -> dt.date:
    return dt.date(1970, 1, 1) + dt.timedelta(days=int(day))


def load_config(store: StateStore, given: MonitorConfig | None) -> MonitorConfig:
    stored = store.meta("config")
    if given is not None:
        return given
    return MonitorConfig.model_validate_json(stored) if stored else MonitorConfig()


# ---------------------------------------------------------------------------------- evaluation
def _scores(features: pd.DataFrame, thresholds: dict[str, list[int]]) -> tuple[np.ndarray, ...]:
    r = quintile_score(binned(features["recency_days"].to_numpy(), RECENCY_EDGES), thresholds["recency"], False)
    f = quintile_score(binned(features["frequency"].to_numpy(), FREQUENCY_EDGES), thresholds["frequency"], True)
    m = quintile_score(binned(features["monetary_total"].to_numpy(), MONETARY_EDGES), thresholds["monetary"], True)
    return r, f, m


def local_thresholds(features: pd.DataFrame) -> dict[str, list[int]]:
    """Quintile threshold bins of the unit's own users (used when the federation's are not given)."""
    return {name: quantile_bins(h) for name, h in rfm_histograms(features).items()}


def _crossing(ts_ns: np.ndarray, days: np.ndarray | float) -> np.ndarray:
    """A day at most the first cutoff day at which ``t_ref - ts`` exceeds (or reaches) ``days``
    (conservative by up to two days: an early check only re-arms the timer)."""
    return np.floor(ts_ns / DAY_NS + days - 1e-6).astype(np.int64) - 1


def _highest_bit(x: np.ndarray) -> np.ndarray:
    """Index of the highest set bit of each uint64 (-1 for 0)."""
    exponent = np.frexp(x.astype(np.float64))[1].astype(np.int64)  # float rounding may overshoot by one
    shifted = np.right_shift(x, np.maximum(exponent - 1, 0).astype(np.uint64))
    exponent = np.where((exponent > 0) & (shifted == 0), exponent - 1, exponent)
    return exponent - 1


def _oldest_active_within(rec: np.ndarray, as_of: int, days: int) -> np.ndarray:
    """The earliest active day in the last ``days`` days before ``as_of`` (NO_DAY if none)."""
    from clients.user_state import _low_bits

    shift = as_of - rec["anchor"].astype(np.int64)
    lo_keep, hi_keep = _low_bits(days - shift)
    lo, hi = rec["mask_lo"] & lo_keep, rec["mask_hi"] & hi_keep
    bit = np.where(hi != 0, 64 + _highest_bit(hi), _highest_bit(lo))
    return np.where((bit >= 0) & (rec["anchor"] != NO_DAY), rec["anchor"] - bit, NO_DAY)


def next_check(rec: np.ndarray, features: pd.DataFrame, as_of: int, cfg: MonitorConfig,
               thresholds: dict[str, list[int]]) -> np.ndarray:
    """The first day (or a day or two before it) at which the user's stage, tier or inactivity can
    change without new events (see the module doc); :data:`NEVER` if none."""
    rules = cfg.lifecycle
    out = np.full(len(rec), NEVER, dtype=np.int64)

    def candidate(active: np.ndarray, day: np.ndarray) -> None:
        np.minimum(out, np.where(active, np.maximum(day, as_of + 1), NEVER), out=out)

    freq = rec["n_pdays"]
    recency, idle = features["recency_days"].to_numpy(), features["days_since_last_event"].to_numpy()
    tenure = features["tenure_days"].to_numpy()
    start = rec["first_ts"]
    candidate(tenure <= rules.introduction_days, _crossing(start, rules.introduction_days))
    cadence = np.maximum(rules.cadence_factor * rec["max_gap"], rules.single_purchase_decline_days / 3)
    candidate((freq >= 2) & (recency <= cadence), _crossing(rec["last_purchase_ts"], cadence))
    candidate((freq == 1) & (recency <= rules.single_purchase_decline_days),
              _crossing(rec["last_purchase_ts"], rules.single_purchase_decline_days))
    candidate((freq == 0) & (idle <= rules.inactive_decline_days), _crossing(rec["last_ts"], rules.inactive_decline_days))
    candidate(idle < cfg.inactivity_days, _crossing(rec["last_ts"], cfg.inactivity_days))
    # the R score drops when recency reaches the next threshold bin's upper edge
    bins = binned(recency, RECENCY_EDGES)
    thr = np.asarray(sorted(thresholds["recency"]))
    nxt = np.searchsorted(thr, bins, side="left")  # first threshold t >= bin: R drops once bin > t
    has_next = (nxt < len(thr))
    edge_index = np.where(has_next, thr[np.minimum(nxt, len(thr) - 1)] + 1, 0)
    has_next &= edge_index < len(RECENCY_EDGES)
    edge = RECENCY_EDGES[np.minimum(edge_index, len(RECENCY_EDGES) - 1)]
    ref = np.where(freq > 0, rec["last_purchase_ts"], rec["first_ts"])
    candidate(has_next, _crossing(ref, edge))
    # the trend changes when an active day leaves the last 30 days (a + 30) or the 30 before (a + 60)
    for window in (30, 60):
        oldest = _oldest_active_within(rec, as_of, window)
        candidate(oldest != NO_DAY, oldest + window)
    return out


def value_tier_codes(r: np.ndarray, f: np.ndarray, m: np.ndarray) -> np.ndarray:
    """The index in ``VALUE_TIERS`` of :func:`clients.segments.value_tier` (same rules, on integers)."""
    code = {name: i for i, name in enumerate(VALUE_TIERS)}
    tier = np.full(len(r), code["basic"], dtype=np.int8)
    tier[(f >= 3) | (r >= 4)] = code["active"]
    tier[m >= 4] = code["high-value"]
    tier[(m == 5) & (f >= 4)] = code["VIP"]
    return tier


def rfm_segment_labels(r: np.ndarray, f: np.ndarray, m: np.ndarray) -> pd.Categorical:
    """:func:`clients.segments.rfm_segment` as a categorical: each of the 125 score triples is
    named once, not once per user."""
    grid = np.arange(125)
    names = rfm_segment(grid // 25 + 1, grid // 5 % 5 + 1, grid % 5 + 1)
    categories = list(dict.fromkeys(names.tolist()))
    code_of = np.asarray([categories.index(n) for n in names], dtype=np.int64)
    r, f, m = (np.asarray(x, dtype=np.int64) - 1 for x in (r, f, m))
    return pd.Categorical.from_codes(code_of[r * 25 + f * 5 + m], categories=categories)


def evaluate(rec: np.ndarray, user_ids: np.ndarray, as_of: int, cfg: MonitorConfig, thresholds: dict[str, list[int]]
             ) -> tuple[pd.DataFrame, np.ndarray]:
    """Features, stage, scores, tier and warnings of each user at ``as_of``; returns the table and
    the records with ``stage``, ``tier`` and ``flags`` set (the input records are the old ones)."""
    table = features_from_records(rec, user_ids, as_of, cfg.lifecycle)
    r, f, m = _scores(table, thresholds)
    table["r_score"], table["f_score"], table["m_score"] = r, f, m
    table["rfm_segment"] = rfm_segment_labels(r, f, m)
    tier = value_tier_codes(r, f, m)
    table["value_tier"] = _labels(tier, list(VALUE_TIERS))
    table["churn_probability"] = rec["churn_prob"].astype(np.float64)
    new = raw(rec).copy().view(RECORD)
    new["stage"] = table["lifecycle_stage"].cat.codes.to_numpy()
    new["tier"] = tier
    idle = table["days_since_last_event"].to_numpy() >= cfg.inactivity_days
    risky = table["churn_probability"].fillna(-1.0).to_numpy() >= cfg.churn_threshold
    flags = rec["flags"] & ~np.uint8(FLAG_INACTIVE | FLAG_CHURN)
    new["flags"] = flags | np.where(idle, FLAG_INACTIVE, 0).astype(np.uint8) | np.where(risky, FLAG_CHURN, 0).astype(np.uint8)
    return table, new


def _labels(codes: np.ndarray, names: list[str]) -> pd.Categorical:
    """Categorical labels from integer codes into a short list of names (no string per row)."""
    return pd.Categorical.from_codes(codes, categories=names)


def _transition_labels(old: np.ndarray, new: np.ndarray, names: list[str]) -> pd.Categorical:
    """``"A -> B"`` for each pair of codes (offset by one: code -1 is ``names[0]``)."""
    n = len(names)
    pairs = [f"{a} -> {b}" for a in names for b in names]
    return _labels((old.astype(np.int64) + 1) * n + new.astype(np.int64) + 1, pairs)


def _numbered(values: np.ndarray, template: str) -> pd.Categorical:
    """``template.format(v)`` for each value, formatting each distinct (rounded) value once."""
    rounded = np.round(values.astype(np.float64), 2)
    distinct, codes = np.unique(rounded, return_inverse=True)
    return _labels(codes.ravel(), [template.format(v) for v in distinct])


def alerts_of(old: np.ndarray | dict[str, np.ndarray], new: np.ndarray, table: pd.DataFrame,
              cfg: MonitorConfig) -> pd.DataFrame:
    """One row per change: lifecycle transitions, tier changes, tier drops and newly opened
    warnings; ``row`` is the user's row in ``table``. ``old``: the previous records, or their
    ``stage``, ``tier`` and ``flags`` fields."""
    stages = ["absent", *LIFECYCLE_STAGES]
    tiers = ["none", *VALUE_TIERS]
    idle = table["days_since_last_event"].to_numpy()
    probs = table["churn_probability"].to_numpy()
    changed = (old["tier"] != new["tier"]) & (old["tier"] != UNSET)
    drop = changed & (new["tier"] < old["tier"])

    def opened(flag: int) -> np.ndarray:
        return (new["flags"] & flag).astype(bool) & ~(old["flags"] & flag).astype(bool)

    parts = []
    for kind, mask, detail in (
        ("transition", old["stage"] != new["stage"],
         lambda m: _transition_labels(old["stage"][m], new["stage"][m], stages)),
        ("tier_change", changed & ~drop, lambda m: _transition_labels(old["tier"][m], new["tier"][m], tiers)),
        ("tier_drop", drop, lambda m: _transition_labels(old["tier"][m], new["tier"][m], tiers)),
        ("inactivity", opened(FLAG_INACTIVE),
         lambda m: _numbered(np.floor(idle[m]), "no activity for {:.0f} days (threshold " + f"{cfg.inactivity_days:g})")),
        ("churn_probability", opened(FLAG_CHURN),
         lambda m: _numbered(probs[m], "churn probability {:.2f} >= " + f"{cfg.churn_threshold:.2f}")),
    ):
        rows = np.flatnonzero(mask)
        if len(rows):
            parts.append((rows, kind, detail(mask)))
    if not parts:
        return pd.DataFrame({"user_id": pd.Series([], dtype=object), "row": np.zeros(0, np.int64), "kind": [],
                             "detail": []})
    from pandas.api.types import union_categoricals

    rows = np.concatenate([p[0] for p in parts])
    kinds = [p[1] for p in parts]
    return pd.DataFrame({
        "user_id": pd.Series(table["user_id"].to_numpy()[rows], dtype=object), "row": rows,
        "kind": pd.Categorical.from_codes(np.repeat(np.arange(len(parts)), [len(p[0]) for p in parts]), kinds),
        "detail": union_categoricals([p[2] for p in parts])})


#: Alert kinds that are warnings (they fill the playbook's ``warning`` column).
WARNINGS: Final = ("inactivity", "churn_probability", "tier_drop")


def actions_of(alerts: pd.DataFrame, table: pd.DataFrame, cfg: MonitorConfig, as_of: int,
               earlier: pd.DataFrame) -> pd.DataFrame:
    """At most one action per alerted user by the playbook, capped by the unit's earlier actions
    (``earlier``: the logged actions of the playbook's window, ``StateStore.log``)."""
    if alerts.empty:
        return pd.DataFrame(columns=["user_id", "action", "rule_priority", "warning", "suppressed", "suppressed_reason"])
    rows = _sorted_unique(alerts["row"].to_numpy(np.int64))
    warnings = alerts.loc[alerts["kind"].isin(WARNINGS)]
    several = warnings["row"].duplicated(keep=False)   # most users have one warning: join only the others
    warned = pd.concat([warnings.loc[~several].set_index("row")["detail"],
                        warnings.loc[several].groupby("row")["detail"].agg("; ".join)])
    wanted = ["user_id", "segment_name", "rfm_segment", "value_tier", "lifecycle_stage"]  # what the playbook reads
    users = table[[c for c in wanted if c in table]].iloc[rows].reset_index(drop=True)
    warning = pd.Series(rows).map(warned)
    users["warning"] = warning.astype(object).where(warning.notna(), None).to_numpy()
    contacts = None
    if len(earlier):
        log = earlier.loc[~earlier["suppressed"].astype(bool)]
        log = log.loc[pd.Index(users["user_id"]).get_indexer(log["user_id"]) >= 0]
        contacts = pd.DataFrame({"user_id": log["user_id"].to_numpy(), "ts": pd.to_datetime(log["day"])})
    return plan_actions(users, cfg.playbook, date_of(as_of), contact_log=contacts)


# ---------------------------------------------------------------------------------- the update
def apply_update(store: StateStore, events: pd.DataFrame, source: str = "", as_of: dt.date | None = None,
                 config: MonitorConfig | None = None, scores: pd.DataFrame | None = None,
                 on_progress: Callable[[str], None] | None = None, batch_id: str | None = None) -> UpdateResult:
    """Apply one batch of canonical events (see the module doc); all or nothing.

    ``batch_id`` names the batch (the command line uses the file's sha256); by default a hash of
    the events' content."""
    progress = on_progress or (lambda _: None)
    # Two process-wide settings, restored afterwards (bench/bench_monitor.py, docs/monitoring.md):
    # - the cyclic garbage collector is paused: an update makes millions of short-lived objects and
    #   no cycles, and the collector's passes over them cost up to a second at 1M users;
    # - numpy does not ask the kernel for transparent huge pages: an update allocates and frees
    #   hundreds of large arrays, and zeroing a fresh 2 MiB page at each first touch cost about
    #   1 s of system time per update on the 2-core machine.
    collecting = gc.isenabled()
    gc.disable()
    huge_pages = _set_madvise_hugepage(False)
    try:
        return _apply_update(store, events, source, as_of, config, scores, progress, batch_id)
    finally:
        _set_madvise_hugepage(huge_pages)
        if collecting:
            gc.enable()


def _apply_update(store: StateStore, events: pd.DataFrame, source: str, as_of: dt.date | None,
                  config: MonitorConfig | None, scores: pd.DataFrame | None, progress: Callable[[str], None],
                  batch_id: str | None) -> UpdateResult:
    clock = time.perf_counter()
    seconds: dict[str, float] = {}

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = round(now - clock, 3)
        clock = now
        progress(name)

    batch_id = (batch_id or batch_id_of(events)) + ("" if scores is None else "+" + batch_id_of(scores)[7:23])
    if as_of is not None:
        batch_id += f"@{as_of.isoformat()}"
    done = store.batch_applied(batch_id)
    if done is not None:
        return UpdateResult(batch_id=batch_id, status="already applied", as_of=date_of(done["as_of"]),
                            events=int(done["events"]))
    with store.transaction():
        cfg = load_config(store, config)
        previous = store.meta("as_of")
        baseline = previous is None
        old_day = NO_DAY if previous is None else int(previous)
        duplicates = 0
        # the batch is grouped on a second thread while this one checks the event ids against the
        # state (the usual batch has no duplicate; if it has, it is grouped again without them)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedseg-group") as pool:
            grouped = pool.submit(group_batch, events)
            if "event_id" in events and events["event_id"].notna().any():
                has_id = events["event_id"].notna().to_numpy()
                ids = pd.util.hash_array(_as_text(events["event_id"].to_numpy(object)[has_id]),
                                         hash_key="fedseg-event-id1", categorize=False).view(np.int64)
                keep = np.ones(len(events), dtype=bool)
                keep[np.flatnonzero(has_id)] = store.new_event_ids(ids)
                duplicates = int((~keep).sum())
            batch = grouped.result()
        if duplicates:
            events = events.loc[keep].reset_index(drop=True)
            batch = group_batch(events)
        lap("duplicates checked")
        new_day = max(old_day, batch.last_day)
        if as_of is not None:
            if day_of(as_of) < batch.last_day:
                raise MonitorError(f"the batch has events up to {date_of(batch.last_day)}, after --as-of {as_of}; "
                                   "give a later --as-of or leave it out")
            if day_of(as_of) < old_day:
                raise MonitorError(f"the state is already at {date_of(old_day)}; --as-of {as_of} would move it back")
            new_day = day_of(as_of)
        if new_day == NO_DAY:
            raise MonitorError("an empty batch on an empty state: nothing to start from; give events")
        s_keys, s_probs = _score_keys(scores)
        touched = _sorted_unique(np.r_[bucket_of(batch.keys), store.due(new_day), bucket_of(s_keys)])
        loaded = store.read(touched)
        found, pos = loaded.position(batch.keys)
        clash = np.zeros(len(found), dtype=bool)
        clash[found] = loaded.ids[pos[found]] != batch.user_ids[found]
        if clash.any() or (len(batch.keys) and (np.diff(batch.keys) == 0).any()):  # pragma: no cover - 3e-8 at 1M users
            raise MonitorError("two user ids share a 64-bit key (a hash collision); nothing was changed: report this")
        if (~found).any() and pd.Series(batch.user_ids[~found]).str.contains("\x00", regex=False).any():
            raise MonitorError("a user id holds a NUL character; remove it from the events")
        old = empty_records(len(batch.keys))
        raw(old)[found] = raw(loaded.recs)[pos[found]]   # records moved as bytes (see user_state.RAW)
        lap("users read")
        late = late_purchase_users(old, batch)
        late_days = None
        if len(late):
            keys, days = purchase_pairs(loaded, batch.keys[late])
            late_days = (np.searchsorted(ukey(batch.keys), ukey(keys)), days)
        merged = merge_batch(old, batch, late_days)
        if len(s_keys):
            hit = in_sorted(ukey(batch.keys), ukey(s_keys))
            merged["churn_prob"][hit] = s_probs[np.searchsorted(ukey(s_keys), ukey(batch.keys[hit]))]
        p_user, p_day = batch.purchase
        new_pdays = pack_pairs(batch.keys[p_user], p_day)
        lap("batch merged")

        # the users evaluated: the batch's, then the other loaded users who were scored or whose timer fired
        rest = np.ones(len(loaded.recs), dtype=bool)
        rest[pos[found]] = False
        rest_keys = ukey(loaded.recs["uid"])
        scored = rest & in_sorted(rest_keys, ukey(s_keys))
        pick = np.flatnonzero(scored | (rest & (loaded.recs["next_check"] <= new_day)))
        others = take(loaded.recs, pick)
        if scored.any():
            mine = scored[pick]
            others["churn_prob"][mine] = s_probs[np.searchsorted(ukey(s_keys), ukey(others["uid"][mine]))]
        # what the alerts compare with: the evaluated users' previous stage, tier and flags (not whole records)
        before = {name: np.concatenate([old[name], loaded.recs[name][pick]]) for name in ("stage", "tier", "flags")}
        after = concat(merged, others)
        ids = np.concatenate([batch.user_ids, loaded.ids[pick]])
        due = len(pick) - int(scored.sum())
        lap("timers read")
        if cfg.rfm_thresholds is None:  # the unit's own scale, fixed at the baseline
            cfg = cfg.model_copy(update={"rfm_thresholds": local_thresholds(
                features_from_records(after, ids, new_day, cfg.lifecycle))})
        table, evaluated = evaluate(after, ids, new_day, cfg, cfg.rfm_thresholds)
        evaluated["next_check"] = np.minimum(next_check(evaluated, table, new_day, cfg, cfg.rfm_thresholds), NEVER)
        lap("users evaluated")
        final = loaded.recs                      # updated in place, new users inserted in key order
        nb = len(batch.keys)
        raw(final)[pos[found]] = raw(evaluated[:nb])[found]
        raw(final)[pick] = raw(evaluated[nb:])
        at = np.searchsorted(rest_keys, ukey(batch.keys[~found]))
        final = np.insert(raw(final), at, raw(evaluated[:nb])[~found]).view(RECORD)
        final_ids = np.insert(loaded.ids, at, batch.user_ids[~found])
        earlier = store.log("actions", since_day=new_day - cfg.playbook.window_days)
        # The buckets are rewritten on a second thread while this one plans the alerts and actions:
        # SQLite lets go of the GIL while it writes pages, and the machine has two cores. The
        # connection is used by one thread at a time (the writer until it is done, then this one).
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="fedseg-update") as pool:
            writing = pool.submit(store.write, Loaded(touched, final, final_ids, loaded.pdays), new_pdays)
            try:
                alerts, actions, segments = _plan(before, evaluated, table, cfg, new_day, earlier, baseline, pool)
            finally:
                wait([writing])
            writing.result()
        lap("users written")  # with the alerts and actions planned beside it
        store.add_log(batch_id, new_day, *segments)
        store.set_meta("as_of", str(new_day))
        store.set_meta("config", cfg.model_dump_json())
        store.record_batch(batch_id=batch_id, source=source, events=len(events), duplicates=duplicates,
                           new_users=int((~found).sum()), as_of=new_day, alerts=len(alerts), actions=len(actions),
                           applied_at=dt.datetime.now(dt.UTC).isoformat())
        lap("alerts and actions written")
    lap("committed")
    return UpdateResult(batch_id=batch_id, status="baseline" if baseline else "applied", as_of=date_of(new_day),
                        events=len(events), duplicates=duplicates, users_in_batch=len(batch.keys),
                        new_users=int((~found).sum()), timers_fired=due, alerts=alerts, actions=actions,
                        seconds=seconds, segments=segments)


def _plan(before: dict[str, np.ndarray], evaluated: np.ndarray, table: pd.DataFrame, cfg: MonitorConfig,
          new_day: int, earlier: pd.DataFrame, baseline: bool, pool: ThreadPoolExecutor
          ) -> tuple[pd.DataFrame, pd.DataFrame, tuple[bytes, bytes]]:
    """The update's alerts and actions, and both as log segments (no state file access); the
    alerts' segment is encoded on ``pool`` while the actions are planned (Arrow lets go of the GIL)."""
    found = pd.DataFrame(columns=["user_id", "kind", "detail"]) if baseline else \
        alerts_of(before, evaluated, table, cfg)
    alerts = found.drop(columns=["row"], errors="ignore").assign(day=date_of(new_day))
    alert_segment = pool.submit(log_segment, alerts)
    actions = actions_of(found, table, cfg, new_day, earlier)
    # the playbook's reason already names the warning that triggered the action
    actions = (actions.drop(columns=["warning"]) if "reason" in actions else
               actions.rename(columns={"warning": "reason"})).assign(day=date_of(new_day))
    return alerts, actions, (alert_segment.result(), log_segment(actions))


def _score_keys(scores: pd.DataFrame | None) -> tuple[np.ndarray, np.ndarray]:
    """Sorted user keys of a churn-score file and their probabilities (empty without one)."""
    if scores is None or not len(scores):
        return np.zeros(0, np.int64), np.zeros(0)
    keys = user_keys(scores["user_id"].to_numpy())
    order = np.argsort(ukey(keys))
    return keys[order], scores["churn_probability"].to_numpy(np.float64)[order]


def state_features(store: StateStore) -> pd.DataFrame:
    """Every user's features at the state's day (a full scan: exports and tags, not updates)."""
    previous = store.meta("as_of")
    if previous is None:
        raise MonitorError(f"{store.path} holds no state yet; run fedseg unit update --events FILE first")
    cfg = load_config(store, None)
    frames = [features_from_records(recs, ids, int(previous), cfg.lifecycle) for ids, recs in store.scan()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def read_state_records(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every user id and record of a state file (tests, exports)."""
    store = StateStore(path)
    try:
        parts = list(store.scan())
    finally:
        store.close()
    if not parts:
        return np.zeros(0, object), np.zeros(0, RECORD)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


