"""Churn warnings and the intervention playbook, run locally by each unit.

A warning names its reason: ``no activity for N days (threshold T)`` and/or
``churn probability P >= T``.

The playbook (:class:`fedseg.playbook.PlaybookConfig`) turns a unit's per-user segment table into a
CRM action list, on the unit's own disk:

1. **Rules**: every user gets at most one action, the matching rule with the lowest ``priority``.
2. **Ranking**: users are ranked by **value at risk** ``P(churn) x CLV`` (currency units) when the
   unit has both scores; by CLV, or by past spend (``monetary_total``), when it has less. The
   column ``ranked_by`` says which.
3. **Contact policy** per user, over the ``window_days`` before and including the campaign day
   (the unit's contact log plus this campaign's contact): a contact within ``quiet_days``, more than
   ``max_contacts`` over all actions and channels, or more than ``channel_caps[channel]`` on the
   action's channel, suppresses the action (kept in the list, ``arm = suppressed``, with the reason).
4. **Channel capacity**: on a channel with ``channel_capacity[c]`` users per campaign, only the
   ``floor(capacity / (1 - h))`` highest-ranked contactable users enter the campaign (about
   ``capacity`` are then treated); the others are suppressed ("over channel capacity").
5. **Holdout**: within every (segment x action) stratum of the users who enter the campaign, a
   share ``h = holdout_share`` is held out at random (not contacted: the control arm of the effect
   measurement). The number held out is ``floor(h n)`` plus one with probability ``h n - floor(h n)``
   (so the share is exact in expectation), and which users is a uniform random choice. The
   randomness comes from the unit's private generator (:func:`clients.unit_privacy.private_generators`:
   OS entropy, or a seed that never leaves the unit), never from anything the coordinator sends,
   so nobody outside the unit can predict, or game, who is held out.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from fedseg.playbook import DEFAULT_RULES, PlaybookConfig, PlaybookRule  # noqa: F401 - re-exported

#: Columns of the CRM action list, in order.
ACTION_COLUMNS = ("user_id", "segment", "segment_id", "rfm_segment", "tier", "lifecycle_stage", "churn_probability",
                  "clv", "value_at_risk", "rank", "ranked_by", "action", "channel", "cost", "holdout", "arm", "reason",
                  "suppressed", "suppressed_reason", "rule_priority", "warning", "campaign_date")
TREATMENT, HOLDOUT, SUPPRESSED = "treatment", "holdout", "suppressed"


def churn_warnings(table: pd.DataFrame, inactivity_days: float, churn_threshold: float) -> pd.Series:
    """The reason for each warned user, None for the others."""
    idle = table["days_since_last_event"].to_numpy(dtype=float)
    reasons = np.where(idle >= inactivity_days,
                       [f"no activity for {d:.0f} days (threshold {inactivity_days:.0f})" for d in idle], "")
    if "churn_probability" in table:
        p = table["churn_probability"].to_numpy(dtype=float)
        prob = np.where(p >= churn_threshold, [f"churn probability {x:.2f} >= {churn_threshold:.2f}" for x in p], "")
        reasons = np.where((reasons != "") & (prob != ""), np.char.add(np.char.add(reasons.astype(str), "; "),
                                                                        prob.astype(str)),
                           np.where(reasons != "", reasons, prob))
    return pd.Series([r if r else None for r in reasons], index=table.index, dtype=object)


def _text(column: pd.Series) -> pd.Series:
    """``column.astype(str)``, without converting a column that holds strings only (the monitoring
    update matches several rules over hundreds of thousands of users)."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        if not column.isna().any() and pd.api.types.infer_dtype(column.cat.categories, skipna=False) == "string":
            return column
    elif column.dtype == object and pd.api.types.infer_dtype(column.to_numpy(), skipna=False) == "string":
        return column
    return column.astype(str)


def _matches(table: pd.DataFrame, rule: PlaybookRule) -> np.ndarray:
    mask = np.ones(len(table), dtype=bool)
    for column, allowed in (("segment_name", rule.segments), ("rfm_segment", rule.rfm_segments),
                            ("value_tier", rule.value_tiers), ("lifecycle_stage", rule.stages)):
        if allowed is not None:
            mask &= _text(table[column]).isin(allowed).to_numpy() if column in table else False
    if rule.warning is not None:
        mask &= table["warning"].notna().to_numpy() == rule.warning
    return mask


