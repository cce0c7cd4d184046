"""The wire protocol between the coordinator and the units: message types, record names, keys.

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

from typing import Final

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

# ---------------------------------------------------------------------------- record names
CONFIG: Final = "config"
ARRAYS: Final = "arrays"
METRICS: Final = "metrics"
IDENTITY: Final = "identity"
PRIVACY_PLAN: Final = "privacy-plan"
REFUSAL: Final = "refusal"

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
    EVALUATE: frozenset({"num-examples", "loss-sum", "brier-sum", "hist-pos", "hist-neg"}),
    SCALER: frozenset({"n", "sum", "sumsq"}),
    PRIVACY: frozenset({"accepted", "epsilon"}),
    SEG_GRID: frozenset({"grid"}),
    SEG_LLOYD: frozenset({"sums", "counts", "inertia"}),
    SEG_RFM: frozenset({"recency", "frequency", "monetary"}),
    SEG_FINAL: frozenset({"sizes", "churned", "profile-sums", "rfm-segments", "tiers", "stages",
                          "warnings", "transitions"}),
}
#: Config records a unit may send, by message type, with their exact keys.
ALLOWED_CONFIGS: Final[dict[str, dict[str, frozenset[str]]]] = {
    SCALER: {IDENTITY: frozenset({"unit-id"})},
    PRIVACY: {IDENTITY: frozenset({"unit-id", "dataset-id"}), REFUSAL: frozenset({"reason"})},
}
