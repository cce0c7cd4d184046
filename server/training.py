"""The coordinator's federated training loop on Flower's Message API.

One run, for a :class:`TrainingPlan`:

1. wait until ``min_available_units`` units are connected;
2. **federated standardisation** (round 0): every unit answers a ``query`` with the count,
   sums and sums of squares of its transformed features; the coordinator derives the global
   mean and standard deviation (:func:`clients.dataset.global_scaler`) and sends them with
   every later message. No row leaves a unit;
3. rounds ``1..num_rounds`` of Flower's own strategy (:class:`flwr.serverapp.strategy.FedAvg`
   or :class:`~flwr.serverapp.strategy.FedProx`): ``configure_train`` samples units, the
   Grid delivers the messages, ``aggregate_train`` averages the weights by number of training
   users; then federated evaluation merges the units' sums and score histograms into AUC,
   log loss and Brier score (:mod:`fedseg.metrics`);
4. after each round the checkpoint (weights, scaler, history) is replaced atomically, so a
   run restarted with the same plan continues after its last completed round.

The loop is fedseg's own rather than ``Strategy.start`` because it checkpoints and resumes,
records privacy spend between rounds, and tolerates units that fail mid-round as long as at
least ``min_fit_units`` replied.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedProx
from pydantic import BaseModel, Field, model_validator

from clients.dataset import global_scaler
from fedseg.config import ModelName, PrivacyMode, RoundConfig, StrategyName, to_flower_config
from fedseg.metrics import auc_from_histograms
from fedseg.models import build_model, model_version
from server.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from server.dp import PrivacyState, calibrate

MODEL_FILE = "model.npz"
ROUNDS_FILE = "rounds.jsonl"


class TrainingPlan(BaseModel):
    """Everything the coordinator needs for one federated training run."""

    num_rounds: int = Field(10, ge=1, description="Federated rounds.")
    model: ModelName = "mlp"
    strategy: StrategyName = "fedavg"
    local_epochs: int = Field(2, ge=1, description="Passes over local training users per round.")
    learning_rate: float = Field(0.01, gt=0)
    batch_size: int = Field(64, ge=1)
    proximal_mu: float = Field(0.0, ge=0, description="FedProx weight (used with strategy fedprox).")
    min_available_units: int = Field(2, ge=1, description="Units that must be connected to start.")
    min_fit_units: int = Field(2, ge=1, description="Replies needed for a round to count.")
    fraction_fit: float = Field(1.0, gt=0, le=1, description="Share of units asked to train each round.")
    dataset: str = Field("", description="Bundled dataset for units without data ('cdnow').")
    cutoff: dt.date
    horizon_days: int = Field(273, ge=1)
    seed: int = 0
    output_dir: Path = Path("runs/flwr")
    round_timeout_s: float = Field(3600.0, gt=0, description="Seconds to wait for replies each round.")
    connect_timeout_s: float = Field(600.0, gt=0, description="Seconds to wait for units at start.")
    privacy: PrivacyMode = Field("none", description="none, client (unit-level DP), user (user-level DP).")
    target_epsilon: float | None = Field(None, gt=0, description="Calibrate the noise to this epsilon "
                                         "per end user (user) or per unit (client) over the planned rounds.")
    noise_multiplier: float | None = Field(None, gt=0, description="Fixed noise multiplier instead of a target.")
    delta: float | None = Field(None, gt=0, lt=1, description="delta; default: a power of ten below 1/users.")
    sample_rate: float = Field(0.02, gt=0, le=1, description="DP-SGD Poisson sampling rate per step (user).")
    max_grad_norm: float = Field(5.0, gt=0, description="Per-user gradient clipping norm (user).")
    clipping_norm: float = Field(1.0, gt=0, description="Update clipping norm per unit (client).")
    ledger_path: Path | None = Field(None, description="Privacy budget ledger (SQLite); None: no ledger.")
    secagg: bool = Field(False, description="Secure aggregation (privacy/secagg): the coordinator sees only "
                         "the sum of the units' updates; units weigh equally.")
    secagg_threshold: float = Field(0.6, gt=0, description="SecAgg reconstruction threshold (count or fraction).")
    secagg_clip_range: float = Field(1.0, gt=0, description="SecAgg: every update coordinate is clipped to "
                                     "[-R, R] before quantisation (client mode: the clipping norm).")
    dp_eval_every: int = Field(0, ge=0, description="User-level DP: evaluate every this many rounds "
                               "(0: only after the last round; each evaluation is a noisy release about test users).")
    dataset_id: str = Field("default", description="Dataset name under which the ledger records spend.")

    @model_validator(mode="after")
    def _dp_model(self) -> "TrainingPlan":
        if self.privacy == "user" and self.model != "mlp":
            raise ValueError(f"user-level DP (DP-SGD with Opacus) trains the MLP; model {self.model!r} uses "
                             "torch's nn.GRU, which Opacus cannot compute per-user gradients for. Use model 'mlp'.")
        return self

    def fingerprint(self) -> str:
        """Hash of the fields that must not change when a run is resumed."""
        exclude = {"output_dir", "round_timeout_s", "connect_timeout_s", "min_available_units",
                   "min_fit_units", "ledger_path"}
        if self.privacy == "none":
            exclude.add("num_rounds")  # a DP run's noise is calibrated to its rounds: it cannot grow
        fixed = self.model_dump(mode="json", exclude=exclude)
        return hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()[:16]

    def round_config(self, server_round: int, mean: list[float] | None, std: list[float] | None,
                     privacy: PrivacyState | None = None) -> RoundConfig:
        return RoundConfig(
            model=self.model, dataset=self.dataset, cutoff=self.cutoff, horizon_days=self.horizon_days,
            local_epochs=self.local_epochs, learning_rate=self.learning_rate, batch_size=self.batch_size,
            proximal_mu=self.proximal_mu if self.strategy == "fedprox" else 0.0, seed=self.seed,
            server_round=server_round, scaler_mean=mean, scaler_std=std,
            **(privacy.round_fields() if privacy is not None else {}),
        )


class ResumeMismatch(ValueError):
    """A checkpoint exists for a different plan."""


class NotEnoughUnits(RuntimeError):
    """Fewer units answered than the plan requires."""


@dataclass
class TrainingResult:
    """What a finished run produced."""

    arrays: dict[str, np.ndarray]
    scaler_mean: list[float]
    scaler_std: list[float]
    history: list[dict[str, Any]]
    model_version: str
    resumed_from: int
    privacy: dict[str, Any]
    units: list[str]


def _config_record(cfg: RoundConfig) -> ConfigRecord:
    record = ConfigRecord(to_flower_config(cfg))
    if cfg.scaler_mean is not None:
        record["scaler-mean"] = list(cfg.scaler_mean)
        record["scaler-std"] = list(cfg.scaler_std or [])
    return record


def merge_evaluation(contents: list[RecordDict], weighted_by_key: str = "num-examples") -> MetricRecord:
    """Pooled AUC, log loss and Brier score from the units' sums and histograms."""
    n = 0
    loss = brier = 0.0
    pos = neg = None
    for content in contents:
        m = content["metrics"]
        n += int(m["num-examples"])
        loss += float(m["loss-sum"])
        brier += float(m["brier-sum"])
        p, q = np.asarray(m["hist-pos"], dtype=np.float64), np.asarray(m["hist-neg"], dtype=np.float64)
        pos = p if pos is None else pos + p
        neg = q if neg is None else neg + q
    if n == 0 or pos is None or neg is None:
        return MetricRecord({"num-examples": 0})
    return MetricRecord({"num-examples": n, "auc": auc_from_histograms(pos, neg),
                         "log-loss": loss / n, "brier": brier / n})