def _rule_text(rule: PlaybookRule) -> str:
    parts = [f"{name} in {', '.join(values)}" for name, values in (
        ("segment", rule.segments), ("RFM segment", rule.rfm_segments), ("tier", rule.value_tiers),
        ("stage", rule.stages)) if values]
    if rule.warning:
        parts.append("churn warning")
    return f"rule {rule.priority}: " + (" and ".join(parts) if parts else "everyone")


def ranking_value(table: pd.DataFrame) -> tuple[np.ndarray, str]:
    """What users are ranked by (highest first) and its name: value at risk, CLV, or past spend."""
    if {"churn_probability", "clv"} <= set(table.columns):
        return (table["churn_probability"].to_numpy(float) * table["clv"].to_numpy(float)), "value_at_risk"
    if "clv" in table:
        return table["clv"].to_numpy(float), "clv"
    return table["monetary_total"].to_numpy(float) if "monetary_total" in table else np.zeros(len(table)), \
        "monetary_total"


def _contact_policy(out: pd.DataFrame, config: PlaybookConfig, today: dt.date,
                    contact_log: pd.DataFrame | None) -> pd.Series:
    """The reason each user's contact breaks the policy (None where it does not). The log is
    grouped by its own users once; each listed user is looked up in it once (no per-user strings
    or reindexing by user id, and no work at all for an empty log)."""
    n = len(out)
    reasons = pd.Series(None, index=out.index, dtype=object)
    ref = np.datetime64(pd.Timestamp(today) + pd.Timedelta(days=1), "ns")
    days_since = np.full(n, np.inf)
    in_window = np.zeros(n)
    used = {channel: np.zeros(n) for channel in config.channel_caps}
    if contact_log is not None and len(contact_log):
        ts = pd.to_datetime(contact_log["ts"]).to_numpy("datetime64[ns]")
        channels = (contact_log["channel"].to_numpy(object) if "channel" in contact_log
                    else np.full(len(contact_log), None, dtype=object))
        codes, logged = pd.factorize(contact_log["user_id"].to_numpy(object), use_na_sentinel=True)
        recent = (ts < ref) & (codes >= 0)          # NaT compares False: such rows count nowhere
        codes, ts, channels = codes[recent], ts[recent], channels[recent]
        where = pd.Index(logged, dtype=object).get_indexer(out["user_id"].to_numpy(object))
        hit = where >= 0
        if recent.any():
            last = np.full(len(logged), np.datetime64("NaT"), dtype="datetime64[ns]")
            np.maximum.at(last.view(np.int64), codes, ts.view(np.int64))
            seen = hit & ~np.isnat(last[np.maximum(where, 0)])
            days_since[seen] = (ref - last[where[seen]]) / np.timedelta64(1, "D")
        in_cap = ts >= ref - np.timedelta64(config.window_days, "D")
        in_window[hit] = np.bincount(codes[in_cap], minlength=len(logged))[where[hit]]
        for channel in used:
            on = in_cap & (channels == channel)
            used[channel][hit] = np.bincount(codes[on], minlength=len(logged))[where[hit]]
    listed_channel = out["channel"].to_numpy(object)
    for channel, cap in config.channel_caps.items():
        over = (listed_channel == channel) & (used[channel] + 1 > cap)
        reasons[over] = f"{int(cap)} {channel} contact(s) allowed per {config.window_days} days"
    reasons[in_window + 1 > config.max_contacts] = (
        f"{config.max_contacts} contacts already in the last {config.window_days} days (all channels)")
    reasons[days_since <= config.quiet_days] = f"contacted within the last {config.quiet_days} days"
    return reasons


def assign_holdout(strata: pd.Series, share: float, rng: np.random.Generator) -> np.ndarray:
    """Holdout flags: in each stratum ``floor(share n)`` users, plus one with probability of the
    remainder, chosen uniformly at random with ``rng`` (module doc)."""
    flags = np.zeros(len(strata), dtype=bool)
    if share <= 0:
        return flags
    for _, rows in strata.groupby(strata, sort=True).indices.items():
        want = share * len(rows)
        n_hold = int(np.floor(want)) + int(rng.random() < want - np.floor(want))
        flags[rng.permutation(rows)[:n_hold]] = True
    return flags


