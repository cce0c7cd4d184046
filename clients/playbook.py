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
    """The reason each user's contact breaks the policy (None where it does not)."""
    reasons = pd.Series(None, index=out.index, dtype=object)
    if contact_log is None or not len(contact_log):
        log = pd.DataFrame({"user_id": pd.Series(dtype=object), "ts": pd.Series(dtype="datetime64[ns]"),
                            "channel": pd.Series(dtype=object)})
    else:
        log = contact_log.assign(ts=pd.to_datetime(contact_log["ts"]))
        if "channel" not in log:
            log["channel"] = None
    ref = pd.Timestamp(today) + pd.Timedelta(days=1)
    recent = log.loc[log["ts"] < ref]
    window = recent.loc[recent["ts"] >= ref - pd.Timedelta(days=config.window_days)]
    last = pd.to_datetime(recent.groupby("user_id")["ts"].max().reindex(out["user_id"]).to_numpy())
    days_since = np.nan_to_num(((ref - last) / pd.Timedelta(days=1)).to_numpy(dtype=float), nan=np.inf)
    in_window = window.groupby("user_id").size().reindex(out["user_id"]).fillna(0).to_numpy()
    on_channel = window.groupby(["user_id", "channel"]).size()
    for channel, cap in config.channel_caps.items():
        rows = out["channel"].to_numpy() == channel
        used = on_channel.reindex(list(zip(out["user_id"][rows], [channel] * int(rows.sum())))).fillna(0).to_numpy()
        over = np.zeros(len(out), dtype=bool)
        over[rows] = used + 1 > cap
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


def _with_warnings(reasons: np.ndarray, warnings: np.ndarray) -> np.ndarray:
    """``"reason; warning"`` where a user has a warning, else the reason (vectorised: one string
    operation over the warned users, not a Python loop over every user)."""
    out = np.asarray(reasons, dtype=object).copy()
    warned = pd.notna(np.asarray(warnings, dtype=object))
    if warned.any():
        out[warned] = (pd.Series(out[warned], dtype=object) + "; "
                       + pd.Series(warnings[warned], dtype=object).astype(str)).to_numpy(object)
    return out


def plan_actions(table: pd.DataFrame, config: PlaybookConfig, today: dt.date,
                 contact_log: pd.DataFrame | None = None, rng: np.random.Generator | None = None) -> pd.DataFrame:
    """The CRM action list (:data:`ACTION_COLUMNS`): one row per user a rule matches (module doc).

    ``rng`` draws the holdout; by default a fresh generator from OS entropy.
    """
    best = np.full(len(table), np.iinfo(np.int64).max)
    action = np.full(len(table), None, dtype=object)
    reason = np.full(len(table), None, dtype=object)
    for rule in sorted(config.rules, key=lambda r: r.priority):
        hit = _matches(table, rule) & (best == np.iinfo(np.int64).max)
        best[hit] = rule.priority
        action[hit] = rule.action
        reason[hit] = _rule_text(rule)
    chosen = best != np.iinfo(np.int64).max
    value, ranked_by = ranking_value(table)
    # rank: value descending (missing last), then user id; sorted once on Arrow arrays, before
    # the columns are built (pandas' sort_values on string columns costs several times more)
    rows = np.flatnonzero(chosen)
    keys = pa.table({"v": pa.array(np.asarray(value, dtype=float)[rows], from_pandas=True),
                     "u": pa.array(table["user_id"].to_numpy()[rows].astype(str))})
    rows = rows[pc.sort_indices(keys, sort_keys=[("v", "descending", "at_end"), ("u", "ascending", "at_end")]).to_numpy()]
    picked = table.iloc[rows]

    def column(name: str, default: object = None) -> np.ndarray:
        return picked[name].to_numpy() if name in picked else np.full(len(picked), default, dtype=object)

    warning = column("warning")
    out = pd.DataFrame({
        "user_id": picked["user_id"].to_numpy(),
        "segment": column("segment_name") if "segment_name" in picked else column("segment"),
        "segment_id": column("segment"),
        "rfm_segment": column("rfm_segment"),
        "tier": column("value_tier"),
        "lifecycle_stage": picked["lifecycle_stage"].astype(str).to_numpy() if "lifecycle_stage" in picked
        else column("lifecycle_stage"),
        "churn_probability": column("churn_probability", np.nan).astype(float),
        "clv": column("clv", np.nan).astype(float),
        "value_at_risk": value[rows] if ranked_by == "value_at_risk" else np.nan,
        "action": action[rows],
        "reason": _with_warnings(reason[rows], warning),
        "rule_priority": best[rows],
        "warning": warning,
    })
    out["rank"] = np.arange(1, len(out) + 1)
    out["ranked_by"] = ranked_by
    specs = {a.name: a for a in config.actions}
    codes, names = pd.factorize(out["action"].to_numpy(object))   # a handful of actions: look each up once
    out["channel"] = np.array([specs[a].channel for a in names], dtype=object)[codes]
    out["cost"] = np.array([specs[a].cost for a in names], dtype=float)[codes]
    out["suppressed_reason"] = _contact_policy(out, config, today, contact_log)
    for channel, capacity in config.channel_capacity.items():
        room = int(np.floor(capacity / (1.0 - config.holdout_share)))
        contactable = (out["channel"] == channel) & out["suppressed_reason"].isna()
        over = contactable & (contactable.cumsum() > room)
        out.loc[over, "suppressed_reason"] = f"over the {channel} capacity of {capacity} users per campaign"
    out["suppressed"] = out["suppressed_reason"].notna()
    entered = ~out["suppressed"].to_numpy()
    strata = out["segment"].astype(str) + "\x1f" + out["action"].astype(str)
    holdout = np.zeros(len(out), dtype=bool)
    holdout[entered] = assign_holdout(strata[entered].reset_index(drop=True), config.holdout_share,
                                      rng or np.random.default_rng())
    out["holdout"] = holdout
    out["arm"] = np.where(~entered, SUPPRESSED, np.where(holdout, HOLDOUT, TREATMENT))
    out["campaign_date"] = today.isoformat()
    return out[list(ACTION_COLUMNS)]
