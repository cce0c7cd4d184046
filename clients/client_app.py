"""The Flower ClientApp a business unit runs on its own premises.

Handlers (Flower Message API; names in :mod:`fedseg.protocol`):

- ``query.privacy``: the unit accepts or refuses a private run's planned releases before any is
  made, with its own accountant and budget (:mod:`privacy.budget`);
- ``query``: the unit's share of the global feature standardisation (count, sums, sums of
  squares of the transformed features of its training users; noisy under user-level DP);
- ``train``: load the global model, train locally, send back the weights and the number of
  training users (1 under DP: user counts are private); with ``evaluate-incoming`` (runs without
  DP) the reply also carries the evaluation of the model it received, before training;
- ``evaluate``: score the unit's test users with the global model; send back only sums and
  score histograms (:mod:`fedseg.metrics`; a CLV run: value sums and histograms,
  :mod:`fedseg.value_metrics`), noisy under user-level DP;
- ``query.seg_*``: federated segmentation (:mod:`clients.segment_handlers`);
- ``query.kpis``: the unit's monitoring KPI tables (:mod:`clients.kpis`), noisy under DP;
- ``query.tag_quantiles``, ``query.tags``: the histograms of the tags' quantiles and the tag x
  segment counts (:mod:`clients.tags`), noisy under DP; per-user tags stay on the unit.

Under differential privacy the unit charges every release to its own account *before* making
it (write-ahead), built from the parameters it actually applies, and draws its DP-SGD sample and
noise from OS entropy (:mod:`clients.unit_privacy`): nothing the coordinator sends lets it replay
them, and a coordinator that asks for more than it announced is refused.

Where the unit's data comes from, in this order:

1. node config ``data-path`` (and optionally ``users-path``, ``on-error``): the unit's own
   events file, read through the data contract (deployment: ``flower-supernode --node-config``,
   written from a validated :class:`clients.unit_config.UnitConfig`);
2. files handed to :func:`make_client_app` (``fedseg simulate`` writes one file per unit and
   picks the file by the node's ``partition-id``);
3. the bundled dataset named in the round config (``dataset = "cdnow"``), split over
   ``num-partitions`` units by a hash of the user id (``flwr run .`` with no data at all).

Every reply passes :func:`clients.guard.outgoing_guard_mod`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.dataset import UnitData, bounded_moments, feature_moments, prepare_unit
from clients.guard import outgoing_guard_mod
from clients.kpis import kpi_answer
from clients.tags import quantile_answer, tags_answer
from clients.segment_handlers import final_step, grid_step, lloyd_step, rfm_step
from clients.unit_privacy import answer_privacy_plan, events_fingerprint, private_generators, unit_account
from fedseg import protocol
from fedseg.config import from_flower_config
from fedseg.protocol import RoundConfig
from fedseg.sequences import uses_sequences
from privacy.budget import UnitPrivacy
from privacy.kpis_dp import kpi_releases
from privacy.tags_dp import tag_releases
from privacy.segmentation_dp import step_releases
from privacy.training_dp import client_release, dpsgd_release, evaluation_release, scaler_release

_CACHE: dict[tuple, UnitData] = {}
_EVENTS: dict[tuple, tuple[pd.DataFrame, pd.DataFrame | None, str]] = {}


class UnitDataError(RuntimeError):
    """The unit's data cannot be found or read."""


def _round_config(msg: Message) -> RoundConfig:
    return from_flower_config(RoundConfig, dict(msg.content.config_records[protocol.CONFIG]))


def _hash_partition(events: pd.DataFrame, partition_id: int, num_partitions: int) -> pd.DataFrame:
    hashed = pd.util.hash_pandas_object(events["user_id"].astype(str), index=False).to_numpy()
    return events.loc[(hashed % num_partitions) == partition_id].reset_index(drop=True)


