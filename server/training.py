"""The coordinator's federated training loop on Flower's Message API.

One run, for a :class:`TrainingPlan`:

1. wait until ``min_available_units`` units are connected;
2. under differential privacy, **agree the privacy plan**: every unit receives the list of
   releases the run will make and accepts it with its own accountant and budget, or refuses it
   (the run then stops with the unit's reason, before anything was released or charged;
   :func:`server.grid.agree_privacy`);
3. **federated standardisation** (round 0): every unit answers a ``query`` with the count,
   sums and sums of squares of its transformed features (noisy under user-level DP); the
   coordinator derives the global mean and standard deviation. Under client-level DP there is
   no such query: features are standardised with public bounds;
4. rounds ``1..num_rounds`` of Flower's own strategy (:class:`flwr.serverapp.strategy.FedAvg`
   or :class:`~flwr.serverapp.strategy.FedProx`): ``configure_train`` samples units, the Grid
   delivers the messages, ``aggregate_train`` averages the weights (by number of training users;
   equally under DP); under client-level DP the coordinator's own clip-and-noise aggregation
   (:mod:`server.dp`); with secure aggregation the masked sum (:mod:`privacy.secagg`); then
   federated evaluation merges the units' sums and score histograms into AUC, log loss and
   Brier score (:mod:`fedseg.metrics`), or for a CLV run their value sums and histograms into
   normalized Gini, top-decile capture, MAE, RMSE and Spearman (:mod:`fedseg.value_metrics`),
   when the privacy mode allows it;
5. before each release the coordinator writes it into the checkpoint (so a round re-sent after
   a crash is counted), and after each round the checkpoint (weights, scaler, history) is
   replaced atomically, so a run restarted with the same plan continues after its last
   completed round.

The loop is fedseg's own rather than ``Strategy.start`` because it checkpoints and resumes,
agrees the privacy plan first, and tolerates units that fail mid-round as long as at least
``min_fit_units`` replied.
"""

from __future__ import annotations

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

from fedseg.scaling import global_scaler, public_scaler, scaler_from_bounded
from fedseg import protocol
from fedseg.config import TrainingPlan, to_flower_config
from fedseg.protocol import RoundConfig
from fedseg.errors import FedsegError
from fedseg.metrics import auc_from_histograms
from fedseg.models import build_model, model_version
from privacy.accounting import Release, epsilon
from privacy.training_dp import TrainingPrivacy
from fedseg.checkpoint import MODEL_FILE, ROUNDS_FILE, Checkpoint, load_checkpoint, save_checkpoint
from server.grid import NotEnoughUnits, agree_privacy, ask, wait_for_units

__all__ = ["NotEnoughUnits", "ResumeMismatch", "TrainingPlan", "TrainingResult", "run_training"]


def round_config(plan: TrainingPlan, server_round: int, mean: list[float] | None, std: list[float] | None,
                 privacy: TrainingPrivacy | None = None, run_id: str = "", evaluate_incoming: bool = False
                 ) -> RoundConfig:
    """What the units are told in ``server_round`` (the training messages' config)."""
    dp: dict[str, Any] = {"value_clip": plan.value_clip}
    if privacy is not None and privacy.is_private:
        dp = {"privacy": privacy.mode, "noise_multiplier": privacy.noise_multiplier,
              "max_grad_norm": privacy.max_grad_norm, "sample_rate": privacy.sample_rate,
              "steps_per_round": privacy.steps_per_round, "scaler_sigma": privacy.scaler_sigma,
              "eval_sigma": privacy.eval_sigma, "delta": privacy.delta,
              "unit_sample_rate": privacy.unit_sample_rate}
    return RoundConfig(
        model=plan.model, target=plan.target, dataset=plan.dataset, cutoff=plan.cutoff, horizon_days=plan.horizon_days,
        local_epochs=plan.local_epochs, learning_rate=plan.learning_rate, batch_size=plan.batch_size,
        proximal_mu=plan.proximal_mu if plan.strategy == "fedprox" else 0.0, seed=plan.seed,
        server_round=server_round, scaler_mean=mean, scaler_std=std, run_id=run_id,
        evaluate_incoming=evaluate_incoming, **dp)


