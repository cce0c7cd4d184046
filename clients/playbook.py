"""Churn warnings and the intervention playbook, run locally by each unit.

A warning names its reason: ``no activity for N days (threshold T)`` and/or
``churn probability P >= T``. The playbook maps segments, RFM segments, value tiers, lifecycle
stages and warnings to actions; every user gets at most one action (the matching rule with the
lowest ``priority``), unless the contact log shows a contact within ``quiet_days`` or
``max_contacts`` contacts within ``window_days`` before today, in which case the action is
kept but marked suppressed with the reason. Per-user output never leaves the unit.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field


class PlaybookRule(BaseModel):
    """One action and when it applies (all given conditions must hold; None means any)."""

    action: str
    priority: int = Field(description="Lower wins when several rules match.")
    segments: list[str] | None = Field(None, description="Activity segment names.")
    rfm_segments: list[str] | None = None
    value_tiers: list[str] | None = None
    stages: list[str] | None = Field(None, description="Lifecycle stages.")
    warning: bool | None = Field(None, description="True: only users with a churn warning.")


DEFAULT_RULES = [
    PlaybookRule(action="win-back offer", priority=1, warning=True, value_tiers=["high-value", "VIP"]),
    PlaybookRule(action="win-back offer", priority=2, rfm_segments=["At Risk", "Cannot Lose Them"]),
    PlaybookRule(action="VIP privilege", priority=3, value_tiers=["VIP"]),
    PlaybookRule(action="welcome guide", priority=4, stages=["introduction"]),
    PlaybookRule(action="streak reward", priority=5, stages=["growth"]),
    PlaybookRule(action="re-engagement reminder", priority=6, rfm_segments=["Need Attention", "About To Sleep"]),
]


class PlaybookConfig(BaseModel):
    """The unit's playbook and contact policy."""

    rules: list[PlaybookRule] = Field(default_factory=lambda: list(DEFAULT_RULES))
    max_contacts: int = Field(2, ge=0, description="Contacts allowed per window.")
    window_days: int = Field(30, ge=1)
    quiet_days: int = Field(7, ge=0, description="No contact within this many days of the last one.")


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


def plan_actions(table: pd.DataFrame, config: PlaybookConfig, today: dt.date,
                 contact_log: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per user with a matching rule: action, reason, suppressed, suppressed_reason."""
    best = np.full(len(table), np.iinfo(np.int64).max)
    action = np.full(len(table), None, dtype=object)
    for rule in sorted(config.rules, key=lambda r: r.priority):
        hit = _matches(table, rule) & (best == np.iinfo(np.int64).max)
        best[hit] = rule.priority
        action[hit] = rule.action
    chosen = best != np.iinfo(np.int64).max
    out = pd.DataFrame({
        "user_id": table["user_id"].to_numpy()[chosen],
        "action": action[chosen],
        "rule_priority": best[chosen],
        "warning": table["warning"].to_numpy()[chosen] if "warning" in table else None,
    })
    out["suppressed"] = False
    out["suppressed_reason"] = None
    if contact_log is not None and len(contact_log):
        log = contact_log.assign(ts=pd.to_datetime(contact_log["ts"]))
        ref = pd.Timestamp(today) + pd.Timedelta(days=1)
        recent = log.loc[log["ts"] < ref]
        last = recent.groupby("user_id")["ts"].max()
        in_window = recent.loc[recent["ts"] >= ref - pd.Timedelta(days=config.window_days)].groupby("user_id").size()
        last_contact = pd.to_datetime(last.reindex(out["user_id"]).to_numpy())
        days_since = ((ref - last_contact) / pd.Timedelta(days=1)).to_numpy(dtype=float)
        quiet = np.nan_to_num(days_since, nan=np.inf) <= config.quiet_days
        capped = in_window.reindex(out["user_id"]).fillna(0).to_numpy() >= config.max_contacts
        out.loc[quiet, "suppressed_reason"] = f"contacted within the last {config.quiet_days} days"
        out.loc[capped & ~quiet, "suppressed_reason"] = (
            f"{config.max_contacts} contacts already in the last {config.window_days} days")
        out["suppressed"] = quiet | capped
    return out