def load_unit_events(
    context: Context, cfg: RoundConfig, unit_files: Sequence[Path] | None
) -> tuple[pd.DataFrame, pd.DataFrame | None, str]:
    """The unit's events (and users, if any) and a description of where they came from."""
    from clients.ingest import FileFormat, read_events, read_users

    node = context.node_config
    if "data-path" in node:
        path = Path(str(node["data-path"]))
        on_error = str(node.get("on-error", "fail"))
        fmt = FileFormat(sep=str(node.get("sep", ",")), encoding=str(node.get("encoding", "utf-8")),
                         date_format=str(node["date-format"]) if "date-format" in node else None)
        events = read_events(path, on_error=on_error, file_format=fmt).frame
        users = read_users(Path(str(node["users-path"])), on_error=on_error,
                           file_format=fmt).frame if "users-path" in node else None
        return events, users, str(path)
    if unit_files is not None:
        pid = int(node["partition-id"])
        if pid >= len(unit_files):
            raise UnitDataError(f"partition-id {pid} but only {len(unit_files)} unit files were given")
        path = Path(unit_files[pid])
        events = pd.read_parquet(path)
        users_path = path.with_name(path.name.replace("events", "users"))
        users = pd.read_parquet(users_path) if users_path != path and users_path.exists() else None
        return events, users, str(path)
    if cfg.dataset == "cdnow" and "partition-id" in node:
        from fedseg.datasets import load_cdnow

        pid, parts = int(node["partition-id"]), int(node["num-partitions"])
        return _hash_partition(load_cdnow(), pid, parts), None, f"cdnow partition {pid}/{parts}"
    raise UnitDataError(
        "this unit has no data: start the SuperNode with --node-config \"data-path='/path/events.parquet'\""
    )


def unit_events(context: Context, cfg: RoundConfig, unit_files: Sequence[Path] | None
                ) -> tuple[pd.DataFrame, pd.DataFrame | None, str]:
    """The unit's events and users, read once per run and process."""
    key = (context.run_id, context.node_id, tuple(map(str, unit_files or ())), cfg.dataset)
    if key not in _EVENTS:
        _EVENTS[key] = load_unit_events(context, cfg, unit_files)
    return _EVENTS[key]


def unit_data(context: Context, cfg: RoundConfig, unit_files: Sequence[Path] | None) -> UnitData:
    """The unit's prepared data, cached for the life of the process."""
    key = (context.run_id, context.node_id, cfg.cutoff, cfg.horizon_days, uses_sequences(cfg.model),
           tuple(map(str, unit_files or ())))
    if key not in _CACHE:
        events, users, _ = unit_events(context, cfg, unit_files)
        _CACHE[key] = prepare_unit(events, cfg.features, users=users, with_sequences=uses_sequences(cfg.model))
    return _CACHE[key]


def unit_name(context: Context) -> str:
    """``unit-id`` from the node config, else ``unit_<partition-id>``."""
    node = context.node_config
    if "unit-id" in node:
        return str(node["unit-id"])
    return f"unit_{node.get('partition-id', context.node_id)}"


def _scaler(cfg: RoundConfig) -> tuple[np.ndarray, np.ndarray]:
    if cfg.scaler_mean is None or cfg.scaler_std is None:
        raise ValueError("the round config carries no scaler; the coordinator must send scaler-mean/std")
    return np.asarray(cfg.scaler_mean), np.asarray(cfg.scaler_std)