def folds_evaluation(plan: TrainingPlan, privacy: TrainingPrivacy) -> bool:
    """Whether each round's train message also evaluates the incoming model (one exchange per
    round; the last model is evaluated by a separate exchange).

    Only without DP (a private evaluation is a scheduled release of its own), without secure
    aggregation (its train exchanges are protocol stages) and when every unit trains each round
    (evaluation must cover every unit, not the round's sample)."""
    return privacy.mode == "none" and not plan.secagg and plan.fraction_fit >= 1.0


class ResumeMismatch(FedsegError):
    """A checkpoint exists for a different plan."""


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
    run_id: str = ""
    #: The merged aggregates of the last federated evaluation (histograms included), for pictures.
    evaluation: dict[str, Any] | None = None


def _config_record(cfg: RoundConfig) -> ConfigRecord:
    record = ConfigRecord(to_flower_config(cfg))
    if cfg.scaler_mean is not None:
        record["scaler-mean"] = list(cfg.scaler_mean)
        record["scaler-std"] = list(cfg.scaler_std or [])
    return record


def merge_evaluation(contents: list[RecordDict], weighted_by_key: str = "num-examples") -> MetricRecord:
    """Pooled AUC, log loss and Brier score from the units' sums and histograms (the merged
    histograms ride along, for the calibration and gain charts)."""
    n = 0
    loss = brier = 0.0
    pos = neg = None
    for content in contents:
        m = content[protocol.METRICS]
        n += int(m["num-examples"])
        loss += float(m["loss-sum"])
        brier += float(m["brier-sum"])
        p, q = np.asarray(m["hist-pos"], dtype=np.float64), np.asarray(m["hist-neg"], dtype=np.float64)
        pos = p if pos is None else pos + p
        neg = q if neg is None else neg + q
    if n == 0 or pos is None or neg is None:
        return MetricRecord({"num-examples": 0})
    return MetricRecord({"num-examples": n, "auc": auc_from_histograms(pos, neg),
                         "log-loss": loss / n, "brier": brier / n, "hist-pos": pos.tolist(), "hist-neg": neg.tolist()})


def clv_merger(clip: float | None) -> Callable[[list[RecordDict], str], MetricRecord]:
    """The evaluation merge of a CLV run: pooled value figures from the units' aggregates
    (:func:`fedseg.value_metrics.merge_clv`; ``clip``: money arrives in units of it, under DP). The
    merged value histograms ride along."""
    from fedseg.value_metrics import merge_clv

    def merge(contents: list[RecordDict], weighted_by_key: str = "num-examples") -> MetricRecord:
        units = [dict(content[protocol.METRICS]) for content in contents]
        if not units:
            return MetricRecord({"num-examples": 0})
        figures = merge_clv(units, clip)
        out: dict[str, Any] = {"num-examples": float(figures.pop("n"))}
        out.update({k.replace("_", "-"): float(v) for k, v in figures.items() if v is not None and np.isfinite(v)})
        for key in ("pred-count", "pred-spend"):
            out[key] = np.sum([np.asarray(u[key], dtype=float) for u in units], axis=0).tolist()
        return MetricRecord(out)

    return merge


def _make_strategy(plan: TrainingPlan, privacy: TrainingPrivacy) -> Any:
    """Flower's FedAvg or FedProx (client-level DP aggregates with :mod:`server.dp` instead)."""
    merge = merge_evaluation if plan.target == "churn" else \
        clv_merger(plan.value_clip if privacy.mode == "user" else None)
    common = dict(fraction_train=plan.fraction_fit, fraction_evaluate=1.0,
                  min_train_nodes=plan.min_fit_units, min_evaluate_nodes=plan.min_fit_units,
                  min_available_nodes=plan.min_available_units,
                  evaluate_metrics_aggr_fn=merge)
    return FedProx(proximal_mu=plan.proximal_mu, **common) if plan.strategy == "fedprox" else FedAvg(**common)


