"""Configuration: every setting has one definition and one default, here.

- :class:`TrainingPlan`: a federated churn-training run (the coordinator's plan);
- :class:`SegmentationPlan`: a federated segmentation;
- :class:`FeatureConfig` / :class:`LifecycleRules`: features, labels and lifecycle rules.

Every field states its unit. Values arrive from the command line (whose defaults are read from
these models), from ``pyproject.toml``'s ``[tool.flwr.app.config]`` (``kebab-case`` keys, parsed
by :func:`plan_from_run_config` / :func:`segmentation_plan_from_run_config`; a test checks that its
names and defaults equal the models') or from sweep files; each path goes through these models
so a wrong value is a clear error at start, not a failure mid-round. What travels in messages
is in :mod:`fedseg.protocol`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from fedseg.datasets import CALIBRATION_END, HOLDOUT_DAYS
from fedseg.value_metrics import DEFAULT_CLIP

#: Per-user features the churn models read, in this order (see :mod:`clients.features`).
MODEL_FEATURES: Final = (
    "recency_days",
    "frequency",
    "monetary_total",
    "monetary_mean",
    "tenure_days",
    "active_days_7",
    "active_days_30",
    "active_days_90",
    "events_total",
    "ipi_mean",
    "ipi_std",
    "trend",
)

#: Lifecycle stages, in their natural order.
LIFECYCLE_STAGES: Final = ("introduction", "growth", "maturity", "decline")


class LifecycleRules(BaseModel):
    """Thresholds of the lifecycle rules (see :func:`clients.features.lifecycle_stage`).

    First matching rule wins: introduction, then decline, then growth, else maturity.
    """

    introduction_days: float = Field(
        30.0, gt=0, description="A user whose tenure is at most this many days is in introduction."
    )
    cadence_factor: float = Field(
        1.5, gt=0,
        description="Decline when days since the last purchase exceed this factor times the "
        "user's own longest past gap between purchase days.",
    )
    single_purchase_decline_days: float = Field(
        90.0, gt=0,
        description="Decline for a one-purchase-day user once this many days passed since it.",
    )
    inactive_decline_days: float = Field(
        60.0, gt=0,
        description="Decline for a user with no purchase once this many days passed since "
        "the last event of any type.",
    )
    decline_trend: float = Field(
        -0.5, ge=-1, le=0, description="Decline when the 30-day activity trend is at most this."
    )
    growth_trend: float = Field(
        0.2, ge=0, le=1, description="Growth when the 30-day activity trend is at least this."
    )


class FeatureConfig(BaseModel):
    """Where the history ends and how the churn label is defined.

    History is every event with ``ts`` before midnight at the end of ``cutoff`` (so the
    cutoff day is included). The reference time ``t_ref`` is that midnight. The churn label is
    1 when the user makes no purchase in the ``horizon_days`` days after ``t_ref``.
    """

    cutoff: dt.date = Field(description="Last day of the history (inclusive).")
    horizon_days: int = Field(
        273, ge=1, description="Length of the churn-label window after the cutoff, in days."
    )
    lifecycle: LifecycleRules = LifecycleRules()

    @property
    def t_ref(self) -> dt.datetime:
        """Midnight at the end of the cutoff day: history is ``ts < t_ref``."""
        return dt.datetime.combine(self.cutoff + dt.timedelta(days=1), dt.time())


ModelName = Literal["mlp", "gru"]
#: What a training run learns: ``churn`` (P(no purchase in the horizon)) or ``clv`` (spend in the
#: horizon, currency units; :class:`fedseg.models.ClvMLP`).
Target = Literal["churn", "clv"]
StrategyName = Literal["fedavg", "fedprox"]
PrivacyMode = Literal["none", "client", "user"]


#: Default upper bound on the end users of a federation whose size the coordinator cannot know
#: (deployment): it sets the default delta, 1e-7 (see :func:`privacy.accounting.default_delta`).
DEFAULT_POPULATION: Final = 1_000_000


class TrainingPlan(BaseModel):
    """Everything the coordinator needs for one federated training run.

    Defaults: the embedded default run, the bundled CDNOW log (calibration to 1997-09-30, label
    "buys again in the 273-day holdout"), MLP, FedAvg, 10 rounds, no differential privacy.
    """

    num_rounds: int = Field(10, ge=1, description="Federated rounds.")
    target: Target = Field("churn", description="churn (P(no purchase in the horizon)) or clv (spend in the "
                           "horizon, a hurdle model; MLP only).")
    model: ModelName = "mlp"
    strategy: StrategyName = "fedavg"
    local_epochs: int = Field(2, ge=1, description="Passes over local training users per round.")
    learning_rate: float = Field(0.005, gt=0, description="Adam learning rate.")
    batch_size: int = Field(64, ge=1)
    proximal_mu: float = Field(0.0, ge=0, description="FedProx weight (used with strategy fedprox).")
    min_available_units: int = Field(2, ge=1, description="Units that must be connected to start.")
    min_fit_units: int = Field(2, ge=1, description="Replies needed for a round to count.")
    fraction_fit: float = Field(1.0, gt=0, le=1, description="Share of units asked to train each round "
                                "(client-level DP: the Poisson rate at which units are sampled).")
    dataset: str = Field("cdnow", description="Bundled dataset for units without data of their own ('cdnow'; "
                         "'' in deployments, where every unit brings its events).")
    cutoff: dt.date = Field(CALIBRATION_END, description="Last day of the history (inclusive).")
    horizon_days: int = Field(HOLDOUT_DAYS, ge=1, description="Churn label window after the cutoff, days.")
    seed: int = Field(0, description="Model initialisation and (without user-level DP) local shuffling.")
    output_dir: Path = Field(Path("runs/flwr"), description="Checkpoint, rounds.jsonl and model.npz go here.")
    round_timeout_s: float = Field(600.0, gt=0, description="Seconds to wait for replies each round "
                                   "(a dead unit costs at most this).")
    connect_timeout_s: float = Field(600.0, gt=0, description="Seconds to wait for min-available-units at start.")
    privacy: PrivacyMode = Field("none", description="none, client (unit-level DP), user (user-level DP).")
    target_epsilon: float | None = Field(None, gt=0, description="Calibrate the noise to this epsilon "
                                         "per end user (user) or per unit (client) over the planned rounds.")
    noise_multiplier: float | None = Field(None, gt=0, description="Fixed noise multiplier instead of a target.")
    delta: float | None = Field(None, gt=0, lt=1, description="delta; default: the largest power of ten at most "
                                "1 / (10 x population).")
    population: int = Field(DEFAULT_POPULATION, ge=1, description="Upper bound on the end users over all units; "
                            "sets the default delta (simulations know it exactly).")
    sample_rate: float = Field(0.02, gt=0, le=1, description="DP-SGD Poisson sampling rate per step (user).")
    max_grad_norm: float = Field(5.0, gt=0, description="Per-user gradient clipping norm (user); 1 biases the "
                                 "churn model towards the majority class on CDNOW.")
    clipping_norm: float = Field(1.0, gt=0, description="Update clipping norm per unit (client).")
    value_clip: float = Field(DEFAULT_CLIP, gt=0, description="CLV under user-level DP: spend and predictions "
                              "are clipped at this many currency units in the noisy evaluation.")
    dp_eval_every: int = Field(0, ge=0, description="User-level DP: evaluate every this many rounds "
                               "(0: only after the last round; each evaluation is a noisy release about test users).")
    secagg: bool = Field(False, description="Secure aggregation (privacy/secagg): the coordinator sees only "
                         "the sum of the units' updates; units weigh equally.")
    secagg_threshold: float = Field(0.6, gt=0, description="SecAgg reconstruction threshold: a count (>= 2), or a "
                                    "fraction (< 1) of each unit's degree + 1 share holders.")
    secagg_clip_range: float = Field(1.0, gt=0, description="SecAgg: every update coordinate is clipped to "
                                     "[-R, R] before quantisation (client mode: the clipping norm).")

    @model_validator(mode="after")
    def _consistent(self) -> "TrainingPlan":
        if self.target == "clv" and self.model != "mlp":
            raise ValueError(f"the CLV model is an MLP on the per-user features; model {self.model!r} is for churn")
        if self.privacy == "user" and self.model != "mlp":
            raise ValueError(f"user-level DP (DP-SGD with Opacus) trains the MLP; model {self.model!r} uses "
                             "torch's nn.GRU, which Opacus cannot compute per-user gradients for. Use model 'mlp'.")
        if self.privacy == "none":
            given = [flag for flag, value in (("--epsilon", self.target_epsilon), ("--delta", self.delta),
                                              ("--noise-multiplier", self.noise_multiplier)) if value is not None]
            if given:
                raise ValueError(f"{', '.join(given)} without --privacy: choose --privacy user (per end user) or "
                                 "client (per unit)")
        elif (self.target_epsilon is None) == (self.noise_multiplier is None):
            raise ValueError(f"--privacy {self.privacy} needs exactly one of --epsilon (a target) and "
                             "--noise-multiplier")
        return self

    def fingerprint(self) -> str:
        """Hash of the fields that must not change when a run is resumed."""
        exclude = {"output_dir", "round_timeout_s", "connect_timeout_s", "min_available_units", "min_fit_units"}
        if self.privacy == "none":
            exclude.add("num_rounds")  # a DP run's noise is calibrated to its rounds: it cannot grow
        fixed = self.model_dump(mode="json", exclude=exclude)
        return hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()[:16]


class SegmentationBudget(BaseModel):
    """Relative shares of the total (zCDP) budget spent by each step (normalised to sum to 1)."""

    grid: float = 0.1
    lloyd: float = 0.6
    rfm: float = 0.1
    final: float = 0.15
    transitions: float = 0.05


#: Initialisations refined side by side without noise, and with noise (where R restarts
#: multiply a Lloyd step's squared sensitivity by R, so its noise by sqrt(R)). Measured on the
#: synthetic planted data at epsilon 8: 4 or 8 restarts did worse than 1 (ARI 0.45-0.88 against
#: 0.50-0.97), the extra noise and the noisy ranking costing more than the extra starts gain.
DEFAULT_RESTARTS: Final = 16
DP_RESTARTS: Final = 1


class SegmentationPlan(BaseModel):
    """Settings of one federated segmentation."""

    cutoff: dt.date = Field(CALIBRATION_END, description="Segment as of this day (inclusive).")
    horizon_days: int = Field(HOLDOUT_DAYS, ge=1, description="Label window for churn rate per segment, days.")
    previous_cutoff: dt.date | None = Field(None, description="Earlier cutoff for the transition matrix.")
    k: int | None = Field(None, ge=2, le=12, description="Segments; None: federated elbow over 2..8.")
    iterations: int | None = Field(None, ge=1, description="Federated Lloyd iterations (at most); default 20 "
                                   "without noise (stops early at convergence), 6 with (each costs budget).")
    restarts: int | None = Field(None, ge=1, le=32, description="Candidate initialisations refined side by side, "
                                 "best kept; default 16 without noise, 1 with (R restarts multiply the "
                                 "Lloyd noise by sqrt(R)).")
    epsilon: float | None = Field(None, gt=0, description="Total epsilon per end user; None: no noise.")
    delta: float | None = Field(None, gt=0, lt=1, description="delta; default: the largest power of ten at most "
                                "1 / (10 x population).")
    population: int = Field(DEFAULT_POPULATION, ge=1, description="Upper bound on the end users over all units; "
                            "sets the default delta (simulations know it exactly).")
    budget: SegmentationBudget = SegmentationBudget()
    min_count: float = Field(5.0, ge=0, description="Centroids with fewer (noisy) users stay put.")
    inactivity_days: float = Field(30.0, gt=0, description="Churn warning after this many idle days.")
    churn_threshold: float = Field(0.7, gt=0, lt=1, description="Churn warning at this churn probability "
                                   "(units with scores: a global churn model, or their own scores file).")
    churn_model: Path | None = Field(None, description="A global churn model (model.npz) the coordinator sends to "
                                     "the units, which score their users with it locally.")
    clv_model: Path | None = Field(None, description="A global CLV model (model.npz of `fedseg clv`), sent the same way.")
    unit_scores: bool = Field(False, description="Units score with their own scores file (`fedseg score`; node config "
                              "scores-path) instead of models sent by the coordinator.")
    tier_by: Literal["spend", "clv"] = Field("spend", description="Value tiers by past spend (RFM M score) or by "
                                             "predicted CLV (its quintile score in place of M).")
    value_clip: float = Field(DEFAULT_CLIP, gt=0, description="Under DP, CLV per user is clipped here (currency "
                              "units) in the per-segment sums.")
    seed: int = 0
    dataset: str = Field("cdnow", description="Bundled dataset for units without data ('cdnow'; '' in deployments).")
    min_units: int = Field(2, ge=1, description="Units that must be connected and answer every step.")
    timeout_s: float = Field(600.0, gt=0, description="Seconds to wait for the units' answers to each step.")

    @model_validator(mode="after")
    def _consistent(self) -> "SegmentationPlan":
        if self.delta is not None and self.epsilon is None:
            raise ValueError("--delta without --epsilon: the segmentation adds no noise; give --epsilon for "
                             "differential privacy")
        if self.tier_by == "clv" and self.clv_model is None and not self.unit_scores:
            raise ValueError("--tier-by clv needs CLV scores: give --clv-model (a `fedseg clv` model) or the units' "
                             "scores files (--scores)")
        return self

    @property
    def with_scores(self) -> bool:
        """Whether units hold churn probabilities and/or CLV (models sent, or their own scores)."""
        return self.unit_scores or self.churn_model is not None or self.clv_model is not None

    @property
    def lloyd_iterations(self) -> int:
        return self.iterations or (6 if self.epsilon else 20)

    @property
    def lloyd_restarts(self) -> int:
        return self.restarts or (DP_RESTARTS if self.epsilon else DEFAULT_RESTARTS)


class KpiBudget(BaseModel):
    """Relative shares of the KPI report's total (zCDP) budget per table (normalised to sum to 1).

    Retention gets the largest share: its cells are the figures operators compare across
    cohorts, and its sensitivity is small (one cohort row per user)."""

    dau: float = Field(0.15, gt=0)
    wau: float = Field(0.1, gt=0)
    mau: float = Field(0.15, gt=0)
    retention: float = Field(0.4, gt=0)
    churn: float = Field(0.2, gt=0)


class KpiPlan(BaseModel):
    """Settings of one federated KPI report (``fedseg kpis``; definitions in :mod:`fedseg.kpis`)."""

    start: dt.date | None = Field(None, description="First day of the report (inclusive); None: the data's first "
                                  "day (simulation; a deployment states it).")
    end: dt.date | None = Field(None, description="Last day of the report (inclusive); None: the data's last day.")
    granularity: Literal["month", "week"] = Field("month", description="Cohorts and retention periods: calendar "
                                                  "months (YYYY-MM) or Monday-based weeks.")
    churn_window_days: int = Field(90, ge=1, description="A user counts as churned at a snapshot when they make no "
                                   "purchase in this many days after it.")
    max_active_days: int = Field(10, ge=1, description="Under DP: each user's active days kept in the activity "
                                 "tables (a random subset beyond it; bounds the DAU/WAU/MAU sensitivity). Exact "
                                 "reports keep every day.")
    epsilon: float | None = Field(None, gt=0, description="Total epsilon per end user for the whole report; None: "
                                  "no noise.")
    delta: float | None = Field(None, gt=0, lt=1, description="delta; default: the largest power of ten at most "
                                "1 / (10 x population).")
    population: int = Field(DEFAULT_POPULATION, ge=1, description="Upper bound on the end users over all units; "
                            "sets the default delta (simulations know it exactly).")
    budget: KpiBudget = KpiBudget()
    dataset: str = Field("cdnow", description="Bundled dataset for units without data ('cdnow'; '' in deployments).")
    min_units: int = Field(2, ge=1, description="Units that must be connected and answer.")
    timeout_s: float = Field(600.0, gt=0, description="Seconds to wait for the units' answers.")

    @model_validator(mode="after")
    def _consistent(self) -> "KpiPlan":
        if self.delta is not None and self.epsilon is None:
            raise ValueError("--delta without --epsilon: the report adds no noise; give --epsilon for differential "
                             "privacy")
        if self.start is not None and self.end is not None and self.end < self.start:
            raise ValueError(f"--end {self.end} is before --start {self.start}")
        return self


class TagPlan(BaseModel):
    """Settings of one federated tag report (``fedseg tags``; the rule language is :mod:`fedseg.tags`)."""

    cutoff: dt.date | None = Field(None, description="Tag users as of this day (inclusive); None: the data's last "
                                   "day (simulation; a deployment states it).")
    tags_file: Path | None = Field(None, description="TOML file of tag rules; None: the default tag set "
                                   "(fedseg/default_tags.toml).")
    segment_by: Literal["lifecycle", "rfm"] = Field("lifecycle", description="Columns of the tag x segment matrix: "
                                                    "lifecycle stages, or the 11 RFM segments (federated quintiles).")
    epsilon: float | None = Field(None, gt=0, description="Total epsilon per end user for the whole report; None: "
                                  "no noise.")
    delta: float | None = Field(None, gt=0, lt=1, description="delta; default: the largest power of ten at most "
                                "1 / (10 x population).")
    population: int = Field(DEFAULT_POPULATION, ge=1, description="Upper bound on the end users over all units.")
    quantile_share: float = Field(0.5, gt=0, lt=1, description="Share of the budget (zCDP rho) spent on the quantile "
                                  "histograms; the rest goes to the tag x segment counts.")
    dataset: str = Field("cdnow", description="Bundled dataset for units without data ('cdnow'; '' in deployments).")
    min_units: int = Field(2, ge=1, description="Units that must be connected and answer.")
    timeout_s: float = Field(600.0, gt=0, description="Seconds to wait for the units' answers.")

    @model_validator(mode="after")
    def _consistent(self) -> "TagPlan":
        if self.delta is not None and self.epsilon is None:
            raise ValueError("--delta without --epsilon: the report adds no noise; give --epsilon for differential "
                             "privacy")
        return self


class EffectsPlan(BaseModel):
    """Settings of one federated effect measurement (:mod:`server.effects`).

    Defaults: a 60-day measurement window after the campaign day, retention over its last 30 days,
    cells per activity segment x action, conversion as the headline outcome, no noise.
    """

    campaign_date: dt.date | None = Field(None, description="The campaign day (default: the action lists' "
                                          "campaign_date).")
    window_days: int = Field(60, ge=1, description="Measurement window after the campaign day, days.")
    retention_days: int = Field(30, ge=1, description="Retention: any event in the window's last this many days.")
    segment_column: Literal["segment", "rfm_segment", "tier"] = Field(
        "segment", description="The action list's column that defines the segments of the cells.")
    segments: list[str] = Field(default_factory=list, description="Segment names of the cells (public: the "
                                "segmentation report's).")
    actions: list[str] = Field(default_factory=list, description="Actions of the cells (default: the playbook's).")
    outcome: Literal["conversion", "revenue", "retention"] = Field(
        "conversion", description="The headline outcome of each effect (all three are reported).")
    margin: float = Field(1.0, gt=0, le=1, description="Share of incremental revenue that is profit, for ROI "
                          "(1: ROI on revenue).")
    min_arm: int = Field(30, ge=2, description="Cells with fewer (noisy) users in an arm get no estimate.")
    revenue_clip: float = Field(200.0, gt=0, description="Under DP, revenue per user in the window is clipped here "
                                "(currency units; the noise on revenue scales with it: pick a high percentile of "
                                "what one user spends in a window, a public figure).")
    epsilon: float | None = Field(None, gt=0, description="epsilon per end user for the measurement; None: no noise.")
    secagg: bool = Field(False, description="Sum the units' tables by secure aggregation: the coordinator sees only "
                         "the sum, so under DP each unit adds only its share of the noise.")
    secagg_threshold: float = Field(0.8, gt=0, description="Secure aggregation's reconstruction threshold t: a count "
                                    "(>= 2) or a fraction (< 1) of each unit's degree + 1 share holders; every released sum holds at least t units' "
                                    "tables, and each unit's noise share is sized for t.")
    secagg_survivors: float = Field(1.0, gt=0, description="With secure aggregation: the fewest units any decoded "
                                    "sum holds (every unit refuses to unmask fewer), a count (>= 3) or a fraction "
                                    "(<= 1) of the units asked; each unit's DP noise share is sized for it. 1: all "
                                    "units, one Laplace release in total, but a unit dropping mid-round fails the "
                                    "measurement; lower tolerates dropouts at m / t of the noise variance.")
    delta: float | None = Field(None, gt=0, lt=1, description="delta; default: the largest power of ten at most "
                                "1 / (10 x population).")
    population: int = Field(DEFAULT_POPULATION, ge=1, description="Upper bound on the end users over all units.")
    dataset: str = Field("", description="Bundled dataset for units without data ('' in deployments).")
    playbook: str = Field("", description="Deployments: the coordinator's playbook file (actions' costs and "
                          "channels for ROI, the holdout share); '' the default playbook. Simulations take "
                          "--playbook instead.")
    min_units: int = Field(2, ge=1, description="Units that must be connected and answer.")
    timeout_s: float = Field(600.0, gt=0, description="Seconds to wait for the units' answers.")

    @field_validator("segments", "actions", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        """A run config has no lists: ``"steady,at-risk"`` is ``["steady", "at-risk"]``."""
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "EffectsPlan":
        if self.delta is not None and self.epsilon is None:
            raise ValueError("--delta without --epsilon: the measurement adds no noise; give --epsilon for "
                             "differential privacy")
        if self.retention_days > self.window_days:
            raise ValueError(f"--retention-days {self.retention_days} is longer than the window "
                             f"({self.window_days} days)")
        t = self.secagg_threshold
        if t >= 1 and (t != int(t) or t < 2):  # the rule of privacy.secagg.config.SecAggConfig
            raise ValueError(f"--secagg-threshold {t:g}: give a whole count of units (>= 2) or a fraction below 1")
        survivors = self.secagg_survivors
        if survivors > 1 and (survivors != int(survivors) or survivors < 3):
            raise ValueError(f"--secagg-survivors {survivors:g}: give a whole count of units (>= 3) or a fraction "
                             "up to 1 (1: all units)")
        return self


# ---------------------------------------------------------------------------- run config
#: ``[tool.flwr.app.config]`` keys whose names differ from the training plan's fields.
RUN_CONFIG_RENAMES: Final = {"num-server-rounds": "num_rounds"}
#: Training-plan keys a segmentation run reads too (with its own field names).
SEGMENTATION_SHARED_KEYS: Final = {"cutoff": "cutoff", "horizon-days": "horizon_days", "seed": "seed",
                                   "dataset": "dataset", "population": "population",
                                   "min-available-units": "min_units", "round-timeout-s": "timeout_s"}
#: Optional fields that a TOML file spells as 0 or "" when unset (TOML has no null).
UNSET_WHEN_EMPTY: Final = ("target_epsilon", "noise_multiplier", "delta", "epsilon", "k", "iterations", "restarts",
                           "previous_cutoff", "start", "end", "cutoff", "tags_file", "churn_model", "clv_model",
                           "campaign_date")
#: Prefixes of the run-config keys of the other tasks' plans (``task = "segment" | "kpis" | "tags" | "effects"``).
TASK_PREFIXES: Final = {"segment": "segment-", "kpis": "kpi-", "tags": "tags-", "effects": "effects-"}
#: Training-plan keys the KPI and tag plans read too (with their own field names).
MONITORING_SHARED_KEYS: Final = {"dataset": "dataset", "population": "population",
                                 "min-available-units": "min_units", "round-timeout-s": "timeout_s"}


def unset_empty(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with the optional fields that hold 0 or "" set to None (the field's "not set")."""
    return {k: (None if k in UNSET_WHEN_EMPTY and v in (0, "") else v) for k, v in values.items()}


