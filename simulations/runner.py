"""``fedseg simulate``: a federated training run on one machine with Flower's simulation engine.

Steps: load the data (bundled CDNOW, an events file, or the synthetic generator); split the
users over ``units`` (by the data's own ``unit_id`` column, IID, or Dirichlet(alpha) label
skew); write one events file per unit into the run directory; run the real Flower
ServerApp and ClientApp (:mod:`server.server_app`, :mod:`clients.client_app`) on Flower's
simulation engine (Ray backend), one virtual SuperNode per unit; then, because simulation can
pool what real units cannot, train the centralised baseline and BG/NBD on the same split and
write ``summary.json``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field, model_validator

from clients.ingest import FileFormat
from fedseg import __version__
from fedseg.config import FeatureConfig, TrainingPlan
from fedseg.io import write_json, write_table

PartitionScheme = Literal["auto", "iid", "dirichlet", "column"]
DatasetName = Literal["cdnow", "synthetic", "file"]


#: Names a person uses (command-line flags, sweep files) for training-plan fields.
PLAN_ALIASES = {"rounds": "num_rounds", "epsilon": "target_epsilon"}


class SimulationConfig(BaseModel):
    """A simulated federation: where the data comes from, how it is split into units, and the
    training plan the federation runs (:class:`fedseg.config.TrainingPlan`, its own defaults).

    Defaults: the real CDNOW log over 5 IID units with the plan's defaults (MLP, FedAvg, 10 rounds).
    """

    dataset: DatasetName = "cdnow"
    events_path: Path | None = Field(None, description="Events file for dataset 'file'.")
    users_path: Path | None = None
    events_format: FileFormat = Field(default_factory=FileFormat, description="Delimiter, encoding and date "
                                      "format of --events / --users CSV files.")
    synthetic_users: int = Field(20_000, ge=100, description="Users for dataset 'synthetic'.")
    units: int = Field(5, ge=2, description="Simulated business units (virtual SuperNodes).")
    partition: PartitionScheme = Field("auto", description="auto: the data's unit_id column if "
                                       "present, else iid.")
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration for partition 'dirichlet' "
                         "(0.1 strongly skewed, 100 almost IID).")
    cutoff: dt.date | None = Field(None, description="Last day of history; default: the dataset's (CDNOW "
                                   "1997-09-30; synthetic: the horizon before the last event).")
    horizon_days: int | None = Field(None, ge=1, description="Label window; default: the dataset's (CDNOW 273; "
                                     "synthetic 60).")
    out: Path = Path("runs/simulate")
    baselines: bool = Field(True, description="Train the centralised model and fit BG/NBD.")
    min_fit_units: int | None = Field(None, ge=1, description="Replies needed per round (default: all units).")
    ledger: Path | None = Field(None, description="The units' privacy budget ledger (SQLite; each simulated unit "
                                "charges its own releases under its own name).")
    dp_research_seed: int | None = Field(None, description="Research only: a unit-local seed for DP-SGD's sample "
                                         "and noise (reproducible DP runs). Never derived from the run seed.")
    plan: TrainingPlan = Field(default_factory=TrainingPlan, description="The training plan the units run.")

    @property
    def seed(self) -> int:
        """One seed for the partition, the generator and the plan (model initialisation)."""
        return self.plan.seed

    @classmethod
    def from_settings(cls, **settings: Any) -> "SimulationConfig":
        """Build from flat settings (command line, sweep cells): training-plan fields (or their
        aliases, ``rounds``, ``epsilon``) go into the plan, the rest are the simulation's."""
        plan: dict[str, Any] = {}
        own: dict[str, Any] = {}
        for key, value in settings.items():
            field = PLAN_ALIASES.get(key, key)
            if field in cls.model_fields and field != "plan":
                own[field] = value
            elif field in TrainingPlan.model_fields:
                plan[field] = value
            else:
                raise ValueError(f"unknown setting {key!r}")
        return cls.model_validate({**own, "plan": plan})

    @model_validator(mode="after")
    def _secagg_units(self) -> "SimulationConfig":
        """The secure-aggregation settings must work for these units (checked by the protocol's
        own configuration, before any unit starts)."""
        if self.plan.secagg:
            from privacy.secagg.config import SecAggConfig, SecAggError

            try:
                SecAggConfig(threshold=self.plan.secagg_threshold).threshold_for(self.units)
            except SecAggError as exc:
                raise ValueError(str(exc)) from None
        return self


