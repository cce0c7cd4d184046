"""The unit's side of effect measurement: outcome aggregates per segment x action x arm.

The unit reads its own action list (the CRM file the playbook wrote, with each user's segment,
action and arm) and its events, computes each experiment user's outcomes in the measurement window
(:func:`fedseg.effects.user_outcomes`) and sums them per cell and arm
(:func:`fedseg.effects.cell_statistics`). Under DP it clips revenue, adds Laplace noise of scale
``b_s`` to every entry of statistic ``s`` itself (:mod:`privacy.effects_dp`), after charging the
release to its own account.
Nothing per user leaves it.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from clients.playbook import HOLDOUT, TREATMENT
from fedseg.effects import ARMS, cell_statistics, user_outcomes
from fedseg.errors import FedsegError

#: The action list's arms, mapped to the measurement's.
_ARM = {TREATMENT: ARMS[0], HOLDOUT: ARMS[1]}


class ActionListError(FedsegError):
    """The unit's action list cannot be used for the measurement."""


def experiment_table(actions: pd.DataFrame, events: pd.DataFrame, campaign_date: str, window_days: int,
                     retention_days: int, segment_column: str) -> pd.DataFrame:
    """One row per user in the experiment (treatment or holdout): segment, action, arm, outcomes."""
    needed = {"user_id", "action", "arm", segment_column}
    missing = sorted(needed - set(actions.columns))
    if missing:
        raise ActionListError(f"the action list has no column(s) {missing}; use the list `fedseg segment` wrote")
    inside = actions.loc[actions["arm"].isin(list(_ARM))]
    outcomes = user_outcomes(events, inside["user_id"], campaign_date, window_days, retention_days)
    return pd.DataFrame({"segment": inside[segment_column].astype(str).to_numpy(),
                         "action": inside["action"].astype(str).to_numpy(),
                         "arm": inside["arm"].map(_ARM).to_numpy(),
                         **{k: outcomes[k].to_numpy() for k in ("conversion", "revenue", "retention")}})


def _unit_statistics(actions: pd.DataFrame, events: pd.DataFrame, config: dict[str, Any],
                     clipped: bool) -> np.ndarray:
    """``[cells, arms, stats]`` sums of the unit's experiment users for the cells the request names;
    ``clipped``: revenue clipped at the request's ``clip`` and in units of it (DP, secure sums)."""
    table = experiment_table(actions, events, str(config["campaign-date"]), int(config["window-days"]),
                             int(config["retention-days"]), str(config["segment-column"]))
    return cell_statistics(table, list(config["segments"]), list(config["actions"]),
                           clip=float(config["clip"]) if clipped else None)


def noise_share_units(config: dict[str, Any]) -> int:
    """``t``: the fewest units whose tables any sum released by the secure aggregation of this round
    holds. The mod has checked the round's settings against those pinned when this unit
    advertised and refuses a survivor set below 3, the threshold and the settings'
    ``min_survivors`` (:meth:`privacy.secagg.config.SecAggConfig.survivors_for`), so ``t`` follows
    from those settings; counted over the units that shared keys (U2), at most the advertisers the
    mod counts, so ``t`` is never above the mod's floor (a smaller ``t`` only means more noise)."""
    from privacy.secagg.config import SecAggConfig

    settings = SecAggConfig.model_validate_json(str(config["secagg-config"]))
    shared = json.loads(str(config["secagg-u2"]))
    return settings.survivors_for(len(shared))


def laplace_shares(shape: tuple[int, ...], scales: np.ndarray, t: int, rng: np.random.Generator) -> np.ndarray:
    """One unit's share of Laplace noise: ``G1 - G2`` with ``G ~ Gamma(1 / t, b)`` per entry. The
    Laplace law is infinitely divisible: the shares of any ``t`` units sum to exactly
    ``Laplace(b)``, and those of ``m >= t`` units to Laplace(b) plus independent noise (variance
    ``2 b^2 m / t`` in all), so every sum the secure aggregation can release carries at least the
    noise of the accepted release."""
    scale = np.broadcast_to(np.asarray(scales, dtype=float), shape)
    return rng.gamma(1.0 / t, scale) - rng.gamma(1.0 / t, scale)