def federated_scaler(grid: Grid, plan: TrainingPlan, nodes: list[int], cfg: RoundConfig
                     ) -> tuple[list[float], list[float], dict[int, str]]:
    """Global mean/std of the transformed features from the units' sums (round 0), and each unit's name."""
    answers = ask(grid, nodes, protocol.SCALER, RecordDict({protocol.CONFIG: _config_record(cfg)}),
                  plan.round_timeout_s, require_all=False)
    moments, names = [], {}
    for node, content in answers.items():
        m = content[protocol.METRICS]
        moments.append((float(m["n"]), np.asarray(m["sum"]), np.asarray(m["sumsq"])))
        identity = content.config_records.get(protocol.IDENTITY)
        names[node] = str(identity["unit-id"]) if identity else f"node-{node}"
    if len(moments) < plan.min_fit_units:
        raise NotEnoughUnits(f"{len(moments)} units returned feature statistics; the plan needs "
                             f"{plan.min_fit_units}")
    mean, std = global_scaler(moments) if cfg.privacy == "none" else scaler_from_bounded(moments)
    return mean.tolist(), std.tolist(), names


def in_unit_order(replies: Any, names: dict[int, str]) -> list[Message]:
    """Replies sorted by the units' names: Flower's node ids are random per run, so summing in
    this order gives the same floating-point sums, hence the same model, every run."""
    return sorted(replies, key=lambda r: (names.get(r.metadata.src_node_id, ""), r.metadata.src_node_id))


def _evaluate(strategy: Any, grid: Grid, server_round: int, arrays: ArrayRecord, cfg: RoundConfig,
              timeout: float, names: dict[int, str]) -> tuple[MetricRecord | None, int]:
    messages = strategy.configure_evaluate(server_round, arrays, _config_record(cfg), grid)
    replies = in_unit_order(grid.send_and_receive(messages, timeout=timeout), names)
    failed = sum(1 for r in replies if r.has_error())
    return strategy.aggregate_evaluate(server_round, replies), failed


def log_round(record: dict[str, Any]) -> None:
    """Default progress report: one line per round."""
    figures = " ".join(f"{k}={record[k]:.4f}" for k in ("auc", "log_loss", "brier", "normalized_gini",
                                                          "top_decile_capture", "mae") if k in record)
    log(INFO, "round %s: %s units=%s failed=%s (%.1f s)", record["round"], figures or "-",
        record.get("units_trained", "-"), record.get("units_failed", 0), record.get("seconds", 0.0))


def _releases_json(releases: list[Release]) -> list[dict[str, Any]]:
    return [r.model_dump() for r in releases]


@dataclass
class _Run:
    """The coordinator's state of one run: what the checkpoint holds, and the releases sent."""

    run_dir: Path
    plan: TrainingPlan
    extra: dict[str, Any]
    history: list[dict[str, Any]]
    sent: list[Release]
    round: int = 0
    arrays: ArrayRecord | None = None
    mean: list[float] | None = None
    std: list[float] | None = None

    def save(self) -> None:
        assert self.arrays is not None and self.mean is not None and self.std is not None
        save_checkpoint(self.run_dir, Checkpoint(self.round, _to_numpy(self.arrays), self.mean, self.std,
                                                 self.history, self.plan.fingerprint(), self.extra))

    def release(self, releases: list[Release]) -> None:
        """Count releases before they go out (write-ahead into the checkpoint once it exists): a
        round re-sent after a crash is one more release, and is accounted as such."""
        if not releases:
            return
        self.sent.extend(releases)
        self.extra["sent"] = _releases_json(self.sent)
        if self.arrays is not None:
            self.save()

    def epsilon(self, privacy: TrainingPrivacy) -> float:
        return epsilon(self.sent, privacy.delta) if privacy.is_private and self.sent else 0.0


