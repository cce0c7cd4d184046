"""Federated effect measurement, coordinator side: uplift per segment x action with 95% intervals and ROI.

Protocol: under DP every unit first accepts the release (:func:`server.grid.agree_privacy`); then one
``query.effects`` message names the campaign day, the window, the cells (segments x actions) and the
noise; every unit answers its outcome sums per cell and arm (:mod:`clients.effects`), noisy under DP.
The coordinator adds them up and estimates, per cell and outcome (:func:`estimate_effects`):

- arm means ``m = S / n`` (revenue rescaled from units of its clip under DP);
- **uplift** ``m_treatment - m_holdout``: the difference in means, unbiased for the cell's average
  effect because the holdout was drawn at random within the cell;
- its variance: the sampling part ``s_T^2 / n_T + s_H^2 / n_H`` (Neyman; ``s^2 = m (1 - m) n / (n - 1)``
  for conversion and retention, ``(Q - S^2 / n) / (n - 1)`` for revenue with ``Q`` the sum of
  squares) plus, under DP, the noise part: with merged noise variances ``v_S = units x 2 b_S^2`` (Laplace scale ``b_S``) on
  the sum and ``v_n`` on the count, ``Var(S~/n~) ~ (v_S scale^2 + m^2 v_n) / n^2`` per arm (delta method; ``scale``
  the revenue clip, 1 otherwise; each statistic has its own noise, :mod:`privacy.effects_dp`). The 95% interval is ``uplift +- 1.96 sqrt(variance)`` (normal
  approximation; cells with fewer than ``min_arm`` users in an arm get no estimate);
- **ROI** of the action in the cell: ``(margin x revenue uplift - cost) / cost`` per treated user,
  with the action's cost from the playbook; its interval is the revenue uplift's, transformed.
"""

from __future__ import annotations

import math
import uuid
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedseg import protocol
from fedseg.config import EffectsPlan
from fedseg.effects import ARMS, OUTCOMES, STATS, cell_names
from fedseg.errors import FedsegError
from privacy.accounting import default_delta, epsilon
from privacy.effects_dp import effects_release, effects_scales
from server.grid import agree_privacy, ask, wait_for_units

Z95 = 1.959963984540054
_STAT = {name: i for i, name in enumerate(STATS)}
_SUM = {"conversion": "conversions", "revenue": "revenue", "retention": "retained"}


def _arm(stats: np.ndarray, n: float, count_var: float, outcome: str, noise_var: np.ndarray,
         scale: float) -> tuple[float, float]:
    """(mean, variance of the mean) of one arm for ``outcome``: ``n`` users (estimated with variance
    ``count_var`` under DP), ``noise_var[s]`` the merged noise variance of statistic ``s`` (sent units)."""
    s = _STAT[_SUM[outcome]]
    unit = scale if outcome == "revenue" else 1.0
    total = float(stats[s]) * unit
    mean = total / n
    if outcome == "revenue":
        squares = float(stats[_STAT["revenue_sq"]]) * scale ** 2
        spread = max(squares - total ** 2 / n, 0.0) / max(n - 1.0, 1.0)
    else:
        p = min(max(mean, 0.0), 1.0)
        spread = p * (1.0 - p) * n / max(n - 1.0, 1.0)
    noise = (noise_var[s] * unit ** 2 + mean ** 2 * count_var) / n ** 2
    return mean, spread / n + noise


def arm_sizes(n_t: float, n_h: float, v_n: float, holdout_share: float | None, units: int
              ) -> tuple[float, float, float, float, str]:
    """Users per arm and the variance of each estimate: ``(n_t, n_h, var_t, var_h, how)``.

    Without noise the counts are exact. Under DP the released counts are noisy (variance ``v_n``
    each). The holdout was drawn at random with the playbook's share ``h`` inside every unit's
    stratum (``floor(h n)`` plus a Bernoulli of the remainder), so ``n_h = h (n_t + n_h)`` up to that
    rounding (variance at most ``units / 4``): estimating the arms as ``h`` and ``1 - h`` of the
    noisy cell total cuts the holdout count's noise variance from ``v_n`` to ``2 h^2 v_n``. It is used
    when the released holdout count agrees with it within four standard deviations (a unit that
    held out another share would show), else the released counts are."""
    if v_n <= 0 or holdout_share is None:
        return n_t, n_h, v_n, v_n, "released counts" if v_n > 0 else "exact counts"
    h, total = holdout_share, n_t + n_h
    rounding = units / 4.0
    gap = n_h - h * total
    spread = math.sqrt(((1 - h) ** 2 + h ** 2) * v_n + rounding)
    if abs(gap) > 4 * spread:
        return n_t, n_h, v_n, v_n, f"released counts (holdout share {n_h / max(total, 1e-9):.3f} is not the playbook's {h:g})"
    return ((1 - h) * total, h * total, 2 * (1 - h) ** 2 * v_n + rounding, 2 * h ** 2 * v_n + rounding,
            f"cell total x the holdout share {h:g}")


