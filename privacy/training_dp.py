"""Privacy plans for federated churn training: what noise each mode adds and what it costs.

The unit of privacy is the **end user** (add/remove one user's data; every user is in one
unit and contributes one training example). Accounting uses Google's ``dp-accounting``
(RDP accountant for the figures fedseg states; PLD is reported beside it as the tighter
estimate).

``user`` mode (user-level DP, the cross-silo default) has three releases about a user:

1. the **feature standardisation** query: each unit adds Gaussian noise with standard
   deviation ``z_scaler * Delta`` to its count, sums and sums of squares of the features scaled
   to [-1, 1] by fixed caps (:data:`clients.dataset.FEATURE_CAPS`), with
   ``Delta = sqrt(1 + d + d) = 5`` for ``d = 12`` features;
2. **DP-SGD** in every unit (Opacus): Poisson sampling with rate ``q``, per-example (= per-user)
   clipping to ``max_grad_norm`` and noise ``z * max_grad_norm``, ``steps_per_round`` steps in
   each of ``rounds`` rounds;
3. **evaluation** of the global model on the unit's *test* users (disjoint from the training
   users): histograms and sums with Gaussian noise, one release per scheduled evaluation
   (every ``eval_every`` rounds and after the last round; by default after the last only).

A training user is in (1) and (2): composed as one ``ComposedDpEvent``; a test user is in (3)
only. By parallel composition over disjoint users the run's per-user epsilon is the larger of
the two; both are calibrated to the target.

``client`` mode (client-level DP through Flower's DP strategy wrappers) protects a whole
unit's update: ``q = sampled units / units``, ``rounds`` Gaussian releases with noise
multiplier ``z``. It gives useful epsilons only with many units (see docs/privacy.md).
"""

from __future__ import annotations

import math
from typing import Literal

import dp_accounting as dpa
from absl import logging as absl_logging
from pydantic import BaseModel, Field

from privacy.accounting import epsilon as gaussian_epsilon

# dp-accounting logs a warning for every RDP order it drops as non-convergent; the orders it
# keeps still give a valid (conservative) bound, so keep the log readable.
absl_logging.set_verbosity(absl_logging.ERROR)

AccountantName = Literal["rdp", "pld"]
#: L2 sensitivity of the scaler release: count (1) + sums (sqrt 12) + sums of squares (sqrt 12).
SCALER_SENSITIVITY = 5.0
#: Noise multiplier of the scaler release (relative to its sensitivity); costs little epsilon.
DEFAULT_SCALER_Z = 20.0
#: Score-histogram bins in DP evaluation (coarse, so noise per bin matters less).
DP_EVAL_BINS = 20
#: Per-user log loss is clipped to this before summing in DP evaluation.
DP_LOSS_CLIP = 10.0


def _accountant(name: AccountantName) -> dpa.PrivacyAccountant:
    if name == "pld":
        return dpa.pld.PLDAccountant()
    return dpa.rdp.RdpAccountant()


def training_event(noise_multiplier: float, sample_rate: float, steps: int, scaler_z: float) -> dpa.DpEvent:
    """One training user's releases: the noisy scaler query, then ``steps`` DP-SGD steps."""
    sgd = dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(sample_rate, dpa.GaussianDpEvent(noise_multiplier)),
                                  steps)
    return dpa.ComposedDpEvent([dpa.GaussianDpEvent(scaler_z), sgd])


def event_epsilon(event: dpa.DpEvent, delta: float, accountant: AccountantName = "rdp") -> float:
    """epsilon of ``event`` at ``delta`` from dp-accounting."""
    return float(_accountant(accountant).compose(event).get_epsilon(delta))


def _bisect(fn, target: float, lo: float = 0.05, hi: float = 200.0) -> float:  # noqa: ANN001
    """Smallest noise multiplier z in [lo, hi] with fn(z) <= target (fn decreasing in z)."""
    if fn(hi) > target:
        raise ValueError(f"even noise multiplier {hi} cannot reach epsilon {target}; plan fewer steps or rounds")
    if fn(lo) <= target:
        return lo
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        if fn(mid) <= target:
            hi = mid
        else:
            lo = mid
        if hi / lo < 1 + 1e-4:
            break
    return hi