def masked_table_reply(actions: pd.DataFrame, events: pd.DataFrame, config: dict[str, Any],
                       rng: np.random.Generator, start: Any) -> Any:
    """The table for the secagg mod to mask: ``start`` (the coordinator's zero record: one array as
    long as the table) plus the unit's sums (revenue clipped at ``clip`` and in units of it, with or
    without DP: a sum in a finite ring needs bounded entries) and, under DP, its noise share
    (:func:`laplace_shares`); refuses values outside the round's clip range, which the mod would
    otherwise clip silently."""
    from flwr.app import Array, ArrayRecord

    from privacy.secagg.config import SecAggConfig

    scales = np.asarray([float(x) for x in config.get("laplace-scales", [])])
    stats = _unit_statistics(actions, events, config, clipped=True)  # a ring sum needs bounded entries
    if len(scales):
        stats = stats + laplace_shares(stats.shape, scales, noise_share_units(config), rng)
    flat = stats.ravel()
    if start is None or len(start) != 1 or int(np.prod(next(iter(start.values())).shape)) != len(flat):
        raise ActionListError(f"the secure-aggregation round must carry one zero array of {len(flat)} values "
                              "(cells x arms x statistics)")
    limit = SecAggConfig.model_validate_json(str(config["secagg-config"])).clip_range
    if np.abs(flat).max(initial=0.0) > limit:
        raise ActionListError(f"this unit's table reaches {np.abs(flat).max():.0f}, beyond the round's clip range "
                              f"{limit:g}; the coordinator must set a larger range")
    key, base = next(iter(start.items()))
    start_values = base.numpy().astype(np.float64)
    return ArrayRecord({key: Array((start_values.reshape(-1) + flat).reshape(start_values.shape))})


def effects_answer(actions: pd.DataFrame, events: pd.DataFrame, config: dict[str, Any],
                   rng: np.random.Generator | None = None) -> dict[str, list[float]]:
    """The unit's answer to a ``query.effects`` message: ``stats`` flattened ``[cells, arms, stats]``,
    noisy under DP (``laplace-scales``: the Laplace noise scale of each statistic; revenue clipped
    at ``clip``, in units of it)."""
    scales = [float(x) for x in config.get("laplace-scales", [])]
    stats = _unit_statistics(actions, events, config, clipped=bool(scales))
    if scales:
        rng = rng or np.random.default_rng()
        stats = stats + rng.laplace(0.0, 1.0, stats.shape) * np.asarray(scales)
    return {"stats": stats.ravel().tolist()}


#: The per-user segment file's column for each action-list segment column.
SEGMENT_FILE_COLUMNS = {"segment": "segment_name", "rfm_segment": "rfm_segment", "tier": "value_tier"}


def intervention_table(actions: pd.DataFrame, users: pd.DataFrame | None, segment_column: str,
                       attributes: list[str], segments: pd.DataFrame | None = None) -> pd.DataFrame:
    """A unit's table for the fairness audit of its interventions (kept on the unit): per user,
    ``within_<attribute>`` = segment and protected group, and ``offer`` = the action for contacted
    users, ``holdout`` or ``suppressed`` for the other users in the action list, and, with the unit's
    per-user segment file, ``no action`` for everyone else."""
    if users is None:
        raise ActionListError("the fairness audit of interventions needs the unit's users file (protected attributes)")
    missing = [a for a in attributes if a not in users.columns]
    if missing:
        raise ActionListError(f"the users file has no column(s) {missing}; it has {sorted(users.columns)}")
    listed = actions[["user_id", segment_column, "action", "arm"]].rename(columns={segment_column: "segment"})
    if segments is not None:
        others = segments.loc[~segments["user_id"].isin(listed["user_id"]),
                              ["user_id", SEGMENT_FILE_COLUMNS[segment_column]]]
        listed = pd.concat([listed, others.rename(columns={SEGMENT_FILE_COLUMNS[segment_column]: "segment"})
                            .assign(action=None, arm="no action")], ignore_index=True)
    joined = listed.merge(users[["user_id", *attributes]].astype({"user_id": str}), on="user_id", how="left")
    offer = np.where(joined["arm"] == TREATMENT, joined["action"].astype(str), joined["arm"].astype(str))
    out = pd.DataFrame({"offer": offer, "segment": joined["segment"].astype(str)})
    for attribute in attributes:
        group = joined[attribute].astype(object).where(joined[attribute].notna(), "(missing)").astype(str)
        out[f"within_{attribute}"] = out["segment"] + " & " + group
    return out
