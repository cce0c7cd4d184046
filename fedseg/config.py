"""Configuration models shared by units and the coordinator.

Every field states its unit. Values arrive from the command line, from ``pyproject.toml``'s
``[tool.flwr.app.config]`` (``kebab-case`` keys) or inside Flower messages; each path goes
through these models so a wrong value is a clear error at start, not a failure mid-round.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any, Final, Literal

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from privacy.accounting import Release

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
StrategyName = Literal["fedavg", "fedprox"]
PrivacyMode = Literal["none", "client", "user"]


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



class RoundConfig(BaseModel):
    """What the coordinator tells units each round (the ConfigRecord of train/evaluate/query).

    The scaler is the global standardisation of the transformed features (see
    :mod:`clients.dataset`); it is absent only in the first query that computes it.
    """

    model: ModelName = "mlp"
    dataset: str = Field("", description="Named bundled dataset for units without a data path "
                         "(simulation only): 'cdnow' or empty.")
    cutoff: dt.date
    horizon_days: int = Field(ge=1, description="Churn label window after the cutoff, days.")
    local_epochs: int = Field(2, ge=1)
    learning_rate: float = Field(0.01, gt=0)
    batch_size: int = Field(64, ge=1)
    proximal_mu: float = Field(0.0, ge=0, description="FedProx proximal weight; 0 is FedAvg.")
    seed: int = 0
    server_round: int = Field(0, ge=0)
    scaler_mean: list[float] | None = None
    scaler_std: list[float] | None = None
    privacy: PrivacyMode = Field("none", description="none, client (unit-level DP), user (user-level DP).")
    noise_multiplier: float = Field(0.0, ge=0, description="DP-SGD noise multiplier z (user mode); z of the noise "
                                    "on the sum of clipped updates (client mode).")
    max_grad_norm: float = Field(1.0, gt=0, description="Per-user gradient clipping norm C (user mode).")
    sample_rate: float = Field(0.0, ge=0, le=1, description="DP-SGD Poisson sampling rate q (user mode).")
    steps_per_round: int = Field(0, ge=0, description="DP-SGD steps per round (user mode).")
    scaler_sigma: float = Field(0.0, ge=0, description="Noise std of the bounded scaler moments (DP modes).")
    eval_sigma: float = Field(0.0, ge=0, description="Noise std of evaluation histograms/sums (user mode).")
    delta: float = Field(0.0, ge=0, lt=1, description="delta of the run's (epsilon, delta) guarantee (DP modes).")
    unit_sample_rate: float = Field(1.0, gt=0, le=1, description="Poisson rate at which units are sampled "
                                    "each round (client mode).")
    run_id: str = Field("", description="The coordinator's id of the run (stable across resumes): the key of "
                        "the unit's privacy account.")

    def client_release(self) -> "Release":
        """The client-level release one round makes (the coordinator adds its noise; client mode)."""
        from privacy.accounting import Release

        return Release(noise_multiplier=self.noise_multiplier, sample_rate=self.unit_sample_rate,
                       task="training (client-level, noise added by the coordinator)")

    @property
    def features(self) -> FeatureConfig:
        return FeatureConfig(cutoff=self.cutoff, horizon_days=self.horizon_days)