def estimate_effects(stats: np.ndarray, cells: list[tuple[str, str]], plan: EffectsPlan, costs: dict[str, float],
                     channels: dict[str, str], noise_var: np.ndarray | None = None, scale: float = 1.0,
                     holdout_share: float | None = None, units: int = 1) -> list[dict[str, Any]]:
    """One entry per cell (module doc) from merged ``[cells, arms, stats]`` sums; ``noise_var``: the
    merged noise variance of each statistic (None: exact sums); ``holdout_share``: the playbook's
    (under DP the arm sizes come from it, :func:`arm_sizes`)."""
    noise_var = np.zeros(len(STATS)) if noise_var is None else np.asarray(noise_var, dtype=float)
    entries = []
    for (segment, action), cell in zip(cells, stats):
        treated, held = cell[ARMS.index("treatment")], cell[ARMS.index("holdout")]
        n_t, n_h, var_t, var_h, how = arm_sizes(float(treated[_STAT["n"]]), float(held[_STAT["n"]]),
                                               float(noise_var[_STAT["n"]]), holdout_share, units)
        entry: dict[str, Any] = {"segment": segment, "action": action, "channel": channels.get(action),
                                 "cost": costs.get(action), "n_treated": max(n_t, 0.0), "n_control": max(n_h, 0.0),
                                 "outcome": plan.outcome}
        if min(n_t, n_h) < plan.min_arm:
            entry.update({"uplift": None, "ci_low": None, "ci_high": None, "roi": None,
                          "note": f"fewer than {plan.min_arm} users in an arm: no estimate"})
            entries.append(entry)
            continue
        entry["arm_sizes"] = how
        figures = {}
        for outcome in OUTCOMES:
            m_t, v_t = _arm(treated, n_t, var_t, outcome, noise_var, scale)
            m_h, v_h = _arm(held, n_h, var_h, outcome, noise_var, scale)
            se = math.sqrt(v_t + v_h)
            figures[outcome] = {"treatment": m_t, "holdout": m_h, "uplift": m_t - m_h,
                                "ci_low": m_t - m_h - Z95 * se, "ci_high": m_t - m_h + Z95 * se, "se": se}
        head = figures[plan.outcome]
        entry.update({"uplift": head["uplift"], "ci_low": head["ci_low"], "ci_high": head["ci_high"],
                      "outcomes": figures})
        cost = costs.get(action)
        revenue = figures["revenue"]
        if cost:
            roi = [(plan.margin * revenue[k] - cost) / cost for k in ("uplift", "ci_low", "ci_high")]
            entry.update({"roi": roi[0], "roi_ci_low": roi[1], "roi_ci_high": roi[2],
                          "incremental_revenue": revenue["uplift"] * max(n_t, 0.0),
                          "campaign_cost": cost * max(n_t, 0.0)})
        else:
            entry["roi"] = None
        entries.append(entry)
    return entries


def run_effects(grid: Grid, plan: EffectsPlan, costs: dict[str, float], channels: dict[str, str],
                holdout_share: float | None = None, nodes: list[int] | None = None) -> dict[str, Any]:
    """Run the measurement of the module doc; returns the ``effects.json`` content. ``costs`` and
    ``channels`` per action and ``holdout_share`` come from the federation's playbook."""
    if not plan.segments or not plan.actions:
        raise ValueError("the measurement needs its cells: the segments and the actions to measure")
    if plan.campaign_date is None:
        raise ValueError("the measurement needs the campaign day")
    nodes = nodes or wait_for_units(grid, plan.min_units, plan.timeout_s)
    run_id = "effects-" + uuid.uuid4().hex[:12]
    delta = plan.delta if plan.delta is not None else default_delta(plan.population)
    scales = effects_scales(plan.epsilon, delta, plan.outcome) if plan.epsilon else []
    config = ConfigRecord({
        "cutoff": plan.campaign_date.isoformat(), "campaign-date": plan.campaign_date.isoformat(),
        "horizon-days": plan.window_days, "window-days": plan.window_days, "retention-days": plan.retention_days,
        "segment-column": plan.segment_column, "segments": list(plan.segments), "actions": list(plan.actions),
        "laplace-scales": scales, "clip": plan.revenue_clip, "dataset": plan.dataset, "model": "mlp", protocol.RUN_ID: run_id})
    privacy: dict[str, Any] = {"epsilon": None, "delta": None}
    if plan.epsilon:
        release = effects_release(scales)
        stated = epsilon([release], delta)
        accepted = agree_privacy(grid, nodes, run_id, "effects", delta, stated, [release], config, plan.timeout_s)
        log(INFO, "effects: privacy plan accepted by %d units, epsilon %.4f, delta %g", len(accepted), stated, delta)
        privacy = {"epsilon": stated, "delta": delta, "noise_multiplier": release.noise_multiplier,
                   "mechanism": "laplace", "laplace_scale_per_statistic": dict(zip(STATS, scales)),
                   "sensitivity": "one user changes the five statistics of one cell and arm by at most 1 each "
                   "(revenue clipped, in units of the clip): L1 sensitivity sum 1 / b over unit-scale "
                   "noise, noise multiplier 1 / sum b^-1",
                   "revenue_clip": plan.revenue_clip, "accountant": "RDP (dp-accounting); units add the noise",
                   "units_accepted": {u["unit"]: u["epsilon"] for u in accepted.values()}}
    cells = cell_names(list(plan.segments), list(plan.actions))
    shape = (len(cells), len(ARMS), len(STATS))
    if plan.secagg:
        total, units, noise_units, secure = _secure_sum(grid, nodes, plan, config, shape, scales)
        privacy["secure_aggregation"] = secure
    else:
        answers = ask(grid, nodes, protocol.EFFECTS, RecordDict({protocol.CONFIG: config}), plan.timeout_s)
        total = np.sum([np.asarray(c[protocol.METRICS]["stats"], dtype=float).reshape(shape)
                        for c in answers.values()], axis=0)
        units = noise_units = len(answers)
    # a Laplace variable of scale b has variance 2 b^2; without secure aggregation every unit adds
    # it in full (noise_units = units), with it the sum of m shares sized for t has m / t of it
    noise_var = noise_units * 2.0 * np.square(scales) if scales else None
    # revenue comes in units of its clip under DP and under secure aggregation
    revenue_scale = plan.revenue_clip if (scales or plan.secagg) else 1.0
    effects = estimate_effects(total, cells, plan, costs, channels, noise_var, revenue_scale, holdout_share, units)
    return {"effects": effects, "privacy": privacy, "units": units, "plan": plan.model_dump(mode="json"),
            "interval": "95%, normal approximation; sampling (Neyman) plus, under DP, the units' noise"}


