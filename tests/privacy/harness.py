"""Drive a real unit's ClientApp handlers message by message, as a (possibly deviating)
coordinator would: no Flower runtime in between, nothing mocked inside the unit."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fedseg import protocol
from fedseg.protocol import RoundConfig
from fedseg.models import build_model
from privacy.accounting import Release, epsilon
from tests.support.flower import set_task_identity  # noqa: F401 - used here and re-exported

CUTOFF = dt.date(1997, 9, 30)


class Unit:
    """One unit: its real ClientApp, its node config and its persistent per-run state."""

    def __init__(self, app: Any, node_config: dict[str, Any] | None = None) -> None:
        set_task_identity()
        self.app = app
        self.context = Context(run_id=1, node_id=1, node_config={"partition-id": 0, **(node_config or {})},
                               state=RecordDict(), run_config={})

    def send(self, message_type: str, records: dict[str, Any]) -> Message:
        """The unit's reply; an exception in a handler becomes an error reply, as Flower's runtime
        sends it to the coordinator."""
        from flwr.app import Error

        msg = Message(content=RecordDict(records), dst_node_id=1, message_type=message_type)
        try:
            return self.app(msg, self.context)
        except Exception as exc:  # noqa: BLE001 - what the runtime does with a failing handler
            return Message(Error(code=0, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)

    def propose(self, run_id: str, releases: list[Release], delta: float, stated: float | None = None,
                task: str = "training", config: RoundConfig | None = None) -> Message:
        """A privacy plan; ``stated`` defaults to the true epsilon of ``releases``."""
        plan = ConfigRecord({protocol.PLAN_RUN_ID: run_id, protocol.PLAN_TASK: task, protocol.PLAN_DELTA: delta,
                             protocol.PLAN_EPSILON: epsilon(releases, delta) if stated is None else stated,
                             protocol.PLAN_RELEASES: json.dumps([r.model_dump() for r in releases])})
        cfg = config or RoundConfig(cutoff=CUTOFF, horizon_days=273)
        return self.send(protocol.PRIVACY, {protocol.CONFIG: _record(cfg), protocol.PRIVACY_PLAN: plan})

    def train(self, cfg: RoundConfig, seed: int = 0) -> Message:
        model = build_model(cfg.model, seed=seed)
        return self.send(protocol.TRAIN, {protocol.ARRAYS: ArrayRecord(model.state_dict()),
                                          protocol.CONFIG: _record(cfg)})


def _record(cfg: RoundConfig) -> ConfigRecord:
    from server.training import _config_record

    return _config_record(cfg)


def user_round_config(run_id: str, z: float, q: float = 0.05, steps: int = 20, delta: float = 1e-6,
                      server_round: int = 1, seed: int = 0) -> RoundConfig:
    """The config of a user-level DP training round, with a plain standardisation."""
    from fedseg.scaling import FEATURE_CAPS

    return RoundConfig(cutoff=CUTOFF, horizon_days=273, privacy="user", noise_multiplier=z, sample_rate=q,
                       steps_per_round=steps, max_grad_norm=5.0, delta=delta, run_id=run_id, seed=seed,
                       server_round=server_round, scaler_mean=[0.0] * len(FEATURE_CAPS),
                       scaler_std=[float(c) for c in FEATURE_CAPS])


def unit_file(folder: Path, n_users: int = 1500) -> Path:
    """One unit's events file: a sample of the real CDNOW log."""
    from tests.support.flower import small_cdnow

    path = folder / "events_unit_0.parquet"
    if not path.exists():
        small_cdnow(n_users).to_parquet(path)
    return path