def data_fingerprint(events: pd.DataFrame) -> str:
    """sha256 over the canonical events (row order included)."""
    digest = hashlib.sha256(pd.util.hash_pandas_object(events, index=False).to_numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def load_dataset(cfg: SimulationConfig) -> tuple[pd.DataFrame, pd.DataFrame | None, dt.date, int]:
    """Events, users, cutoff and horizon for the configured dataset."""
    if cfg.dataset == "cdnow":
        from fedseg.datasets import CALIBRATION_END, HOLDOUT_DAYS, load_cdnow

        return load_cdnow(), None, cfg.cutoff or CALIBRATION_END, cfg.horizon_days or HOLDOUT_DAYS
    if cfg.dataset == "synthetic":
        from simulations.generator import GeneratorConfig, generate

        gen_cfg = GeneratorConfig(n_users=cfg.synthetic_users, n_units=cfg.units, seed=cfg.seed)
        data = generate(gen_cfg)
        end = data.events["ts"].max().date()
        horizon = cfg.horizon_days or 60
        cutoff = cfg.cutoff or (end - dt.timedelta(days=horizon))
        return data.events, data.users, cutoff, horizon
    if cfg.events_path is None:
        raise ValueError("dataset 'file' needs an events path (--events FILE)")
    from clients.ingest import read_events, read_users

    events = read_events(cfg.events_path, file_format=cfg.events_format).frame
    users = read_users(cfg.users_path, file_format=cfg.events_format).frame if cfg.users_path else None
    if cfg.cutoff is None or cfg.horizon_days is None:
        raise ValueError("an events file needs --cutoff and --horizon-days")
    return events, users, cfg.cutoff, cfg.horizon_days


def assign_units(events: pd.DataFrame, features: pd.DataFrame, cfg: SimulationConfig) -> pd.Series:
    """Unit index per user_id, by the configured scheme."""
    from simulations import partition

    scheme = cfg.partition
    if scheme == "auto":
        scheme = "column" if "unit_id" in events.columns else "iid"
    users = features["user_id"]
    if scheme == "column":
        if "unit_id" not in events.columns:
            raise ValueError("partition 'column' needs a unit_id column in the events")
        return partition.column_partition(events, "unit_id")
    if scheme == "iid":
        return partition.iid_partition(users, cfg.units, seed=cfg.seed)
    # Dirichlet label skew over the churn label and the frequency band, so units differ in
    # both churn rate and customer mix.
    band = np.minimum(features["frequency"].to_numpy(), 3).astype(int)
    labels = features["churned"].to_numpy().astype(int) * 4 + band
    return partition.dirichlet_partition(users, labels, cfg.units, alpha=cfg.alpha, seed=cfg.seed)


class Federation(BaseModel):
    """Data of a simulated federation, written to one events file per unit."""

    model_config = {"arbitrary_types_allowed": True}

    events: pd.DataFrame
    users: pd.DataFrame | None
    features: pd.DataFrame
    cutoff: dt.date
    horizon_days: int
    files: list[Path]
    unit_stats: list[dict[str, int]]


def prepare_federation(cfg: SimulationConfig, out: Path,
                       before_writing: Callable[[dt.date, int, int], None] | None = None) -> Federation:
    """Load the data, split the users over units and write ``out/units/events_unit_<k>.parquet``.

    Every event lands in exactly one unit file (checked): users with features go to their
    assigned unit, users seen only after the cutoff are spread by a hash of their id.
    ``before_writing(cutoff, horizon_days, n_users)`` may refuse the run before any file is
    written (a rerun into an existing run directory with another plan).
    """
    from clients.features import build_features
    from simulations import partition

    out.mkdir(parents=True, exist_ok=True)
    events, users, cutoff, horizon = load_dataset(cfg)
    feature_cfg = FeatureConfig(cutoff=cutoff, horizon_days=horizon)
    features = build_features(events, feature_cfg, users=users)
    unit_of_user = assign_units(events, features, cfg)
    n_units = int(unit_of_user.max()) + 1
    if before_writing is not None:
        before_writing(cutoff, horizon, len(features))

    # Users seen only after the cutoff have no features: spread them by a hash of their id.
    late = pd.Index(events["user_id"].unique()).difference(unit_of_user.index)
    if len(late):
        hashed = pd.util.hash_pandas_object(pd.Series(late, dtype=object).astype(str), index=False).to_numpy()
        unit_of_user = pd.concat([unit_of_user, pd.Series((hashed % n_units).astype(np.int64), index=late)])
    unit_dir = out / "units"
    unit_dir.mkdir(exist_ok=True)
    files: list[Path] = []
    unit_stats = []
    for k, unit_events in enumerate(partition.split_events(events, unit_of_user)):
        unit_events = unit_events.drop(columns=["unit_id"], errors="ignore")
        path = write_table(unit_events, unit_dir / f"events_unit_{k}.parquet")
        if users is not None:
            write_table(users.loc[users["user_id"].isin(unit_events["user_id"].unique())],
                        unit_dir / f"users_unit_{k}.parquet")
        files.append(path)
        unit_stats.append({"unit": k, "events": int(len(unit_events)),
                           "users": int(unit_events["user_id"].nunique())})
    if sum(s["events"] for s in unit_stats) != len(events):  # pragma: no cover - invariant
        raise AssertionError("events lost while partitioning")
    return Federation(events=events, users=users, features=features, cutoff=cutoff, horizon_days=horizon,
                      files=files, unit_stats=unit_stats)


class _DeprecationNotice(logging.Filter):
    """Hides Flower's notice that ``run_simulation`` is deprecated (docs/federated-training.md
    says why fedseg uses it); shown again with ``--verbose``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "run_simulation` function is deprecated" not in record.getMessage()


def quiet_flower(verbose: bool) -> dict[str, Any]:
    """Environment and backend settings for a quiet Ray-backed simulation."""
    import os

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    if not verbose:
        flwr_logger = logging.getLogger("flwr")
        flwr_logger.setLevel(logging.WARNING)
        if not any(isinstance(f, _DeprecationNotice) for f in flwr_logger.filters):
            flwr_logger.addFilter(_DeprecationNotice())
    return {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"logging_level": logging.ERROR, "log_to_driver": verbose}}


def dataset_id(cfg: SimulationConfig) -> str:
    """The name simulated units record their privacy spend under: the bundled dataset's name, or
    the events file's name. (A simulated unit is a partition; runs with the same partition
    settings give each unit the same users, which the per-unit ledger assumes.)"""
    return cfg.dataset if cfg.dataset != "file" else Path(str(cfg.events_path)).name


def run_simulation_job(
    cfg: SimulationConfig,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    verbose: bool = False,
    on_start: Callable[[Any, Federation], None] | None = None,
) -> dict[str, Any]:
    """Run the whole simulation and return (and write) the summary; ``on_start(plan, federation)``
    is called once the data is split and the plan is known (the console header)."""
    from flwr.simulation import run_simulation

    from clients.client_app import make_client_app
    from server.server_app import make_server_app

    started = time.perf_counter()
    out = Path(cfg.out)
    plans: list[TrainingPlan] = []

    def plan_for_data(cutoff: dt.date, horizon: int, n_users: int) -> None:
        """The run's plan, and the refusal of a rerun with another plan before any file is written."""
        from fedseg.checkpoint import load_checkpoint
        from server.training import ResumeMismatch

        plan = TrainingPlan.model_validate({
            **cfg.plan.model_dump(), "cutoff": cutoff, "horizon_days": horizon, "population": max(n_users, 1),
            "output_dir": out / "server"})
        existing = load_checkpoint(out / "server")
        if existing is not None and existing.plan_fingerprint != plan.fingerprint():
            raise ResumeMismatch(f"{out} holds a run of a different plan (model, data, cutoff, privacy or training "
                                 "settings changed); nothing was changed in it. Use a new --out directory.")
        plans.append(plan)

    fed = prepare_federation(cfg, out, before_writing=plan_for_data)
    events, users, features, cutoff, horizon = fed.events, fed.users, fed.features, fed.cutoff, fed.horizon_days
    feature_cfg = FeatureConfig(cutoff=cutoff, horizon_days=horizon)
    files, unit_stats, n_units = fed.files, fed.unit_stats, len(fed.files)
    plan = plans[0].model_copy(update={"min_available_units": n_units, "min_fit_units": cfg.min_fit_units or n_units})
    if on_start is not None:
        on_start(plan, fed)
    identities = None
    if plan.secagg:
        from privacy.secagg.flower import make_identities

        identities = out / "secagg-identities"
        make_identities(identities, [f"unit_{k}" for k in range(n_units)])
    results: list[Any] = []
    backend = quiet_flower(verbose)
    t_fed = time.perf_counter()
    run_simulation(
        server_app=make_server_app(plan, on_round=on_round or (lambda r: None), results=results),
        client_app=make_client_app(files, secagg_identities=identities, ledger_path=cfg.ledger,
                                   dataset_id=dataset_id(cfg), dp_research_seed=cfg.dp_research_seed),
        num_supernodes=n_units,
        backend_config=backend,
        verbose_logging=verbose,
    )
    if not results:
        raise RuntimeError(f"the federated run did not finish; see the log above and {out / 'server'}")
    if isinstance(results[0], Exception):
        raise results[0]
    result = results[0]
    federated_seconds = time.perf_counter() - t_fed
    final = result.history[-1]

    summary: dict[str, Any] = {
        "fedseg_version": __version__,
        "target": plan.target,
        "metrics": {**{name: final.get(name) for name in FIGURES[plan.target]}, "rounds": result.history},
        "model_version": result.model_version,
        "privacy": result.privacy,
        "config": json.loads(cfg.model_dump_json()),
        "plan": json.loads(plan.model_dump_json()),
        "data": {
            "dataset": cfg.dataset,
            "fingerprint": data_fingerprint(events.drop(columns=["unit_id"], errors="ignore")),
            "events": int(len(events)),
            "users": int(len(features)),
            "cutoff": cutoff.isoformat(),
            "horizon_days": horizon,
            "churn_rate": float(features["churned"].mean()),
            "spend_in_window": float(features["future_spend"].sum()),
            "units": unit_stats,
        },
        "timing": {"federated_seconds": round(federated_seconds, 2)},
    }
    if cfg.baselines and plan.target == "clv":
        from simulations.value_baselines import clv_baselines

        found = clv_baselines(events, users, feature_cfg, plan, result)
        summary["metrics"]["exact_pooled"] = found.pop("exact_pooled")
        summary["baselines"] = found.pop("baselines")
        summary["metrics"].update(found)
    elif cfg.baselines:
        summary["metrics"].update(_baselines(cfg, plan, events, users, feature_cfg, result))
    if result.evaluation is not None:
        from simulations.figures import model_charts

        private = plan.privacy == "user"
        summary["figures"] = [p.name for p in model_charts(plan.target, result.evaluation, out,
                                                            clip=plan.value_clip if private else None, noisy=private)]
    summary["timing"]["total_seconds"] = round(time.perf_counter() - started, 2)
    write_json(summary, out / "summary.json")
    return summary


