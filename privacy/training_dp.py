"""The privacy of a federated churn-training run: which releases it makes, their noise, their cost.

The unit of privacy is the **end user** (add/remove one user's data; every user is in one unit
and contributes one training example). Every epsilon comes from :mod:`privacy.accounting`.

``user`` mode (user-level DP, the cross-silo default; every unit adds its own noise, so the
guarantee holds against the coordinator) has three kinds of release about a user:

1. the **feature standardisation** query: each unit adds Gaussian noise with standard
   deviation ``z_scaler * 5`` to its count, sums and sums of squares of the features scaled to
   [-1, 1] by fixed caps (:data:`clients.dataset.FEATURE_CAPS`); L2 sensitivity
   ``sqrt(1 + d + d) = 5`` for ``d = 12`` features. Touches the training users;
2. **DP-SGD** in every unit (Opacus): Poisson sampling with rate ``q`` (drawn from OS entropy,
   see :mod:`clients.training`), per-user clipping to ``max_grad_norm`` and noise
   ``z * max_grad_norm``, ``steps_per_round`` steps in each of ``rounds`` rounds. Training users;
3. **evaluation** of the global model on the unit's *test* users: histograms and sums with
   Gaussian noise, one release per scheduled evaluation (every ``eval_every`` rounds and after
   the last round). Churn: L2 sensitivity 2 (one histogram count, the count, the Brier sum and
   the log-loss sum clipped at :data:`DP_LOSS_CLIP` and noised ``DP_LOSS_CLIP`` times as much).
   CLV: L2 sensitivity 3 (the count, four money sums and one count and one spend entry in each of
   two value histograms, money clipped and expressed in units of the clip;
   :mod:`fedseg.value_metrics`).

The run's per-user epsilon is the larger of the training users' and the test users' epsilons;
``calibrate`` sets z and the evaluation noise so that both meet the target.

``client`` mode (central client-level DP): each unit's update is clipped to ``clipping_norm``,
the coordinator adds Gaussian noise ``z * clipping_norm`` to the sum of the updates it received
and divides by the expected number of units per round (a fixed public denominator), with units
Poisson-sampled at rate ``unit_sample_rate`` (1: all units every round). The unit of privacy is
a whole unit (so also each of its users); the noise is added by the coordinator, so this
guarantee protects units from each other and from whoever receives the model, **not** from the
coordinator. Nothing else about the data is sent: features are standardised with public
bounds (no start-up query) and no federated evaluation is released.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from fedseg.config import PrivacyMode, Target
from fedseg.value_metrics import DP_SENSITIVITY as CLV_EVAL_SENSITIVITY
from privacy.accounting import Release, calibrate, delta_for, epsilon, group_epsilons

#: L2 sensitivity of the scaler release: count (1) + sums (sqrt 12) + sums of squares (sqrt 12).
SCALER_SENSITIVITY = 5.0
#: Noise multiplier of the scaler release (relative to its sensitivity); costs little epsilon.
DEFAULT_SCALER_Z = 20.0
#: Score-histogram bins in DP evaluation (coarse, so noise per bin matters less).
DP_EVAL_BINS = 20
#: Per-user log loss is clipped to this before summing in DP evaluation.
DP_LOSS_CLIP = 10.0
#: L2 sensitivity of one evaluation release, in units of its per-entry noise (see module doc).
EVAL_SENSITIVITY = 2.0


def scaler_release(scaler_sigma: float) -> Release:
    """The start-up standardisation query of one unit with per-entry noise ``scaler_sigma``."""
    return Release(noise_multiplier=scaler_sigma / SCALER_SENSITIVITY, group="train", task="scaler")


def dpsgd_release(noise_multiplier: float, sample_rate: float, steps: int) -> Release:
    """``steps`` DP-SGD steps at noise multiplier z and Poisson rate q (training users)."""
    return Release(noise_multiplier=noise_multiplier, sample_rate=sample_rate, count=steps, group="train",
                   task="training")


def client_release(noise_multiplier: float, unit_sample_rate: float) -> Release:
    """One client-level round: a Poisson-sampled Gaussian on the sum of clipped unit updates (the
    coordinator adds the noise; a unit records the stated release)."""
    return Release(noise_multiplier=noise_multiplier, sample_rate=unit_sample_rate,
                   task="training (client-level, noise added by the coordinator)")


def eval_sensitivity(target: Target) -> float:
    """L2 sensitivity of one evaluation release of ``target``, in units of its per-entry noise."""
    return CLV_EVAL_SENSITIVITY if target == "clv" else EVAL_SENSITIVITY


def evaluation_release(eval_sigma: float, count: int = 1, target: Target = "churn") -> Release:
    """``count`` noisy evaluation releases with per-entry noise ``eval_sigma`` (test users)."""
    return Release(noise_multiplier=eval_sigma / eval_sensitivity(target), count=count, group="test",
                   task="evaluation")


class TrainingPrivacy(BaseModel):
    """The calibrated privacy of one training run (kept in the checkpoint, so a resumed run reuses it)."""

    mode: PrivacyMode = "none"
    target: Target = Field("churn", description="What the run learns (sets the evaluation's sensitivity).")
    delta: float = Field(0.0, ge=0, lt=1)
    rounds: int = Field(0, ge=0, description="Training rounds the noise is calibrated for.")
    target_epsilon: float | None = None
    noise_multiplier: float = Field(0.0, ge=0, description="DP-SGD z (user); z on the sum of clipped updates (client).")
    sample_rate: float = Field(0.0, ge=0, le=1, description="DP-SGD Poisson rate q (user).")
    steps_per_round: int = Field(0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    scaler_sigma: float = Field(0.0, ge=0, description="Per-entry noise of the scaler release (user).")
    eval_sigma: float = Field(0.0, ge=0, description="Per-entry noise of each evaluation release (user).")
    eval_every: int = Field(0, ge=0, description="Evaluate every this many rounds (0: after the last round only).")
    clipping_norm: float = Field(1.0, gt=0, description="Update clipping norm C per unit (client).")
    unit_sample_rate: float = Field(1.0, gt=0, le=1, description="Poisson rate at which units are sampled (client).")

    # ------------------------------------------------------------------ schedule
    @property
    def is_private(self) -> bool:
        return self.mode != "none"

    @property
    def sends_scaler_query(self) -> bool:
        """Client-level DP standardises with public bounds: no start-up query about the units."""
        return self.mode != "client"

    def evaluates_after(self, server_round: int) -> bool:
        """Whether federated evaluation runs after ``server_round`` (0: the initial model).

        Without DP every round is evaluated. With user-level DP evaluation is a release about
        the test users and follows the schedule (by default: after the last round only). With
        client-level DP no evaluation is released.
        """
        if self.mode == "none":
            return True
        if self.mode == "client":
            return False
        return server_round > 0 and (server_round == self.rounds or
                                     (self.eval_every > 0 and server_round % self.eval_every == 0))

    def evaluations_done(self, rounds_done: int) -> int:
        return sum(self.evaluates_after(r) for r in range(1, rounds_done + 1))

    # ------------------------------------------------------------------ releases
    def round_releases(self, server_round: int) -> list[Release]:
        """What one unit releases about its users in ``server_round`` (0: the start-up query)."""
        if self.mode == "user":
            if server_round == 0:
                return [scaler_release(self.scaler_sigma)]
            out = [dpsgd_release(self.noise_multiplier, self.sample_rate, self.steps_per_round)]
            if self.evaluates_after(server_round):
                out.append(evaluation_release(self.eval_sigma, target=self.target))
            return out
        if self.mode == "client" and server_round > 0:
            return [client_release(self.noise_multiplier, self.unit_sample_rate)]
        return []

    def releases(self, rounds_done: int, first: int = 0) -> list[Release]:
        """Every release from round ``first`` (0: the start-up query) to round ``rounds_done``."""
        return [r for k in range(first, rounds_done + 1) for r in self.round_releases(k)]

    def epsilon_after(self, rounds_done: int, accountant: str = "rdp") -> float:
        """Per-user (client mode: per-unit) epsilon of the planned releases up to ``rounds_done``."""
        if not self.is_private:
            return 0.0
        return epsilon(self.releases(rounds_done), self.delta, accountant)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ calibration
    @classmethod
    def plan(cls, mode: PrivacyMode, rounds: int, delta: float, target_epsilon: float | None = None,
             noise_multiplier: float | None = None, sample_rate: float = 0.02, local_epochs: int = 1,
             max_grad_norm: float = 5.0, clipping_norm: float = 1.0, eval_every: int = 0,
             unit_sample_rate: float = 1.0, target: Target = "churn") -> "TrainingPrivacy":
        """Noise for every release so that the run's epsilon meets ``target_epsilon`` over
        ``rounds`` rounds (RDP accountant), or the epsilon of a fixed ``noise_multiplier``."""
        base = cls(mode=mode, target=target, rounds=rounds, delta=delta if mode != "none" else 0.0,
                   max_grad_norm=max_grad_norm,
                   clipping_norm=clipping_norm, eval_every=eval_every, unit_sample_rate=unit_sample_rate)
        if mode == "none":
            return base
        if (target_epsilon is None) == (noise_multiplier is None):
            raise ValueError("a DP run needs exactly one of a target epsilon and a noise multiplier")
        if mode == "client":
            def train(z: float) -> TrainingPrivacy:
                return base.model_copy(update={"noise_multiplier": z})
        else:
            steps = max(1, round(local_epochs / sample_rate))

            def train(z: float) -> TrainingPrivacy:
                return base.model_copy(update={"noise_multiplier": z, "sample_rate": sample_rate,
                                               "steps_per_round": steps,
                                               "scaler_sigma": DEFAULT_SCALER_Z * SCALER_SENSITIVITY})

        def training_only(z: float) -> list[Release]:
            return [r for r in train(z).releases(rounds) if r.group != "test"]

        if noise_multiplier is None:
            z = calibrate(training_only, target_epsilon, delta)  # type: ignore[arg-type]
        else:
            z = noise_multiplier
            target_epsilon = epsilon(training_only(z), delta)
        state = train(z).model_copy(update={"target_epsilon": target_epsilon})
        if mode == "user":
            evaluations = state.evaluations_done(rounds)
            sensitivity = eval_sensitivity(target)
            z_eval = calibrate(lambda v: [evaluation_release(v * sensitivity, evaluations, target)],
                               target_epsilon, delta)  # type: ignore[arg-type]
            state = state.model_copy(update={"eval_sigma": z_eval * sensitivity})
        return state

    @classmethod
    def for_plan(cls, plan: Any) -> "TrainingPrivacy":
        """The calibrated privacy of a :class:`fedseg.config.TrainingPlan` (delta: as given, or
        :func:`privacy.accounting.default_delta` of the plan's population)."""
        return cls.plan(plan.privacy, rounds=plan.num_rounds, delta=delta_for(plan.delta, plan.population),
                        target_epsilon=plan.target_epsilon, noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate,
                        local_epochs=plan.local_epochs, max_grad_norm=plan.max_grad_norm,
                        clipping_norm=plan.clipping_norm, eval_every=plan.dp_eval_every,
                        unit_sample_rate=plan.fraction_fit, target=plan.target)

    # ------------------------------------------------------------------ statement
    def statement(self, releases: list[Release]) -> dict[str, Any]:
        """The ``privacy`` section of summary.json for the releases actually made (a round re-sent
        after a crash counts twice): every figure from the accountant."""
        if not self.is_private:
            return {"mode": "none", "epsilon": None, "delta": None}
        groups = group_epsilons(releases, self.delta) if releases else {"all": 0.0}
        training = [r for r in releases if r.task.startswith("training")]
        rounds_done = len(training)
        out: dict[str, Any] = {
            "mode": self.mode,
            "epsilon": max(groups.values()),
            "epsilon_pld": epsilon(releases, self.delta, "pld") if releases else 0.0,
            "delta": self.delta,
            "accountant": "RDP (dp-accounting) over every release; PLD beside it",
            "noise_multiplier": self.noise_multiplier,
            "rounds": rounds_done,
            "target_epsilon": self.target_epsilon,
        }
        if self.mode == "user":
            out.update({
                "unit_of_privacy": "end user (add/remove one user's data)",
                "guarantee_holds_against": "the coordinator, other units and model recipients (units add all noise)",
                "mechanism": "DP-SGD (Opacus, Poisson sampling from OS entropy, per-user clipping) + Gaussian "
                             "scaler query; test users: Gaussian evaluation releases",
                "sample_rate": self.sample_rate, "steps": sum(r.count for r in training),
                "steps_per_round": self.steps_per_round, "max_grad_norm": self.max_grad_norm,
                "scaler_noise_multiplier": self.scaler_sigma / SCALER_SENSITIVITY,
                "eval_sigma": self.eval_sigma,
                "epsilon_training_users": groups.get("train", 0.0),
                "epsilon_test_users": groups.get("test", 0.0),
                "evaluations": sum(r.count for r in releases if r.task == "evaluation"),
            })
        else:
            out.update({
                "unit_of_privacy": "business unit (add/remove one unit's whole update)",
                "guarantee_holds_against": "other units and model recipients; NOT the coordinator, which adds the "
                                           "noise and sees each update (or, with secure aggregation, their sum)",
                "mechanism": "clipped unit updates, Gaussian noise z*C on their sum added by the coordinator, "
                             "fixed denominator (expected units per round); Poisson sampling of units",
                "sample_rate": self.unit_sample_rate, "steps": rounds_done,
                "clipping_norm": self.clipping_norm,
                "note": "client-level DP protects a whole unit; meaningful epsilons need many units",
            })
        return out
