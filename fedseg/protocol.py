"""The wire protocol between the coordinator and the units: message types, record names, keys,
and the typed config of training messages (:class:`RoundConfig`).

Both sides import these names; the units' outgoing guard (:mod:`clients.guard`) builds its
allow-list from :data:`ALLOWED_METRICS`, so a reply can hold nothing this module does not name.

Records of a message (``RecordDict`` keys):

- ``config`` (ConfigRecord): what the coordinator asks, kebab-case keys;
- ``arrays`` (ArrayRecord): model weights (train: the global model in, the unit's model out);
- ``metrics`` (MetricRecord): a unit's aggregate answer (counts, sums, histograms);
- ``identity`` (ConfigRecord): a unit's name and dataset id, in reply to the start-up queries;
- ``privacy-plan`` (ConfigRecord): the privacy acceptance request (:data:`PRIVACY`);
- ``refusal`` (ConfigRecord): a unit's one-line reason for refusing a run's privacy plan.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any, Final

from pydantic import BaseModel, Field

from fedseg.config import FeatureConfig, ModelName, PrivacyMode, Target
from fedseg.value_metrics import AGGREGATES as CLV_AGGREGATES
from fedseg.value_metrics import DEFAULT_CLIP

# ---------------------------------------------------------------------------- message types
TRAIN: Final = "train"
EVALUATE: Final = "evaluate"
#: Start-up query of a training run: the unit's share of the feature standardisation.
SCALER: Final = "query"
#: Privacy acceptance: a unit accepts (or refuses) a run's planned releases before any is made.
PRIVACY: Final = "query.privacy"
SEG_GRID: Final = "query.seg_grid"
SEG_LLOYD: Final = "query.seg_lloyd"
SEG_RFM: Final = "query.seg_rfm"
SEG_FINAL: Final = "query.seg_final"
#: Monitoring (fedseg.kpis): a unit's KPI tables; tag thresholds' histograms; tag prevalence.
KPIS: Final = "query.kpis"
TAG_QUANTILES: Final = "query.tag_quantiles"
TAGS: Final = "query.tags"
#: Effect measurement: outcome sums per segment x action x arm (fedseg.effects).
EFFECTS: Final = "query.effects"
#: Federated audits (:mod:`audit.flower_app`): the unit's statistics, one message type per step.
AUDIT_FAIRNESS: Final = "query.audit_fairness"
AUDIT_PRICING_TABLES: Final = "query.audit_pricing_tables"
AUDIT_PRICING_MEAT: Final = "query.audit_pricing_meat"

# ---------------------------------------------------------------------------- record names
CONFIG: Final = "config"
ARRAYS: Final = "arrays"
METRICS: Final = "metrics"
IDENTITY: Final = "identity"
PRIVACY_PLAN: Final = "privacy-plan"
REFUSAL: Final = "refusal"
#: A train reply's evaluation of the model the train message carried (MetricRecord with the
#: ``evaluate`` reply's metrics), when the round config sets ``evaluate-incoming``.
EVALUATION: Final = "evaluation"
#: Global models a coordinator sends for units to score their users with (segmentation): the
#: weights (ArrayRecord) and ``<name>-meta`` (ConfigRecord: model, target, model-version,
#: horizon-days, scaler-mean, scaler-std).
CHURN_MODEL: Final = "churn-model"
CLV_MODEL: Final = "clv-model"
#: An audit unit's answer (ConfigRecord): aggregate statistics serialised by :mod:`audit.federated`.
AUDIT_STATS: Final = "stats"

# ---------------------------------------------------------------------------- privacy plan keys
#: Keys of the ``privacy-plan`` record: the coordinator's run id (stable across resumes), the
#: task, delta, the coordinator's stated total epsilon and the planned releases (JSON list of
#: :class:`privacy.accounting.Release`).
PLAN_RUN_ID: Final = "run-id"
PLAN_TASK: Final = "task"
PLAN_DELTA: Final = "delta"
PLAN_EPSILON: Final = "stated-epsilon"
PLAN_RELEASES: Final = "releases"
#: Round-config key carrying the coordinator's run id on every message of a private run.
RUN_ID: Final = "run-id"

#: Metric names a unit may send, by message type (aggregate figures only).
ALLOWED_METRICS: Final[dict[str, frozenset[str]]] = {
    TRAIN: frozenset({"num-examples", "train-loss"}),
    # churn: sums and score histograms (fedseg.metrics); clv: sums and value histograms (fedseg.value_metrics)
    EVALUATE: frozenset({"num-examples", "loss-sum", "brier-sum", "hist-pos", "hist-neg", *CLV_AGGREGATES}),
    SCALER: frozenset({"n", "sum", "sumsq"}),
    PRIVACY: frozenset({"accepted", "epsilon"}),
    AUDIT_FAIRNESS: frozenset(),
    AUDIT_PRICING_TABLES: frozenset(),
    AUDIT_PRICING_MEAT: frozenset(),
    SEG_GRID: frozenset({"grid"}),
    SEG_LLOYD: frozenset({"sums", "counts", "inertia"}),
    SEG_RFM: frozenset({"recency", "frequency", "monetary", "clv"}),
    SEG_FINAL: frozenset({"sizes", "churned", "profile-sums", "rfm-segments", "tiers", "stages",
                          "warnings", "transitions", "prob-sums", "clv-sums"}),
    EFFECTS: frozenset({"stats"}),
    KPIS: frozenset({"dau", "wau", "mau", "retention", "churn-users", "churn-churned"}),
    TAG_QUANTILES: frozenset({"histograms"}),
    TAGS: frozenset({"matrix", "sizes"}),
}
#: Longest list a reply of these types may hold (default: :data:`clients.guard.MAX_LIST_LEN`):
#: a KPI report holds one value per report day and one per retention cell.
MAX_LIST_LEN_BY_TYPE: Final[dict[str, int]] = {KPIS: 20_000, TAG_QUANTILES: 20_000}
#: Metric records that follow another message type's allow-list: a train reply's evaluation.
ALLOWED_RECORD_METRICS: Final[dict[tuple[str, str], frozenset[str]]] = {
    (TRAIN, EVALUATION): ALLOWED_METRICS[EVALUATE],
}
#: Config records a unit may send, by message type, with their exact keys. The audit answers are
#: aggregate tables (per group cell counts and sums; per item-window-level counts and log-price
#: sums; per slice cluster-score matrices), serialised whole.
ALLOWED_CONFIGS: Final[dict[str, dict[str, frozenset[str]]]] = {
    SCALER: {IDENTITY: frozenset({"unit-id"})},
    PRIVACY: {IDENTITY: frozenset({"unit-id", "dataset-id"}), REFUSAL: frozenset({"reason"})},
    AUDIT_FAIRNESS: {AUDIT_STATS: frozenset({"stats"})},
    AUDIT_PRICING_TABLES: {AUDIT_STATS: frozenset({"tables", "rows", "dropped"})},
    AUDIT_PRICING_MEAT: {AUDIT_STATS: frozenset({"meat"})},
}
#: What a secure-aggregation stage (config ``secagg-stage`` of a ``train`` message) may send:
#: cryptographic material, never a user's data; the allowed field sets per stage. A consistency
#: reply may carry the next round's key advertisement, an unmask reply the next round's encrypted
#: shares (privacy/secagg/flower.py); the masked input is checked by shape in clients/guard.py.
SECAGG_REPLIES: Final[dict[str, tuple[frozenset[str], ...]]] = {
    "advertise": (frozenset({"advert"}),),
    "share": (frozenset({"boxes"}),),
    "consistency": (frozenset({"signature"}), frozenset({"signature", "next-advert"})),
    "unmask": (frozenset({"reveals"}), frozenset({"reveals", "next-boxes"})),
}
#: Keys of an audit step's config: the spec (JSON of the audit's pydantic spec), the DP target
#: (JSON, fairness only), the run id that keys the unit's privacy account, the server's fit.
AUDIT_SPEC: Final = "spec"
AUDIT_DP: Final = "dp"
AUDIT_FIT: Final = "fit"


class RoundConfig(BaseModel):
    """What the coordinator tells units each round (the ConfigRecord of train/evaluate/query).

    The scaler is the global standardisation of the transformed features (see
    :mod:`clients.dataset`); it is absent only in the first query that computes it.
    """

    model: ModelName = "mlp"
    target: Target = Field("churn", description="What the run learns: churn or clv.")
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
    value_clip: float = Field(DEFAULT_CLIP, gt=0, description="CLV under user-level DP: spend and predictions are clipped "
                              "at this many currency units in the noisy evaluation.")
    delta: float = Field(0.0, ge=0, lt=1, description="delta of the run's (epsilon, delta) guarantee (DP modes).")
    unit_sample_rate: float = Field(1.0, gt=0, le=1, description="Poisson rate at which units are sampled "
                                    "each round (client mode).")
    run_id: str = Field("", description="The coordinator's id of the run (stable across resumes): the key of "
                        "the unit's privacy account.")
    evaluate_incoming: bool = Field(False, description="Train messages: evaluate the model the message carries "
                                    "(the previous round's global model) before training, and send the "
                                    "evaluation in the reply (one exchange per round instead of two; no DP only).")

    @property
    def features(self) -> FeatureConfig:
        return FeatureConfig(cutoff=self.cutoff, horizon_days=self.horizon_days)


def content_digest(content: Any, ignore: tuple[str, ...] = ()) -> str:
    """sha256 of a message's content (a Flower ``RecordDict``: config, metric and array records,
    in a fixed order), leaving out the config keys in ``ignore``.

    Units key their seeded noise by the request's digest; the coordinator orders replies by theirs,
    so sums over units are the same floating-point numbers whatever order replies arrive in and
    whatever node ids Flower draws."""
    digest = hashlib.sha256()
    for kind, records in (("c", content.config_records), ("m", content.metric_records)):
        for name in sorted(records):
            for key in sorted(records[name]):
                if key not in ignore:
                    digest.update(f"{kind}|{name}|{key}|{records[name][key]!r}\n".encode())
    for name in sorted(content.array_records):
        for key, array in content.array_records[name].items():
            digest.update(f"a|{name}|{key}|{array.shape}|{array.dtype}|".encode())
            digest.update(array.data)
    return digest.hexdigest()