#: The figures of a run's last federated evaluation that head ``summary.json``'s metrics, by target.
FIGURES: dict[str, tuple[str, ...]] = {
    "churn": ("auc", "log_loss", "brier"),
    "clv": ("normalized_gini", "top_decile_capture", "mae", "rmse", "spearman", "bias"),
}


def _baselines(cfg: SimulationConfig, plan: Any, events: pd.DataFrame, users: pd.DataFrame | None,
               feature_cfg: FeatureConfig, result: Any) -> dict[str, Any]:
    from clients.training import TrainParams
    from simulations.baseline import exact_metrics, pooled_data, score_arrays, train_centralised
    from simulations.btyd import fit_bgnbd
    from sklearn.metrics import roc_auc_score

    data = pooled_data(events, feature_cfg, plan.model, users)
    params = TrainParams(epochs=plan.num_rounds * plan.local_epochs, learning_rate=plan.learning_rate,
                         batch_size=plan.batch_size, seed=plan.seed)
    t0 = time.perf_counter()
    central, _ = train_centralised(data, plan.model, params)
    labels = data.labels[data.test_mask]
    fed_exact = exact_metrics(score_arrays(data, plan.model, result.arrays, result.scaler_mean, result.scaler_std),
                              labels)
    out: dict[str, Any] = {
        "centralized_auc": central.auc,
        "centralized_log_loss": central.log_loss,
        "centralized_brier": central.brier,
        "centralized_seconds": round(time.perf_counter() - t0, 2),
        "auc_exact_pooled": fed_exact.auc,
        "n_test": int(len(labels)),
    }
    try:
        bg = fit_bgnbd(events, feature_cfg.cutoff, feature_cfg.horizon_days)
        expected = pd.Series(bg.expected_purchases).reindex(data.user_ids[data.test_mask])
        scored = expected.notna().to_numpy()
        out["bgnbd_auc"] = float(roc_auc_score(1 - labels[scored], expected.to_numpy()[scored]))
        out["bgnbd_params"] = bg.params
        out["bgnbd_users_scored"] = int(scored.sum())
    except Exception as exc:  # noqa: BLE001 - BG/NBD can fail to converge on odd data; say so
        out["bgnbd_error"] = f"{type(exc).__name__}: {exc}"
    return out