def _secure_sum(grid: Grid, nodes: list[int], plan: EffectsPlan, config: ConfigRecord, shape: tuple[int, ...],
                scales: list[float]) -> tuple[np.ndarray, int, float, dict[str, Any]]:
    """The units' tables summed by secure aggregation (:class:`privacy.secagg.flower.SecAggAggregator`
    on ``query.effects``): the coordinator gets only the sum over the units in U3, and every unit
    refuses to unmask a U3 of fewer than ``t`` units (the settings' ``min_survivors``, from
    ``plan.secagg_survivors``, pinned when the units advertise). Returns the sum, its unit count
    ``m``, the noise in units of one full Laplace release (``m / t``: each unit added a share sized
    for ``t``) and the round's facts. ``t`` = all units asked (the default) gives exactly one
    Laplace release but no tolerance of a unit dropping mid-round (the measurement then fails and
    is run again); a lower ``t`` tolerates ``m - t`` dropouts at ``m / t`` of the noise variance.

    The clip range bounds every entry of a unit's table: at most ``population`` users per arm,
    revenue clipped at ``revenue_clip`` and in units of it (also without DP), plus the noise share
    (a unit refuses a table beyond it)."""
    from flwr.app import ArrayRecord

    from privacy.secagg.config import SecAggConfig
    from privacy.secagg.flower import SecAggAggregator

    bound = float(2 * plan.population + 1000.0 * max(scales, default=0.0) + 1000.0)
    # t as the plan asks, but at most a unit's neighbour count k: a unit masks its table only when
    # t of its k neighbours shared keys (with 3 units k = 2, so t = 2)
    degree = SecAggConfig().degree_for(len(nodes))
    wanted = plan.secagg_threshold
    t_count = int(wanted) if wanted >= 1 else math.ceil(wanted * (degree + 1))
    survivors = plan.secagg_survivors
    floor = int(survivors) if survivors > 1 else math.ceil(survivors * len(nodes))
    if floor > len(nodes):
        raise FedsegError(f"--secagg-survivors {survivors:g} asks for {floor} units; only {len(nodes)} are connected")
    settings = SecAggConfig(threshold=max(2, min(t_count, degree)), clip_range=bound, min_survivors=floor)
    record = RecordDict({protocol.ARRAYS: ArrayRecord([np.zeros(int(np.prod(shape)))]), protocol.CONFIG: config})
    aggregator = SecAggAggregator(settings, min_units=max(3, plan.min_units), piggyback=False,
                                  message_type=protocol.EFFECTS)
    total, u3, facts = aggregator.run_round(grid, nodes, record, plan.timeout_s)
    shared = int(facts["shared"])
    threshold, t = settings.threshold_for(shared), settings.survivors_for(shared)
    log(INFO, "effects: secure sum over %d units (threshold %d, noise shares sized for %d)", len(u3), threshold, t)
    secure = {"units_summed": len(u3), "threshold": threshold, "min_survivors": t, "clip_range": bound, "noise": "each unit adds a share (difference of two "
              "Gamma(1/t, b) variables, t = min_survivors) so any t shares sum to Laplace(b)", **facts}
    total = np.asarray(total, dtype=float).reshape(shape)
    if not scales and facts["error_bound"] < 0.5:  # exact sums: the counts are whole numbers again
        counts = [STATS.index(s) for s in ("n", "conversions", "retained")]
        total[..., counts] = np.rint(total[..., counts])
    return total, len(u3), len(u3) / t, secure