class UserLevelPlan(BaseModel):
    """Noise of every release of a user-level DP training run, calibrated to ``target_epsilon``."""

    target_epsilon: float = Field(gt=0)
    delta: float = Field(gt=0, lt=1)
    sample_rate: float = Field(gt=0, le=1, description="Poisson rate q of DP-SGD in every unit.")
    steps_per_round: int = Field(ge=1)
    rounds: int = Field(ge=1)
    max_grad_norm: float = Field(1.0, gt=0, description="Per-user gradient clipping norm C.")
    scaler_z: float = Field(DEFAULT_SCALER_Z, gt=0)
    noise_multiplier: float = Field(0.0, description="DP-SGD z (set by calibrate).")
    eval_sigma: float = Field(0.0, description="Per-entry noise of each evaluation release (set by calibrate).")
    eval_every: int = Field(0, ge=0, description="Evaluate every this many rounds (0: after the last round only).")
    epsilon_train_rdp: float = 0.0
    epsilon_train_pld: float = 0.0
    epsilon_eval_rdp: float = 0.0

    @property
    def steps(self) -> int:
        return self.rounds * self.steps_per_round

    def evaluates_after(self, server_round: int) -> bool:
        """Whether the schedule evaluates after ``server_round`` (always after the last)."""
        return server_round == self.rounds or (self.eval_every > 0 and server_round % self.eval_every == 0)

    def evaluations_done(self, rounds_done: int) -> int:
        """Evaluation releases after ``rounds_done`` rounds."""
        return sum(self.evaluates_after(r) for r in range(1, rounds_done + 1))

    def train_epsilon(self, noise_multiplier: float, steps: int | None = None, accountant: AccountantName = "rdp") -> float:
        """epsilon of a training user after ``steps`` DP-SGD steps (default: the whole plan)."""
        event = training_event(noise_multiplier, self.sample_rate, self.steps if steps is None else steps,
                               self.scaler_z)
        return event_epsilon(event, self.delta, accountant)

    def eval_epsilon(self, releases: int, accountant: AccountantName = "rdp") -> float:
        """epsilon of a test user after ``releases`` noisy evaluations."""
        if self.eval_sigma <= 0:
            return math.inf
        # Sensitivity: one histogram count, n, the Brier sum (each <= 1) and the clipped log
        # loss, whose noise is scaled by DP_LOSS_CLIP: per-release noise multiplier sigma/2.
        z = self.eval_sigma / 2.0
        return event_epsilon(dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(z), releases), self.delta, accountant)

    def calibrate(self) -> "UserLevelPlan":
        """Smallest noise that keeps every user's epsilon within the target (RDP accountant)."""
        z = _bisect(lambda v: self.train_epsilon(v), self.target_epsilon)
        releases = self.evaluations_done(self.rounds)
        z_eval = _bisect(lambda v: event_epsilon(dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(v), releases),
                                                 self.delta), self.target_epsilon)
        plan = self.model_copy(update={"noise_multiplier": z, "eval_sigma": 2.0 * z_eval})
        plan.epsilon_train_rdp = plan.train_epsilon(z)
        plan.epsilon_train_pld = plan.train_epsilon(z, accountant="pld")
        plan.epsilon_eval_rdp = plan.eval_epsilon(releases)
        return plan

    def epsilon_after(self, rounds_done: int) -> float:
        """Per-user epsilon spent after ``rounds_done`` completed rounds (RDP; max over user groups)."""
        if rounds_done <= 0:
            return event_epsilon(dpa.GaussianDpEvent(self.scaler_z), self.delta)
        train = self.train_epsilon(self.noise_multiplier, steps=rounds_done * self.steps_per_round)
        evaluations = self.evaluations_done(rounds_done)
        return max(train, self.eval_epsilon(evaluations) if evaluations else 0.0)


def client_level_epsilon(noise_multiplier: float, sampled_units: int, total_units: int, rounds: int,
                         delta: float, accountant: AccountantName = "rdp") -> float:
    """Unit-level epsilon of Flower's fixed-clipping DP wrapper after ``rounds`` releases.

    The sampling is treated as Poisson with rate ``sampled / total`` when fewer than all units
    are sampled (Flower samples a fixed number without replacement; see docs/privacy.md).
    """
    return gaussian_epsilon(noise_multiplier, sampled_units / total_units, rounds, delta, accountant=accountant)