_STR = pd.StringDtype("pyarrow", na_value=np.nan)  # pandas 3's default string dtype ("str")


def _coded_text(codes: np.ndarray, names: list[str]) -> pd.arrays.ArrowStringArray:
    """``names[code]`` per row as a ``str`` array (code -1: missing), built in Arrow from the few
    distinct names: pandas converting an object array of strings to ``str`` costs about 0.1 s
    per half-million rows and column, this about 0.01 s."""
    codes = np.asarray(codes, dtype=np.int32)
    indices = pa.array(codes, mask=codes < 0)
    text = pa.DictionaryArray.from_arrays(indices, pa.array(list(names), type=pa.large_string()))
    return pd.arrays.ArrowStringArray(text.cast(pa.large_string()), dtype=_STR)


def _text_column(values: pd.Series, missing: str | None = None) -> pd.arrays.ArrowStringArray | np.ndarray:
    """A column of the action list as the DataFrame constructor would make it from
    ``values.to_numpy()`` (strings become ``str``, anything else stays as it is), coded through
    :func:`_coded_text` when it holds strings; ``missing``: the text of a missing category (as
    ``astype(str)`` writes it) instead of a missing value."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        categories = values.cat.categories
        if pd.api.types.infer_dtype(categories, skipna=True) == "string":
            codes = values.cat.codes.to_numpy().astype(np.int64)
            names = [str(c) for c in categories]
            if missing is not None and (codes < 0).any():
                codes, names = np.where(codes < 0, len(names), codes), [*names, missing]
            return _coded_text(codes, names)
        return values.astype(str).to_numpy()
    raw = values.to_numpy()
    if raw.dtype == object and len(raw) and pd.api.types.infer_dtype(raw, skipna=True) == "string":
        codes, names = pd.factorize(raw, use_na_sentinel=True)
        return _coded_text(codes, list(names))
    return raw


def plan_actions(table: pd.DataFrame, config: PlaybookConfig, today: dt.date,
                 contact_log: pd.DataFrame | None = None, rng: np.random.Generator | None = None) -> pd.DataFrame:
    """The CRM action list (:data:`ACTION_COLUMNS`): one row per user a rule matches (module doc).

    ``rng`` draws the holdout; by default a fresh generator from OS entropy.

    Text columns of few distinct values (actions, channels, reasons, arms, segments) are built
    from integer codes, not from one Python string per user (the monitoring update plans
    hundreds of thousands of actions at once).
    """
    rules = sorted(config.rules, key=lambda r: r.priority)
    rule_of = np.full(len(table), -1, dtype=np.int64)
    for i, rule in enumerate(rules):
        rule_of[_matches(table, rule) & (rule_of < 0)] = i
    chosen = rule_of >= 0
    value, ranked_by = ranking_value(table)
    # rank: value descending (missing last), then user id; sorted once on Arrow arrays, before
    # the columns are built (pandas' sort_values on string columns costs several times more)
    rows = np.flatnonzero(chosen)
    ids = table["user_id"].to_numpy()[rows]
    ids = pa.array(ids if pd.api.types.infer_dtype(ids, skipna=False) == "string" else ids.astype(str),
                   type=pa.large_string())
    keys = pa.table({"v": pa.array(np.asarray(value, dtype=float)[rows], from_pandas=True), "u": ids})
    order = pc.sort_indices(keys, sort_keys=[("v", "descending", "at_end"), ("u", "ascending", "at_end")])
    rows = rows[order.to_numpy()]
    picked = table.iloc[rows]
    n = len(rows)
    rule_code = rule_of[rows]

    def column(name: str, default: object = None) -> pd.arrays.ArrowStringArray | np.ndarray:
        return _text_column(picked[name]) if name in picked else np.full(n, default, dtype=object)

    # actions and channels: a handful, looked up once each
    specs = {a.name: a for a in config.actions}
    action_names = list(dict.fromkeys(r.action for r in rules))
    action_code = np.asarray([action_names.index(r.action) for r in rules] or [0], dtype=np.int64)[rule_code]
    channel_names = list(dict.fromkeys(specs[a].channel for a in action_names))
    channel_code = np.asarray([channel_names.index(specs[a].channel) for a in action_names] or [0])[action_code]
    warning = picked["warning"].to_numpy() if "warning" in picked else np.full(n, None, dtype=object)
    out = pd.DataFrame({
        "user_id": pd.arrays.ArrowStringArray(pc.take(ids, order), dtype=_STR),
        "segment": column("segment_name") if "segment_name" in picked else column("segment"),
        "segment_id": column("segment"),
        "rfm_segment": column("rfm_segment"),
        "tier": column("value_tier"),
        "lifecycle_stage": _text_column(picked["lifecycle_stage"], missing="nan") if "lifecycle_stage" in picked
        else column("lifecycle_stage"),
        "churn_probability": picked["churn_probability"].to_numpy(float) if "churn_probability" in picked
        else np.full(n, np.nan),
        "clv": picked["clv"].to_numpy(float) if "clv" in picked else np.full(n, np.nan),
        "value_at_risk": value[rows] if ranked_by == "value_at_risk" else np.nan,
        "action": _coded_text(action_code, action_names),
        "reason": _reasons(rule_code, [_rule_text(r) for r in rules], warning),
        "rule_priority": np.asarray([r.priority for r in rules] or [0], dtype=np.int64)[rule_code],
        "warning": _text_column(pd.Series(warning, dtype=object)) if n else warning,
    })
    out["rank"] = np.arange(1, n + 1)
    out["ranked_by"] = _coded_text(np.zeros(n, np.int32), [ranked_by])
    out["channel"] = _coded_text(channel_code, channel_names)
    out["cost"] = np.asarray([specs[a].cost for a in action_names] or [0.0], dtype=float)[action_code]
    out["suppressed_reason"] = _contact_policy(out, config, today, contact_log)
    for channel, capacity in config.channel_capacity.items():
        room = int(np.floor(capacity / (1.0 - config.holdout_share)))
        contactable = (out["channel"] == channel) & out["suppressed_reason"].isna()
        over = contactable & (contactable.cumsum() > room)
        out.loc[over, "suppressed_reason"] = f"over the {channel} capacity of {capacity} users per campaign"
    out["suppressed"] = out["suppressed_reason"].notna()
    entered = ~out["suppressed"].to_numpy()
    holdout = np.zeros(n, dtype=bool)
    strata = _strata(out["segment"], action_code, action_names)
    holdout[entered] = assign_holdout(strata[entered].reset_index(drop=True), config.holdout_share,
                                      rng or np.random.default_rng())
    out["holdout"] = holdout
    out["arm"] = _coded_text(np.where(~entered, 2, np.where(holdout, 1, 0)), [TREATMENT, HOLDOUT, SUPPRESSED])
    out["campaign_date"] = _coded_text(np.zeros(n, np.int32), [today.isoformat()])
    return out[list(ACTION_COLUMNS)]


def _reasons(rule_code: np.ndarray, rule_texts: list[str], warnings: np.ndarray) -> pd.arrays.ArrowStringArray:
    """``"<rule text>; <warning>"`` where a user has a warning, else the rule text: built once per
    distinct (rule, warning) pair."""
    warning_code, warning_names = pd.factorize(np.asarray(warnings, dtype=object), use_na_sentinel=True)
    width = len(warning_names) + 1                  # warning code + 1: 0 is "no warning"
    distinct, codes = np.unique(rule_code * width + warning_code + 1, return_inverse=True)
    names = [rule_texts[p // width] + ("" if p % width == 0 else "; " + str(warning_names[p % width - 1]))
             for p in distinct]
    return _coded_text(codes.ravel(), names)


def _strata(segment: pd.Series, action_code: np.ndarray, action_names: list[str]) -> pd.Series:
    """The holdout stratum (segment x action) of each row as an integer whose order is that of the
    text ``segment + "\x1f" + action`` (the order :func:`assign_holdout` draws the strata in)."""
    seg_code, _ = pd.factorize(segment.to_numpy(), use_na_sentinel=False)
    width = len(action_names) or 1
    pair = np.asarray(seg_code, dtype=np.int64) * width + action_code
    distinct, first, codes = np.unique(pair, return_index=True, return_inverse=True)
    labels = [f"{label}\x1f{action_names[code % width]}"
              for label, code in zip(segment.iloc[first].astype(str).to_numpy(object), distinct)]
    rank = np.empty(len(labels), dtype=np.int64)
    rank[np.argsort(np.asarray(labels, dtype=object), kind="stable")] = np.arange(len(labels))
    return pd.Series(rank[codes.ravel()], dtype=np.int64)
