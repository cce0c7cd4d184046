"""How the coordinator applies a privacy mode to a training run.

- ``none``: exact aggregates, weights by number of training users.
- ``client``: Flower's :class:`~flwr.serverapp.strategy.DifferentialPrivacyServerSideFixedClipping`
  wraps the strategy: each unit's update is clipped to ``clipping_norm`` and Gaussian noise
  ``z * clipping_norm / m`` is added to the mean of the ``m`` sampled updates. Units weigh
  equally (their user counts are private).
- ``user``: every unit runs DP-SGD (Opacus) and adds noise to what it reports
  (:mod:`privacy.training_dp` has the plan and the accounting).

Every epsilon comes from :mod:`privacy.training_dp` (Google's dp-accounting), recomputed
from the public parameters after each round.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from privacy.training_dp import (
    DEFAULT_SCALER_Z,
    SCALER_SENSITIVITY,
    UserLevelPlan,
    _bisect,
    client_level_epsilon,
)


def default_delta(n_users: float) -> float:
    """The largest power of ten strictly below ``1 / n_users``."""
    n = max(float(n_users), 1.0)
    exponent = math.floor(math.log10(1.0 / n))
    delta = 10.0 ** exponent
    return delta if delta < 1.0 / n else 10.0 ** (exponent - 1)


@dataclass
class PrivacyState:
    """The calibrated privacy of one run (kept in the checkpoint, so a resumed run reuses it)."""

    mode: str = "none"
    delta: float = 0.0
    noise_multiplier: float = 0.0
    scaler_sigma: float = 0.0
    eval_sigma: float = 0.0
    sample_rate: float = 0.0
    steps_per_round: int = 0
    rounds: int = 0
    max_grad_norm: float = 1.0
    clipping_norm: float = 1.0
    sampled_units: int = 0
    total_units: int = 0
    eval_every: int = 0
    target_epsilon: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def round_fields(self) -> dict[str, Any]:
        """Fields of :class:`fedseg.config.RoundConfig` the units need."""
        dp = self.mode != "none"
        return {"privacy": self.mode, "noise_multiplier": self.noise_multiplier if self.mode == "user" else 0.0,
                "max_grad_norm": self.max_grad_norm, "sample_rate": self.sample_rate,
                "steps_per_round": self.steps_per_round, "scaler_sigma": self.scaler_sigma,
                "eval_sigma": self.eval_sigma, "delta": self.delta if dp else 0.0,
                "planned_rounds": self.rounds if dp else 0,
                "epsilon_planned": self.epsilon_after(self.rounds) if dp and self.rounds else 0.0}

    def user_plan(self) -> UserLevelPlan:
        return UserLevelPlan(target_epsilon=self.target_epsilon or 1.0, delta=self.delta,
                             sample_rate=self.sample_rate, steps_per_round=self.steps_per_round,
                             rounds=self.rounds, max_grad_norm=self.max_grad_norm,
                             scaler_z=self.scaler_sigma / SCALER_SENSITIVITY,
                             noise_multiplier=self.noise_multiplier, eval_sigma=self.eval_sigma,
                             eval_every=self.eval_every)

    def evaluates_after(self, server_round: int) -> bool:
        """Whether federated evaluation runs after ``server_round`` (0: the initial model).

        Without user-level DP every round is evaluated. With it, evaluation is a release about
        the test users, so it follows the plan's schedule (by default: after the last round).
        """
        if self.mode != "user":
            return True
        return server_round > 0 and self.user_plan().evaluates_after(server_round)

    def epsilon_after(self, rounds_done: int, accountant: str = "rdp") -> float:
        """Epsilon spent after ``rounds_done`` rounds (per end user; per unit in client mode)."""
        if self.mode == "user":
            plan = self.user_plan()
            if accountant == "pld":
                return plan.train_epsilon(self.noise_multiplier, steps=max(rounds_done, 0) * self.steps_per_round,
                                          accountant="pld")
            return plan.epsilon_after(rounds_done)
        if self.mode == "client":
            if rounds_done == 0:
                return 0.0
            return client_level_epsilon(self.noise_multiplier, self.sampled_units, self.total_units,
                                        rounds_done, self.delta, accountant=accountant)  # type: ignore[arg-type]
        return 0.0

    def statement(self, rounds_done: int) -> dict[str, Any]:
        """The ``privacy`` section of summary.json."""
        if self.mode == "none":
            return {"mode": "none", "epsilon": None}
        out: dict[str, Any] = {
            "mode": self.mode,
            "epsilon": self.epsilon_after(rounds_done),
            "epsilon_pld": self.epsilon_after(rounds_done, "pld"),
            "delta": self.delta,
            "accountant": "RDP (dp-accounting); PLD beside it",
            "noise_multiplier": self.noise_multiplier,
            "rounds": rounds_done,
            "target_epsilon": self.target_epsilon,
        }
        if self.mode == "user":
            out.update({
                "unit_of_privacy": "end user (add/remove one user's data)",
                "mechanism": "DP-SGD (Opacus, Poisson sampling, per-user clipping) + Gaussian scaler query; "
                             "test users: Gaussian evaluation releases",
                "sample_rate": self.sample_rate, "steps": rounds_done * self.steps_per_round,
                "steps_per_round": self.steps_per_round, "max_grad_norm": self.max_grad_norm,
                "scaler_noise_multiplier": self.scaler_sigma / SCALER_SENSITIVITY,
                "eval_sigma": self.eval_sigma,
                "epsilon_training_users": self.user_plan().train_epsilon(
                    self.noise_multiplier, steps=rounds_done * self.steps_per_round),
                "epsilon_test_users": self.user_plan().eval_epsilon(self.user_plan().evaluations_done(rounds_done)),
                "evaluations": self.user_plan().evaluations_done(rounds_done),
            })
        else:
            out.update({
                "unit_of_privacy": "business unit (add/remove one unit's whole update)",
                "mechanism": "Flower DifferentialPrivacyServerSideFixedClipping (Gaussian)",
                "sample_rate": self.sampled_units / self.total_units, "steps": rounds_done,
                "clipping_norm": self.clipping_norm,
                "note": "client-level DP protects a whole unit; meaningful epsilons need many units",
            })
        return out

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "PrivacyState":
        return cls(**data)


def calibrate(plan: Any, n_users: float, total_units: int, sampled_units: int) -> PrivacyState:
    """Noise for ``plan`` (a :class:`server.training.TrainingPlan`) once the federation is known."""
    state = PrivacyState(mode=plan.privacy, rounds=plan.num_rounds, max_grad_norm=plan.max_grad_norm,
                         clipping_norm=plan.clipping_norm, total_units=total_units, sampled_units=sampled_units,
                         target_epsilon=plan.target_epsilon, eval_every=plan.dp_eval_every)
    if plan.privacy == "none":
        return state
    state.delta = plan.delta or default_delta(n_users)
    state.scaler_sigma = DEFAULT_SCALER_Z * SCALER_SENSITIVITY
    if plan.privacy == "client":
        if plan.noise_multiplier is not None:
            state.noise_multiplier = plan.noise_multiplier
        else:
            target = plan.target_epsilon or 8.0
            state.noise_multiplier = _bisect(
                lambda z: client_level_epsilon(z, sampled_units, total_units, plan.num_rounds, state.delta), target)
            state.target_epsilon = target
        return state
    steps_per_round = max(1, round(plan.local_epochs / plan.sample_rate))
    state.sample_rate = plan.sample_rate
    state.steps_per_round = steps_per_round
    user = UserLevelPlan(target_epsilon=plan.target_epsilon or 8.0, delta=state.delta, sample_rate=plan.sample_rate,
                         steps_per_round=steps_per_round, rounds=plan.num_rounds, max_grad_norm=plan.max_grad_norm,
                         scaler_z=DEFAULT_SCALER_Z, eval_every=plan.dp_eval_every)
    if plan.noise_multiplier is not None:
        user = user.model_copy(update={"noise_multiplier": plan.noise_multiplier})
        z_eval = _bisect(lambda v: user.model_copy(update={"eval_sigma": 2 * v}).eval_epsilon(
            user.evaluations_done(plan.num_rounds)),
                         user.train_epsilon(plan.noise_multiplier))
        user = user.model_copy(update={"eval_sigma": 2 * z_eval})
        state.target_epsilon = user.train_epsilon(plan.noise_multiplier)
    else:
        user = user.calibrate()
        state.target_epsilon = user.target_epsilon
    state.noise_multiplier = user.noise_multiplier
    state.eval_sigma = user.eval_sigma
    return state