def run_training(
    grid: Grid,
    plan: TrainingPlan,
    on_round: Callable[[dict[str, Any]], None] = log_round,
    after_round: Callable[[int], None] | None = None,
) -> TrainingResult:
    """Run (or resume) the federated training described by ``plan``; see the module doc."""
    run_dir = Path(plan.output_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    log(INFO, "outputs: %s (checkpoint.npz, rounds.jsonl, model.npz)", run_dir)
    checkpoint = load_checkpoint(run_dir)
    if checkpoint is not None and checkpoint.plan_fingerprint != plan.fingerprint():
        raise ResumeMismatch(
            f"{run_dir} holds a checkpoint of a different plan (model, data, cutoff, privacy or training "
            "settings changed); use a new --out directory or delete the old run."
        )
    nodes = wait_for_units(grid, plan.min_available_units, plan.connect_timeout_s)
    if checkpoint is None:
        privacy = TrainingPrivacy.for_plan(plan)
        run_id = uuid.uuid4().hex[:12]
        run = _Run(run_dir, plan, {"privacy": privacy.model_dump(), "run_id": run_id, "total_units": len(nodes)},
                   [], [])
    else:
        extra = dict(checkpoint.extra)
        privacy = TrainingPrivacy.model_validate(extra["privacy"])
        run_id = extra["run_id"]
        run = _Run(run_dir, plan, extra, checkpoint.history, [Release.model_validate(r) for r in extra.get("sent", [])],
                   checkpoint.round, _as_torch_record(plan, checkpoint.arrays), checkpoint.scaler_mean,
                   checkpoint.scaler_std)
        log(INFO, "resuming %s after round %d of %d", run_dir, checkpoint.round, plan.num_rounds)
    start_round = run.round
    strategy = _make_strategy(plan, privacy)
    last_evaluation: dict[str, Any] | None = None

    units: dict[int, dict[str, Any]] = {}
    if privacy.is_private:
        remaining = privacy.releases(plan.num_rounds, first=start_round + 1 if checkpoint is not None else 0)
        stated = epsilon(run.sent + remaining, privacy.delta)
        units = agree_privacy(grid, nodes, run_id, "training", privacy.delta, stated, remaining,
                              _config_record(round_config(plan, 0, None, None, privacy, run_id)), plan.round_timeout_s)
        log(INFO, "privacy plan accepted by %d units: epsilon %.4f, delta %g", len(units), stated, privacy.delta)

    fold = folds_evaluation(plan, privacy)
    if checkpoint is None:
        if privacy.sends_scaler_query:
            run.release(privacy.round_releases(0))
            run.mean, run.std, names = federated_scaler(grid, plan, nodes,
                                                        round_config(plan, 0, None, None, privacy, run_id))
        else:
            run.mean, run.std = public_scaler()
            names = {n: u["unit"] for n, u in units.items()}
        run.arrays = ArrayRecord(build_model(plan.model, seed=plan.seed, target=plan.target).state_dict())
        run.extra["units"] = names
        metrics0 = None
        if privacy.evaluates_after(0) and not fold:
            metrics0, _ = _evaluate(strategy, grid, 0, run.arrays,
                                    round_config(plan, 0, run.mean, run.std, privacy, run_id), plan.round_timeout_s,
                                    names)
        record0 = {"round": 0, **_metric_dict(metrics0), "epsilon": run.epsilon(privacy)}
        run.history.append(record0)
        if fold:
            record0[PENDING] = True
        else:
            on_round(record0)
        run.save()
    names = {int(k): v for k, v in run.extra.get("units", {}).items()}
    names.update({n: u["unit"] for n, u in units.items()})  # this run's node ids, when the units said who they are

    aggregator = _secure_aggregator(plan, privacy) if plan.secagg else None
    expected_units = privacy.unit_sample_rate * int(run.extra.get("total_units", len(nodes)))
    for server_round in range(start_round + 1, plan.num_rounds + 1):
        started = time.perf_counter()
        pending = run.history[-1] if run.history and run.history[-1].get(PENDING) else None
        cfg = round_config(plan, server_round, run.mean, run.std, privacy, run_id, evaluate_incoming=pending is not None)
        releases = privacy.round_releases(server_round)
        run.release([r for r in releases if r.task != "evaluation"])
        arrays = run.arrays
        messages = _train_messages(strategy, plan, privacy, server_round, arrays, cfg, grid)
        secagg_facts, train_metrics = None, None
        if plan.secagg:
            arrays, n_ok, secagg_facts = _secure_round(grid, plan, privacy, messages, arrays, aggregator,
                                                       expected_units)
            failed = len(messages) - n_ok
        else:
            replies = in_unit_order(grid.send_and_receive(messages, timeout=plan.round_timeout_s), names)
            ok = [r for r in replies if not r.has_error()]
            n_ok, failed = len(ok), len(messages) - len(ok)
            for r in replies:
                if r.has_error():
                    log(WARNING, "round %d: unit %s failed: %s", server_round, r.metadata.src_node_id, r.error.reason)
            if pending is not None:  # the previous round's model, evaluated by the units that replied
                _complete(pending, ok, len(messages), strategy, run_dir, on_round)
        if privacy.mode != "client" and n_ok < plan.min_fit_units:
            raise NotEnoughUnits(
                f"round {server_round}: {n_ok} of {len(messages)} units replied; the plan needs "
                f"{plan.min_fit_units}. The run stopped after round {server_round - 1}; start it again "
                "with the same output directory to resume."
            )
        if not plan.secagg:
            if privacy.mode == "client":
                arrays = _client_dp_aggregate(arrays, ok, privacy, expected_units)
            else:
                new_arrays, train_metrics = strategy.aggregate_train(server_round, ok)
                if new_arrays is None:  # pragma: no cover - guarded above
                    raise NotEnoughUnits(f"round {server_round}: no usable update")
                arrays = new_arrays
        eval_metrics, eval_failed = None, 0
        deferred = fold and server_round < plan.num_rounds  # evaluated in the next round's train exchange
        if privacy.evaluates_after(server_round) and not deferred:
            run.release([r for r in releases if r.task == "evaluation"])
            eval_metrics, eval_failed = _evaluate(strategy, grid, server_round, arrays, cfg, plan.round_timeout_s,
                                                  names)
            if eval_metrics is not None:
                last_evaluation = dict(eval_metrics)
        record = {
            "round": server_round,
            **_metric_dict(eval_metrics),
            "train_loss": float(train_metrics["train-loss"]) if train_metrics and "train-loss" in train_metrics else None,
            "units_trained": n_ok,
            "units_failed": failed,
            "units_failed_evaluation": eval_failed,
            "epsilon": run.epsilon(privacy),
            **({"secagg": secagg_facts} if secagg_facts else {}),
            "seconds": round(time.perf_counter() - started, 3),
        }
        if deferred:
            record[PENDING] = True
        run.history.append(record)
        run.round, run.arrays = server_round, arrays
        run.save()
        if not record.get(PENDING):
            _emit(record, run_dir, on_round)
        if after_round is not None:
            after_round(server_round)

    final = _to_numpy(run.arrays)
    version = model_version(run.arrays.to_torch_state_dict())
    statement = privacy.statement(run.sent)
    if units:
        statement["units_accepted"] = {u["unit"]: {"dataset": u["dataset"], "epsilon": u["epsilon"]}
                                       for u in units.values()}
    save_checkpoint(run_dir, Checkpoint(plan.num_rounds, final, run.mean, run.std, run.history, plan.fingerprint(),
                                        extra={"model": plan.model, "model_version": version,
                                               "target": plan.target,
                                               "cutoff": plan.cutoff.isoformat(),
                                               "horizon_days": plan.horizon_days,
                                               "privacy": statement}), name=MODEL_FILE)
    log(INFO, "done: the global model is %s (version %s)", run_dir / MODEL_FILE, version)
    return TrainingResult(final, run.mean, run.std, run.history, version, start_round, statement,
                          sorted(names.values()), run_id, last_evaluation)


#: Key of a round record whose evaluation arrives with the next round's train replies.
PENDING = "evaluation_pending"


def _emit(record: dict[str, Any], run_dir: Path, on_round: Callable[[dict[str, Any]], None]) -> None:
    """A finished round record: appended to rounds.jsonl and reported."""
    if record.get("round", 0) > 0:
        _append_jsonl(run_dir / ROUNDS_FILE, record)
    on_round(record)


def _complete(record: dict[str, Any], replies: list[Message], asked: int, strategy: Any, run_dir: Path,
              on_round: Callable[[dict[str, Any]], None]) -> MetricRecord | None:
    """Fill a pending round record with the evaluation the train replies carried (merged by the
    strategy's evaluation merge, as evaluate replies are), emit it, and return the merged metrics."""
    evaluated = [r.content for r in replies if protocol.EVALUATION in r.content]
    metrics = strategy.evaluate_metrics_aggr_fn([RecordDict({protocol.METRICS: c[protocol.EVALUATION]})
                                                 for c in evaluated], "num-examples") if evaluated else None
    for content in evaluated:  # Flower's strategies aggregate replies with exactly one MetricRecord
        del content[protocol.EVALUATION]
    record.pop(PENDING, None)
    record.update(_metric_dict(metrics))
    if record.get("round", 0) > 0:
        record["units_failed_evaluation"] = asked - len(evaluated)
    _emit(record, run_dir, on_round)
    return metrics


def _train_messages(strategy: Any, plan: TrainingPlan, privacy: TrainingPrivacy, server_round: int,
                    arrays: ArrayRecord, cfg: RoundConfig, grid: Grid) -> list[Message]:
    """This round's train messages: Flower's strategy samples units; under client-level DP each
    connected unit is sampled independently at the plan's rate (what the accountant assumes)."""
    if privacy.mode != "client":
        return list(strategy.configure_train(server_round, arrays, _config_record(cfg), grid))
    from server.dp import sample_units

    content = RecordDict({protocol.ARRAYS: arrays, protocol.CONFIG: _config_record(cfg)})
    return [Message(content=content, message_type=protocol.TRAIN, dst_node_id=n)
            for n in sample_units(sorted(grid.get_node_ids()), privacy.unit_sample_rate)]


def _flat(record: ArrayRecord) -> np.ndarray:
    return np.concatenate([record[k].numpy().astype(np.float64).ravel() for k in record.keys()])


def _client_dp_aggregate(arrays: ArrayRecord, replies: list[Message], privacy: TrainingPrivacy,
                         expected_units: float) -> ArrayRecord:
    """Clip each unit's update, sum, add the noise, divide by the expected units (:mod:`server.dp`)."""
    from privacy.secagg.flower import apply_mean_update
    from server.dp import clip_to_norm, noisy_mean_update

    start = _flat(arrays)
    total = np.zeros_like(start)
    for reply in replies:
        total += clip_to_norm(_flat(reply.content.array_records[protocol.ARRAYS]) - start, privacy.clipping_norm)
    mean_update = noisy_mean_update(total, privacy.noise_multiplier, privacy.clipping_norm, expected_units)
    return apply_mean_update(arrays, mean_update, 1)


def _secure_aggregator(plan: TrainingPlan, privacy: TrainingPrivacy) -> Any:
    """One secure-aggregation coordinator per run (it carries the next round's advertisements)."""
    from privacy.secagg.config import SecAggConfig
    from privacy.secagg.flower import SecAggAggregator

    client = privacy.mode == "client"
    config = SecAggConfig(threshold=plan.secagg_threshold,
                          clip_range=privacy.clipping_norm if client else plan.secagg_clip_range)
    return SecAggAggregator(config, min_units=plan.min_fit_units)


def _secure_round(grid: Grid, plan: TrainingPlan, privacy: TrainingPrivacy, messages: list[Message],
                  arrays: ArrayRecord, aggregator: Any, expected_units: float
                  ) -> tuple[ArrayRecord, int, dict[str, Any]]:
    """One training round through secure aggregation: the coordinator learns the sum only.

    Client mode: units clip their update to the clipping norm before masking, and the
    coordinator adds Gaussian noise ``z * C`` to the sum and divides by the expected number of
    units (:mod:`server.dp`). Otherwise the sum is divided by the number of survivors."""
    from privacy.secagg.flower import apply_mean_update
    from server.dp import noisy_mean_update

    client = privacy.mode == "client"
    node_ids = [m.metadata.dst_node_id for m in messages]
    total, survivors, facts = aggregator.run_round(grid, node_ids, messages[0].content, plan.round_timeout_s,
                                                   l2_clip=privacy.clipping_norm if client else 0.0)
    if client:
        mean_update = noisy_mean_update(total, privacy.noise_multiplier, privacy.clipping_norm, expected_units)
        return apply_mean_update(arrays, mean_update, 1), len(survivors), facts
    return apply_mean_update(arrays, total, len(survivors)), len(survivors), facts


def _metric_dict(metrics: MetricRecord | None) -> dict[str, Any]:
    """The scalar figures of a merged evaluation, snake_case (histograms are left out)."""
    if metrics is None:
        return {}
    return {("n_eval" if key == "num-examples" else key.replace("-", "_")): float(value)
            for key, value in metrics.items() if not isinstance(value, list)}


def _to_numpy(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in arrays.items()}


def _as_torch_record(plan: TrainingPlan, arrays: dict[str, np.ndarray]) -> ArrayRecord:
    import torch

    model = build_model(plan.model, target=plan.target)
    model.load_state_dict({k: torch.as_tensor(v) for k, v in arrays.items()})
    return ArrayRecord(model.state_dict())


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")