def _make_strategy(plan: TrainingPlan, privacy: PrivacyState | None = None) -> Any:
    """Flower's FedAvg or FedProx; in client mode wrapped by Flower's server-side clipping DP."""
    common = dict(fraction_train=plan.fraction_fit, fraction_evaluate=1.0,
                  min_train_nodes=plan.min_fit_units, min_evaluate_nodes=plan.min_fit_units,
                  min_available_nodes=plan.min_available_units,
                  evaluate_metrics_aggr_fn=merge_evaluation)
    strategy = FedProx(proximal_mu=plan.proximal_mu, **common) if plan.strategy == "fedprox" else FedAvg(**common)
    if privacy is not None and privacy.mode == "client" and not plan.secagg:
        from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping

        return DifferentialPrivacyServerSideFixedClipping(
            strategy, noise_multiplier=privacy.noise_multiplier, clipping_norm=privacy.clipping_norm,
            num_sampled_clients=privacy.sampled_units)
    return strategy


def wait_for_units(grid: Grid, minimum: int, timeout_s: float) -> list[int]:
    """Node ids once at least ``minimum`` units are connected; NotEnoughUnits after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while len(nodes := list(grid.get_node_ids())) < minimum:
        if time.monotonic() > deadline:
            raise NotEnoughUnits(f"only {len(nodes)} units connected after {timeout_s:.0f} s; "
                                 f"{minimum} are needed")
        time.sleep(0.2)
    return nodes


def federated_scaler(grid: Grid, plan: TrainingPlan, nodes: list[int], privacy: PrivacyState
                     ) -> tuple[list[float], list[float], float, dict[int, str]]:
    """Global mean/std of the transformed features from the units' sums (round 0).

    Returns mean, std, the (noisy, under DP) number of training users, and each unit's name.
    """
    from clients.dataset import scaler_from_bounded

    record = RecordDict({"config": _config_record(plan.round_config(0, None, None, privacy))})
    messages = [Message(content=record, message_type="query", dst_node_id=nid) for nid in nodes]
    replies = list(grid.send_and_receive(messages, timeout=plan.round_timeout_s))
    moments, names = [], {}
    for reply in replies:
        if reply.has_error():
            log(WARNING, "unit %s failed the feature-statistics query: %s", reply.metadata.src_node_id,
                reply.error.reason)
            continue
        m = reply.content["metrics"]
        moments.append((float(m["n"]), np.asarray(m["sum"]), np.asarray(m["sumsq"])))
        identity = reply.content.config_records.get("identity")
        names[reply.metadata.src_node_id] = str(identity["unit-id"]) if identity else f"node-{reply.metadata.src_node_id}"
    if len(moments) < plan.min_fit_units:
        raise NotEnoughUnits(f"{len(moments)} units returned feature statistics; the plan needs "
                             f"{plan.min_fit_units}")
    mean, std = global_scaler(moments) if privacy.mode == "none" else scaler_from_bounded(moments)
    return mean.tolist(), std.tolist(), float(sum(m[0] for m in moments)), names


def _evaluate(strategy: Any, grid: Grid, server_round: int, arrays: ArrayRecord, cfg: RoundConfig,
              timeout: float) -> tuple[MetricRecord | None, int]:
    messages = strategy.configure_evaluate(server_round, arrays, _config_record(cfg), grid)
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    failed = sum(1 for r in replies if r.has_error())
    return strategy.aggregate_evaluate(server_round, replies), failed


def log_round(record: dict[str, Any]) -> None:
    """Default progress report: one line per round."""
    log(INFO, "round %s: auc=%.4f log_loss=%.4f brier=%.4f units=%s failed=%s (%.1f s)",
        record["round"], record.get("auc", float("nan")), record.get("log_loss", float("nan")),
        record.get("brier", float("nan")), record.get("units_trained", "-"), record.get("units_failed", 0),
        record.get("seconds", 0.0))


def run_training(
    grid: Grid,
    plan: TrainingPlan,
    on_round: Callable[[dict[str, Any]], None] = log_round,
    after_round: Callable[[int], None] | None = None,
) -> TrainingResult:
    """Run (or resume) the federated training described by ``plan``; see the module doc."""
    run_dir = Path(plan.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = load_checkpoint(run_dir)
    if checkpoint is not None and checkpoint.plan_fingerprint != plan.fingerprint():
        raise ResumeMismatch(
            f"{run_dir} holds a checkpoint of a different plan (model, data, cutoff, privacy or training "
            "settings changed); use a new --out directory or delete the old run."
        )
    ledger = _open_ledger(plan)
    nodes = wait_for_units(grid, plan.min_available_units, plan.connect_timeout_s)
    sampled = max(int(len(nodes) * plan.fraction_fit), plan.min_fit_units)
    if checkpoint is None:
        pre = PrivacyState(mode=plan.privacy)
        if plan.privacy != "none":
            from privacy.training_dp import DEFAULT_SCALER_Z, SCALER_SENSITIVITY

            pre.scaler_sigma = DEFAULT_SCALER_Z * SCALER_SENSITIVITY
        mean, std, n_users, names = federated_scaler(grid, plan, nodes, pre)
        privacy = calibrate(plan, n_users, len(nodes), sampled)
        run_id = uuid.uuid4().hex[:12]
        if ledger is not None:
            # The start-up query has been released: record it, then refuse the run if its planned
            # total would overspend any unit's budget (before any training release).
            _ledger_release(ledger, plan, privacy, run_id, names.values(), 0, privacy.epsilon_after(0))
            for unit in names.values():
                ledger.check(unit, plan.dataset_id, run_id, privacy.epsilon_after(plan.num_rounds))
        model = build_model(plan.model, seed=plan.seed)
        arrays = ArrayRecord(model.state_dict())
        history: list[dict[str, Any]] = []
        start_round = 0
        strategy = _make_strategy(plan, privacy)
        cfg0 = plan.round_config(0, mean, std, privacy)
        metrics0 = None
        if privacy.evaluates_after(0):
            metrics0, _ = _evaluate(strategy, grid, 0, arrays, cfg0, plan.round_timeout_s)
        record0 = {"round": 0, **_metric_dict(metrics0), "epsilon": privacy.epsilon_after(0)}
        history.append(record0)
        on_round(record0)
        extra = {"privacy": privacy.to_json(), "units": names, "run_id": run_id}
        save_checkpoint(run_dir, Checkpoint(0, _to_numpy(arrays), mean, std, history, plan.fingerprint(), extra))
    else:
        mean, std = checkpoint.scaler_mean, checkpoint.scaler_std
        arrays = _as_torch_record(plan, checkpoint.arrays)
        history = checkpoint.history
        start_round = checkpoint.round
        privacy = PrivacyState.from_json(checkpoint.extra["privacy"])
        names = {int(k): v for k, v in checkpoint.extra.get("units", {}).items()}
        extra = dict(checkpoint.extra)
        run_id = extra.get("run_id", "unknown")
        strategy = _make_strategy(plan, privacy)
        log(INFO, "resuming %s after round %d of %d", run_dir, start_round, plan.num_rounds)

    aggregator = _secure_aggregator(plan, privacy) if plan.secagg else None
    for server_round in range(start_round + 1, plan.num_rounds + 1):
        started = time.perf_counter()
        cfg = plan.round_config(server_round, mean, std, privacy)
        epsilon = privacy.epsilon_after(server_round)
        if ledger is not None:
            # Write-ahead: the release is recorded before any unit computes it. A round re-run
            # after a crash is a new release and counts as one more round of training.
            done = max(ledger.releases(run_id, u, plan.dataset_id) for u in names.values())
            release_no = max(done + 1, server_round)
            epsilon = privacy.epsilon_after(release_no)
            for unit in names.values():
                ledger.check(unit, plan.dataset_id, run_id, epsilon)
            _ledger_release(ledger, plan, privacy, run_id, names.values(), release_no, epsilon)
            if release_no > server_round:  # units check their budget against the true total
                total = release_no + plan.num_rounds - server_round
                cfg = cfg.model_copy(update={"planned_rounds": total, "epsilon_planned": privacy.epsilon_after(total)})
        messages = list(strategy.configure_train(server_round, arrays, _config_record(cfg), grid))
        secagg_facts = None
        if plan.secagg:
            arrays, n_ok, secagg_facts = _secure_round(grid, plan, privacy, messages, arrays, aggregator)
            failed, train_metrics = len(messages) - n_ok, None
        else:
            replies = list(grid.send_and_receive(messages, timeout=plan.round_timeout_s))
            ok = [r for r in replies if not r.has_error()]
            n_ok, failed = len(ok), len(messages) - len(ok)
            for r in replies:
                if r.has_error():
                    log(WARNING, "round %d: unit %s failed: %s", server_round, r.metadata.src_node_id, r.error.reason)
        if n_ok < plan.min_fit_units:
            raise NotEnoughUnits(
                f"round {server_round}: {n_ok} of {len(messages)} units replied; the plan needs "
                f"{plan.min_fit_units}. The run stopped after round {server_round - 1}; start it again "
                "with the same output directory to resume."
            )
        if not plan.secagg:
            new_arrays, train_metrics = strategy.aggregate_train(server_round, ok)
            if new_arrays is None:  # pragma: no cover - guarded above
                raise NotEnoughUnits(f"round {server_round}: no usable update")
            arrays = new_arrays
        eval_metrics, eval_failed = None, 0
        if privacy.evaluates_after(server_round):
            eval_metrics, eval_failed = _evaluate(strategy, grid, server_round, arrays, cfg, plan.round_timeout_s)
        record = {
            "round": server_round,
            **_metric_dict(eval_metrics),
            "train_loss": float(train_metrics["train-loss"]) if train_metrics and "train-loss" in train_metrics else None,
            "units_trained": n_ok,
            "units_failed": failed,
            "units_failed_evaluation": eval_failed,
            "epsilon": epsilon,
            **({"secagg": secagg_facts} if secagg_facts else {}),
            "seconds": round(time.perf_counter() - started, 3),
        }
        history.append(record)
        save_checkpoint(run_dir, Checkpoint(server_round, _to_numpy(arrays), mean, std, history,
                                            plan.fingerprint(), extra))
        _append_jsonl(run_dir / ROUNDS_FILE, record)
        if after_round is not None:
            after_round(server_round)
        on_round(record)

    final = _to_numpy(arrays)
    version = model_version(arrays.to_torch_state_dict())
    save_checkpoint(run_dir, Checkpoint(plan.num_rounds, final, mean, std, history, plan.fingerprint(),
                                        extra={"model": plan.model, "model_version": version,
                                               "cutoff": plan.cutoff.isoformat(),
                                               "horizon_days": plan.horizon_days,
                                               "privacy": privacy.statement(plan.num_rounds)}), name=MODEL_FILE)
    return TrainingResult(final, mean, std, history, version, start_round, privacy.statement(plan.num_rounds),
                          sorted(names.values()))


def _secure_aggregator(plan: TrainingPlan, privacy: PrivacyState) -> Any:
    """One secure-aggregation coordinator per run (it carries the next round's advertisements)."""
    from privacy.secagg.config import SecAggConfig
    from privacy.secagg.flower import SecAggAggregator

    client = privacy.mode == "client"
    config = SecAggConfig(threshold=plan.secagg_threshold,
                          clip_range=privacy.clipping_norm if client else plan.secagg_clip_range)
    return SecAggAggregator(config, min_units=plan.min_fit_units)


def _secure_round(grid: Grid, plan: TrainingPlan, privacy: PrivacyState, messages: list[Message],
                  arrays: ArrayRecord, aggregator: Any) -> tuple[ArrayRecord, int, dict[str, Any]]:
    """One training round through secure aggregation: the coordinator learns the sum only.

    Client mode: units clip their update to the clipping norm before masking, and the
    coordinator adds Gaussian noise ``z * C`` to the sum (the same noise Flower's wrapper adds
    to the mean, times the number of units)."""
    from privacy.secagg.flower import apply_mean_update

    client = privacy.mode == "client"
    node_ids = [m.metadata.dst_node_id for m in messages]
    total, survivors, facts = aggregator.run_round(grid, node_ids, messages[0].content, plan.round_timeout_s,
                                                   l2_clip=privacy.clipping_norm if client else 0.0)
    noise = privacy.noise_multiplier * privacy.clipping_norm if client else 0.0
    return apply_mean_update(arrays, total, len(survivors), noise), len(survivors), facts


def _open_ledger(plan: TrainingPlan) -> Any:
    """The budget ledger, or None when the plan names none (or spends nothing)."""
    if plan.ledger_path is None or plan.privacy == "none":
        return None
    from privacy.ledger import BudgetLedger

    return BudgetLedger(plan.ledger_path)


def _ledger_release(ledger: Any, plan: TrainingPlan, privacy: PrivacyState, run_id: str, units: Any,
                    release_no: int, epsilon: float) -> None:
    details = {"noise_multiplier": privacy.noise_multiplier, "sample_rate": privacy.sample_rate,
               "steps_per_round": privacy.steps_per_round, "rounds_planned": plan.num_rounds,
               "output_dir": str(plan.output_dir)}
    for unit in units:
        ledger.record(run_id, unit, plan.dataset_id, release_no, epsilon, privacy.delta,
                      f"{privacy.mode}-level DP ({'DP-SGD' if privacy.mode == 'user' else 'Gaussian, clipped updates'})",
                      details)


def _metric_dict(metrics: MetricRecord | None) -> dict[str, Any]:
    if metrics is None:
        return {}
    out = {}
    for key in ("auc", "log-loss", "brier", "num-examples"):
        if key in metrics:
            out[key.replace("-", "_").replace("num_examples", "n_eval")] = float(metrics[key])
    return out


def _to_numpy(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in arrays.items()}


def _as_torch_record(plan: TrainingPlan, arrays: dict[str, np.ndarray]) -> ArrayRecord:
    import torch

    model = build_model(plan.model)
    model.load_state_dict({k: torch.as_tensor(v) for k, v in arrays.items()})
    return ArrayRecord(model.state_dict())


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")