def make_client_app(unit_files: Sequence[Path] | None = None, output_dir: Path | None = None,
                    secagg_identities: Path | None = None, train_mods: Sequence | None = None,
                    ledger_path: Path | None = None, dataset_id: str | None = None,
                    dp_research_seed: int | None = None, scores_path: Path | None = None,
                    playbook: Any = None, contact_log_path: Path | None = None,
                    action_files: Sequence[Path] | None = None) -> ClientApp:
    """A ClientApp. Simulations hand it what deployed units take from their node config:

    - ``unit_files``: one events file per partition (node config ``data-path``);
    - ``output_dir``: where units write their local per-user outputs (``output-dir``);
    - ``secagg_identities``: secure-aggregation identity keys and registry (``secagg-key``,
      ``secagg-registry``);
    - ``ledger_path``, ``dataset_id``: the units' privacy ledger and the name their spend is
      recorded under (``ledger-path``, ``dataset-id``; default: a fingerprint of the events);
    - ``dp_research_seed``: a unit-local seed for DP-SGD's sample and noise and the playbook's
      holdout (``dp-seed``): reproducible research runs only; by default they come from OS entropy;
    - ``scores_path``: per-user scores from ``fedseg score`` (``scores-path``); ``playbook``: the
      playbook (``playbook-path``); ``contact_log_path``: the unit's contact log (``contact-log-path``);
    - ``action_files``: one action list per partition, for the effect measurement (``actions-path``).

    ``train_mods`` are extra mods placed innermost on the train handler (fault injection,
    instrumentation).
    """
    from privacy.secagg.flower import make_secagg_mod

    app = ClientApp()
    secagg = make_secagg_mod(secagg_identities)

    def account(context: Context, cfg: RoundConfig) -> UnitPrivacy:
        node = context.node_config
        name = str(node["dataset-id"]) if "dataset-id" in node else dataset_id
        if name is None:
            name = events_fingerprint(unit_events(context, cfg, unit_files)[0])
        return unit_account(context, unit_name(context), name, ledger_path)

    def private_answer(task: str, releases_of, answer, with_request: bool = False):  # noqa: ANN001, ANN202
        """A handler that charges the releases its config asks for (write-ahead), then answers
        with the unit's private randomness; without noise it answers only units without a budget.
        ``with_request``: ``answer`` also gets the message and the context (models it carries)."""
        def handler(msg: Message, context: Context) -> Message:
            config = dict(msg.content.config_records[protocol.CONFIG])
            cfg = RoundConfig(cutoff=config["cutoff"], horizon_days=int(config.get("horizon-days", 1)),
                              dataset=str(config.get("dataset", "")))
            events, users, _ = unit_events(context, cfg, unit_files)
            own = account(context, cfg)
            releases = releases_of(config)
            if not releases:
                own.require_private(task)
            for release in releases:
                own.charge(str(config.get(protocol.RUN_ID, "")), task, release)
            _, _, rng = private_generators(context.node_config, dp_research_seed,
                                           f"{unit_name(context)}|{msg.metadata.message_type}", msg.content)
            out_dir = Path(str(context.node_config["output-dir"])) if "output-dir" in context.node_config else output_dir
            if with_request:
                metrics = answer(events, users, config, rng, out_dir, unit_name(context), msg, context)
            else:
                metrics = answer(events, users, config, rng, out_dir, unit_name(context))
            return Message(RecordDict({protocol.METRICS: MetricRecord(metrics)}), reply_to=msg)
        return handler

    def segmentation_answer(step):  # noqa: ANN001, ANN202
        def answer(events, users, config, rng, out_dir, unit, msg, context):  # noqa: ANN001, ANN202
            if step is final_step:
                # the holdout is drawn by the unit's own generator (OS entropy, or a seed kept on the unit)
                node = context.node_config
                return final_step(events, users, config, out_dir, unit,
                                  scores=unit_scores(msg, context, events, users, config),
                                  playbook=unit_playbook(node, playbook), contact_log=unit_contact_log(node), rng=rng)
            if step is rfm_step:
                scores = unit_scores(msg, context, events, users, config) if config.get("tier-by") == "clv" else None
                return rfm_step(events, users, config, scores, rng=rng)
            return step(events, users, config, rng=rng)
        return answer

    def unit_scores(msg: Message, context: Context, events: pd.DataFrame, users: pd.DataFrame | None,
                    config: dict) -> pd.DataFrame | None:  # type: ignore[type-arg]
        """Per-user scores at the segmentation cutoff: with the global models the message carries,
        else from the unit's own scores file (node config ``scores-path``; simulation ``scores_path``)."""
        import datetime as dt

        from clients.features import build_features
        from clients.scoring import ScoringModel, score_features
        from fedseg.config import FeatureConfig

        models = [ScoringModel.from_records(msg.content.array_records[name],
                                            msg.content.config_records[name + "-meta"])
                  for name in (protocol.CHURN_MODEL, protocol.CLV_MODEL) if name in msg.content.array_records]
        if models:
            cutoff = dt.date.fromisoformat(str(config["cutoff"]))
            features = build_features(events, FeatureConfig(cutoff=cutoff), users=users)
            return score_features(events, features, cutoff, models)
        node = context.node_config
        path = Path(str(node["scores-path"])) if "scores-path" in node else scores_path
        if path is None:
            return None
        from fedseg.io import read_table

        scores = read_table(path, "scores-path")
        return scores.assign(user_id=scores["user_id"].astype(str))

    def unit_playbook(node: dict, given: Any) -> Any:  # type: ignore[type-arg]
        from fedseg.playbook import load_playbook

        return load_playbook(str(node["playbook-path"])) if "playbook-path" in node else given

    def unit_contact_log(node: dict) -> pd.DataFrame | None:  # type: ignore[type-arg]
        path = Path(str(node["contact-log-path"])) if "contact-log-path" in node else contact_log_path
        if path is None:
            return None
        from fedseg.io import read_table

        log = read_table(path, "contact-log-path")
        return log.assign(user_id=log["user_id"].astype(str))

    for name, step in (("grid", grid_step), ("lloyd", lloyd_step), ("rfm", rfm_step), ("final", final_step)):
        app.query(f"seg_{name}", mods=[outgoing_guard_mod])(
            private_answer("segmentation", functools.partial(step_releases, name), segmentation_answer(step),
                           with_request=True))
    app.query(protocol.KPIS.removeprefix("query."), mods=[outgoing_guard_mod])(
        private_answer("kpis", kpi_releases, lambda events, users, config, rng, out, name: kpi_answer(events, config, rng)))
    app.query(protocol.TAG_QUANTILES.removeprefix("query."), mods=[outgoing_guard_mod])(
        private_answer("tags", lambda config: tag_releases("quantiles", config),
                       lambda events, users, config, rng, out, name: quantile_answer(events, users, config, rng)))
    app.query(protocol.TAGS.removeprefix("query."), mods=[outgoing_guard_mod])(
        private_answer("tags", lambda config: tag_releases("tags", config), tags_answer))

    def _global_model_and_data(msg: Message, context: Context):  # noqa: ANN202
        """Round config, the unit's data, the scaler and the global model the message carries."""
        from fedseg.models import build_model  # torch: imported by the messages that need a model

        cfg = _round_config(msg)
        data = unit_data(context, cfg, unit_files)
        mean, std = _scaler(cfg)
        model = build_model(cfg.model, target=cfg.target)
        model.load_state_dict(msg.content.array_records[protocol.ARRAYS].to_torch_state_dict())
        return cfg, data, mean, std, model

    @app.query(protocol.EFFECTS.removeprefix("query."), mods=[outgoing_guard_mod, secagg])
    def effects(msg: Message, context: Context) -> Message:
        """Outcome sums per segment x action x arm of the unit's campaign (:mod:`clients.effects`).

        Under secure aggregation the secagg mod calls this handler only at its ``masked`` stage,
        after checking the round (pinned settings, U2); the table goes back as the ``arrays``
        record, which the mod masks, so the coordinator sees only the sum over at least ``t``
        units and this unit adds only its share of the noise (:func:`clients.effects.noise_share_units`)."""
        from clients.effects import effects_answer
        from fedseg.io import read_table
        from privacy.effects_dp import effects_release

        config = dict(msg.content.config_records[protocol.CONFIG])
        cfg = RoundConfig(cutoff=config["cutoff"], horizon_days=int(config["window-days"]),
                          dataset=str(config.get("dataset", "")))
        events = unit_events(context, cfg, unit_files)[0]
        node = context.node_config
        if "actions-path" in node:
            path = Path(str(node["actions-path"]))
        elif action_files is not None:
            path = Path(action_files[int(node["partition-id"])])
        else:
            raise UnitDataError("this unit has no action list for the effect measurement: set actions-path "
                                "in its unit.toml (or --node-config \"actions-path='/path/actions.parquet'\")")
        actions = read_table(path, "actions-path").astype({"user_id": str})
        own = account(context, cfg)
        scales = [float(x) for x in config.get("laplace-scales", [])]
        run_id = str(config.get(protocol.RUN_ID, ""))
        if scales:  # the release the unit will actually make, from the noise it adds
            own.charge(run_id, "effects", effects_release(scales))
        else:
            own.require_private("effect measurement")
        _, _, rng = private_generators(node, dp_research_seed, f"{unit_name(context)}|effects", msg.content)
        if config.get("secagg-stage") != "masked":
            answer = effects_answer(actions, events, config, rng)
            return Message(RecordDict({protocol.METRICS: MetricRecord(answer)}), reply_to=msg)
        from clients.effects import masked_table_reply

        start = msg.content.array_records.get(protocol.ARRAYS)
        arrays = masked_table_reply(actions, events, config, rng, start)
        return Message(RecordDict({protocol.ARRAYS: arrays}), reply_to=msg)

    @app.query(protocol.PRIVACY.removeprefix("query."), mods=[outgoing_guard_mod])
    def privacy_plan(msg: Message, context: Context) -> Message:
        plan = msg.content.config_records[protocol.PRIVACY_PLAN]
        cfg = from_flower_config(RoundConfig, dict(msg.content.config_records[protocol.CONFIG]))
        events = unit_events(context, cfg, unit_files)[0]
        metrics, configs = answer_privacy_plan(account(context, cfg), plan, int(events["user_id"].nunique()))
        records = {protocol.METRICS: MetricRecord(metrics), **{k: ConfigRecord(v) for k, v in configs.items()}}
        return Message(RecordDict(records), reply_to=msg)

    @app.query(mods=[outgoing_guard_mod])
    def query(msg: Message, context: Context) -> Message:
        cfg = _round_config(msg)
        data = unit_data(context, cfg, unit_files)
        train = data.static[~data.test_mask]
        own = account(context, cfg)
        if cfg.privacy == "none":
            own.require_private("training run")
            n, total, total_sq = feature_moments(train)
        elif cfg.privacy == "user":  # bounded features, the unit's own Gaussian noise
            own.charge(cfg.run_id, "training", scaler_release(cfg.scaler_sigma))
            n, total, total_sq = bounded_moments(train, cfg.scaler_sigma)
        else:
            raise ValueError("client-level DP standardises with public bounds; this unit sends no feature "
                             "statistics under it")
        metrics = MetricRecord({"n": n, "sum": total.tolist(), "sumsq": total_sq.tolist()})
        identity = ConfigRecord({"unit-id": unit_name(context)})
        return Message(RecordDict({protocol.METRICS: metrics, protocol.IDENTITY: identity}), reply_to=msg)

    @app.train(mods=[outgoing_guard_mod, secagg, *(train_mods or [])])
    def train(msg: Message, context: Context) -> Message:
        from clients.training import TrainParams, train_local, train_local_dpsgd

        cfg, data, mean, std, model = _global_model_and_data(msg, context)
        own = account(context, cfg)
        records: dict[str, MetricRecord] = {}
        if cfg.evaluate_incoming:  # the incoming global model, before local training changes it
            records[protocol.EVALUATION] = evaluation(cfg, data, mean, std, model, own, context, msg)
        if cfg.privacy == "user":
            # The Poisson sample and the noise come from OS entropy (or a unit-local research
            # seed), never from the run seed, the round or the node id, which the coordinator knows.
            sampler, noise, _ = private_generators(context.node_config, dp_research_seed,
                                                   f"{unit_name(context)}|train", msg.content)
            own.charge(cfg.run_id, "training", dpsgd_release(cfg.noise_multiplier, cfg.sample_rate,
                                                             cfg.steps_per_round))
            loss, _ = train_local_dpsgd(model, data, mean, std, cfg.noise_multiplier, cfg.max_grad_norm,
                                        cfg.sample_rate, cfg.steps_per_round, cfg.learning_rate,
                                        sample_generator=sampler, noise_generator=noise, target=cfg.target)
        else:
            if cfg.privacy == "client":  # the noise is the coordinator's; the unit records the stated release
                own.charge(cfg.run_id, "training", client_release(cfg.noise_multiplier, cfg.unit_sample_rate))
            else:
                own.require_private("training run")
            # Without user-level DP the shuffling seed may come from the run config: research
            # runs are reproducible (same seed, same model).
            seed = cfg.seed * 100_003 + cfg.server_round * 101 + int(context.node_config.get("partition-id", 0))
            params = TrainParams(epochs=cfg.local_epochs, learning_rate=cfg.learning_rate,
                                 batch_size=cfg.batch_size, proximal_mu=cfg.proximal_mu, seed=seed,
                                 target=cfg.target)
            loss = train_local(model, data, mean, std, params)
        # Under DP the number of users is private: every unit weighs the same.
        weight = data.n_train if cfg.privacy == "none" else 1
        values = {"num-examples": weight}
        if cfg.privacy == "none":  # the local training loss is not a DP release: sent only without DP
            values["train-loss"] = loss
        records[protocol.METRICS] = MetricRecord(values)
        return Message(RecordDict({protocol.ARRAYS: ArrayRecord(model.state_dict()), **records}), reply_to=msg)

    def evaluation(cfg: RoundConfig, data: UnitData, mean: np.ndarray, std: np.ndarray, model, own: UnitPrivacy,
                   context: Context, msg: Message) -> MetricRecord:  # noqa: ANN001
        """The unit's test users scored with ``model``: sums and score histograms only (noisy
        under user-level DP, charged first)."""
        from clients.training import evaluate_clv_local, evaluate_local

        if cfg.privacy == "client":
            raise ValueError("no federated evaluation is released under client-level DP")
        rng = None
        if cfg.privacy == "user":
            own.charge(cfg.run_id, "training", evaluation_release(cfg.eval_sigma, target=cfg.target))
            _, _, rng = private_generators(context.node_config, dp_research_seed,
                                           f"{unit_name(context)}|evaluate", msg.content)
        else:
            own.require_private("evaluation")
        if cfg.target == "clv":
            return MetricRecord(evaluate_clv_local(model, data, mean, std, noise_sigma=cfg.eval_sigma,
                                                   clip=cfg.value_clip, rng=rng))
        stats = evaluate_local(model, data, mean, std, noise_sigma=cfg.eval_sigma, rng=rng)
        return MetricRecord({
            "num-examples": stats.n, "loss-sum": stats.loss_sum, "brier-sum": stats.brier_sum,
            "hist-pos": stats.hist_pos.tolist(), "hist-neg": stats.hist_neg.tolist(),
        })

    @app.evaluate(mods=[outgoing_guard_mod])
    def evaluate(msg: Message, context: Context) -> Message:
        cfg, data, mean, std, model = _global_model_and_data(msg, context)
        metrics = evaluation(cfg, data, mean, std, model, account(context, cfg), context, msg)
        return Message(RecordDict({protocol.METRICS: metrics}), reply_to=msg)

    return app


#: The app ``flwr run .`` and ``flower-supernode`` load (see pyproject ``[tool.flwr.app.components]``).
app = make_client_app()
