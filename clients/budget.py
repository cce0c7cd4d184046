"""A unit's own privacy budget: the unit refuses to take part in a run that would exceed it.

The coordinator's ledger (:mod:`privacy.ledger`) refuses runs that overspend; a unit on its
own premises should not have to trust that. A SuperNode started with
``--node-config "epsilon-budget=4.0"`` checks every training message:

- a run without differential privacy (``privacy = "none"``) is refused: its epsilon is
  unbounded;
- in user mode the unit recomputes the epsilon of its own DP-SGD from the parameters it is
  asked to apply (noise multiplier z, sampling rate q, steps per round x planned rounds,
  delta) with its own accountant (:func:`privacy.accounting.epsilon`, RDP), and refuses when
  that, or the coordinator's stated total ``epsilon-planned`` (which adds the scaler query
  and the evaluation releases), exceeds the budget;
- in client mode the unit cannot recompute the coordinator's noise; it checks the stated
  total against the budget. Client-level DP over units bounds each end user's epsilon too
  (all of a user's rows sit in one unit).

Epsilon is per end user of this unit, for the delta the run states.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedseg.config import RoundConfig


class UnitBudgetRefused(RuntimeError):
    """The run would spend more privacy than this unit allows."""


def unit_budget(node_config: Mapping[str, Any]) -> float | None:
    """The ``epsilon-budget`` of the node config, or None when the unit set none."""
    if "epsilon-budget" not in node_config:
        return None
    budget = float(node_config["epsilon-budget"])
    if not budget > 0:
        raise UnitBudgetRefused(f"node config epsilon-budget={budget}: must be a positive number")
    return budget


def own_training_epsilon(cfg: RoundConfig) -> float:
    """Epsilon of the DP-SGD this unit is asked to run over the planned rounds (user mode)."""
    from privacy.accounting import epsilon

    steps = cfg.steps_per_round * cfg.planned_rounds
    if cfg.noise_multiplier <= 0 or steps == 0 or cfg.delta <= 0:
        return float("inf")
    return epsilon(cfg.noise_multiplier, cfg.sample_rate, steps, cfg.delta)


def check_unit_budget(node_config: Mapping[str, Any], cfg: RoundConfig) -> float | None:
    """Raise :class:`UnitBudgetRefused` if the run exceeds the unit's budget; return the epsilon
    the unit accepted (None when the unit set no budget)."""
    budget = unit_budget(node_config)
    if budget is None:
        return None
    if cfg.privacy == "none":
        raise UnitBudgetRefused(f"this unit allows epsilon <= {budget} per user; the run has no "
                                "differential privacy (privacy = 'none'). Run with --privacy user or client.")
    stated = cfg.epsilon_planned if cfg.epsilon_planned > 0 else float("inf")
    spent = max(own_training_epsilon(cfg), stated) if cfg.privacy == "user" else stated
    if spent > budget:
        raise UnitBudgetRefused(f"the run would spend epsilon {spent:.3f} per user (delta {cfg.delta:g}) over "
                                f"{cfg.planned_rounds} rounds; this unit allows {budget}. Lower the rounds or "
                                "the target epsilon, or raise epsilon-budget in the unit's configuration.")
    return spent


def check_segmentation_budget(node_config: Mapping[str, Any], config: Mapping[str, Any]) -> None:
    """The same rule for a federated segmentation step: ``epsilon-planned`` is the run's total
    (zero-concentrated DP converted at ``delta``, see :mod:`server.segmentation`); 0 means no noise."""
    budget = unit_budget(node_config)
    if budget is None:
        return
    stated = float(config.get("epsilon-planned", 0.0))
    if stated <= 0:
        raise UnitBudgetRefused(f"this unit allows epsilon <= {budget} per user; the segmentation run adds "
                                "no noise. Run it with --epsilon.")
    if stated > budget:
        raise UnitBudgetRefused(f"the segmentation run would spend epsilon {stated:.3f} per user; this unit "
                                f"allows {budget}.")