def plan_from_run_config(run_config: dict[str, Any]) -> TrainingPlan:
    """A validated training plan from Flower's run config (kebab-case keys; ``task`` and
    ``segment-*`` keys belong to other jobs)."""
    values = {RUN_CONFIG_RENAMES.get(k, k.replace("-", "_")): v for k, v in run_config.items()
              if k != "task" and not k.startswith(tuple(TASK_PREFIXES.values()))}
    return TrainingPlan.model_validate(unset_empty(values))


def _prefixed_plan(model: type[BaseModel], prefix: str, shared: dict[str, str], run_config: dict[str, Any]) -> Any:
    """A plan from the run-config keys starting with ``prefix`` and the ``shared`` training keys."""
    values = {k.removeprefix(prefix).replace("-", "_"): v for k, v in run_config.items() if k.startswith(prefix)}
    for key, field in shared.items():
        if key in run_config:
            values.setdefault(field, run_config[key])
    return model.model_validate(unset_empty(values))


def segmentation_plan_from_run_config(run_config: dict[str, Any]) -> SegmentationPlan:
    """A segmentation plan from the ``segment-*`` keys and the shared ones (cutoff, seed, ...)."""
    return _prefixed_plan(SegmentationPlan, "segment-", SEGMENTATION_SHARED_KEYS, run_config)


def kpi_plan_from_run_config(run_config: dict[str, Any]) -> KpiPlan:
    """A KPI plan from the ``kpi-*`` keys and the shared ones (dataset, population, units, timeout)."""
    return _prefixed_plan(KpiPlan, "kpi-", MONITORING_SHARED_KEYS, run_config)


def tag_plan_from_run_config(run_config: dict[str, Any]) -> TagPlan:
    """A tag plan from the ``tags-*`` keys and the shared ones."""
    return _prefixed_plan(TagPlan, "tags-", MONITORING_SHARED_KEYS, run_config)


#: Training-plan keys an effect measurement reads too (its dataset is its own: '' by default).
EFFECTS_SHARED_KEYS: Final = {"population": "population", "min-available-units": "min_units",
                              "round-timeout-s": "timeout_s"}


def effects_plan_from_run_config(run_config: dict[str, Any]) -> EffectsPlan:
    """An effect-measurement plan from the ``effects-*`` keys (segments and actions comma-separated)
    and the shared ones."""
    return _prefixed_plan(EffectsPlan, "effects-", EFFECTS_SHARED_KEYS, run_config)


def from_flower_config(model: type[BaseModel], config: dict[str, Any]) -> Any:
    """Build ``model`` from a Flower run/message config with ``kebab-case`` keys."""
    return model.model_validate({k.replace("-", "_"): v for k, v in config.items()})


def to_flower_config(obj: BaseModel) -> dict[str, Any]:
    """Flatten ``obj`` to ``kebab-case`` scalar values for a Flower ConfigRecord."""
    out: dict[str, Any] = {}
    for key, value in obj.model_dump(mode="json").items():
        if isinstance(value, dict | list) or value is None:
            continue
        out[key.replace("_", "-")] = value
    return out
