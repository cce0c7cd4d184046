"""``fedseg effects``: the intervention loop in simulation, and effect measurement over real units' files.

Synthetic (default), the whole loop on Flower's simulation engine:

1. generate users over units (:mod:`simulations.generator`); the campaign day is ``window_days``
   before the last day;
2. federated segmentation at the campaign day; every unit applies the playbook and writes its CRM
   action list with holdouts (:func:`simulations.segment_runner.run_segment_job`);
3. the world reacts: treated users of some archetypes buy once more, with a planted probability
   per action and archetype (:mod:`simulations.planted_uplift`); each unit's events now cover the
   measurement window;
4. federated effect measurement (:mod:`server.effects`, :mod:`clients.effects`), DP when asked;
5. checks against the planted truth (coverage of the 95% intervals), and under DP the width of
   the intervals against the exact ones (simulation only: pooled);
6. the fairness audit of the interventions (:mod:`simulations.intervention_fairness`).

Files (``--events``/``--actions`` pairs, one pair per unit): steps 4 and (with ``--users``) 6.
Writes ``effects.json`` and ``uplift.png``.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field, model_validator

from fedseg.config import EffectsPlan
from fedseg.effects import OUTCOMES
from fedseg.errors import FedsegError
from fedseg.io import read_table, write_json, write_table
from fedseg.playbook import PlaybookConfig


class EffectsJob(BaseModel):
    """What ``fedseg effects`` runs (defaults: 20,000 synthetic users over 5 units, no noise)."""

    dataset: Literal["synthetic", "files"] = "synthetic"
    synthetic_users: int = Field(20_000, ge=500, description="Users to generate.")
    units: int = Field(5, ge=2, description="Units to generate.")
    seed: int = Field(0, description="The synthetic world's seed (data and planted effects).")
    events: list[Path] = Field(default_factory=list, description="files: each unit's events file.")
    actions: list[Path] = Field(default_factory=list, description="files: each unit's action list, same order.")
    users: list[Path] = Field(default_factory=list, description="files: each unit's users file (fairness audit).")
    out: Path = Path("runs/effects")
    playbook: PlaybookConfig = Field(default_factory=PlaybookConfig)
    plan: EffectsPlan = Field(default_factory=EffectsPlan)
    segment_epsilon: float | None = Field(None, gt=0, description="synthetic: DP for the segmentation step too.")
    ledger: Path | None = None
    research_seed: int | None = Field(None, description="RESEARCH ONLY: the units' local seed (holdout, noise).")
    attributes: list[str] = Field(default_factory=lambda: ["gender", "age_band"],
                                  description="Protected attributes of the fairness audit.")
    fairness: bool = True

    @model_validator(mode="after")
    def _enough_units_for_secagg(self) -> "EffectsJob":
        units = self.units if self.dataset == "synthetic" else len(self.events)
        if self.plan.secagg and units < 3:
            # with 2, each unit could subtract its own table from the sum and read the other's
            raise ValueError(f"--secagg needs at least 3 units (got {units})")
        survivors = self.plan.secagg_survivors
        if self.plan.secagg and survivors > units:
            raise ValueError(f"--secagg-survivors {survivors:g} is more than the {units} units")
        return self


def _unit_account(unit: str, dataset: str, ledger: Path | None) -> Any:
    """A simulated unit's privacy account, as its ClientApp keeps it (same names, same ledger)."""
    from flwr.app import RecordDict

    from clients.unit_privacy import unit_account

    return unit_account(SimpleNamespace(node_config={}, state=RecordDict()), unit, dataset, ledger)


def _measure(job: EffectsJob, plan: EffectsPlan, event_files: list[Path], action_files: list[Path],
             dataset_id: str, verbose: bool) -> dict[str, Any]:
    """Step 4 on Flower's simulation engine: the real ServerApp loop and ClientApp handler."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from clients.client_app import make_client_app
    from server.effects import run_effects
    from simulations.runner import quiet_flower

    costs = job.playbook.costs
    channels = job.playbook.channels
    reports: list[Any] = []
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            reports.append(run_effects(grid, plan, costs, channels, job.playbook.holdout_share))
        except FedsegError as exc:
            reports.append(exc)

    identities = None
    if plan.secagg:  # simulation only: every unit's key in one folder (deployed units make their own)
        from privacy.secagg.flower import make_identities

        identities = Path(job.out) / "secagg-identities"
        make_identities(identities, [f"unit_{k}" for k in range(len(event_files))])
    client = make_client_app(event_files, ledger_path=job.ledger, dataset_id=dataset_id,
                             dp_research_seed=job.research_seed, action_files=action_files,
                             secagg_identities=identities)
    run_simulation(server_app=server, client_app=client, num_supernodes=len(event_files),
                   backend_config=quiet_flower(verbose), verbose_logging=verbose)
    if not reports:
        raise RuntimeError("the federated effect measurement did not finish; run with --verbose to see why")
    if isinstance(reports[0], Exception):
        raise reports[0]
    return reports[0]


def _pooled_exact(plan: EffectsPlan, event_files: list[Path], action_files: list[Path], costs: dict[str, float],
                  channels: dict[str, str]) -> list[dict[str, Any]]:
    """The estimates without noise, from every unit's rows pooled (simulation only)."""
    from clients.effects import experiment_table
    from fedseg.effects import cell_names, cell_statistics
    from server.effects import estimate_effects

    tables = [experiment_table(read_table(a).astype({"user_id": str}), pd.read_parquet(e), str(plan.campaign_date),
                               plan.window_days, plan.retention_days, plan.segment_column)
              for e, a in zip(event_files, action_files)]
    stats = cell_statistics(pd.concat(tables, ignore_index=True), list(plan.segments), list(plan.actions))
    return estimate_effects(stats, cell_names(list(plan.segments), list(plan.actions)), plan, costs, channels)


def _with_truth(effects: list[dict[str, Any]], truth: pd.DataFrame, outcome: str) -> dict[str, Any]:
    """Planted uplift and coverage per cell; the summary over the cells with an estimate."""
    covered, covered_all = [], []
    for entry in effects:
        key = (entry["segment"], entry["action"])
        if key not in truth.index:
            continue
        planted = truth.loc[key]
        entry["planted_uplift"] = float(planted[outcome])
        entry["planted"] = {o: float(planted[o]) for o in OUTCOMES}
        if entry.get("uplift") is None:
            continue
        entry["covered"] = bool(entry["ci_low"] <= entry["planted_uplift"] <= entry["ci_high"])
        covered.append(entry["covered"])
        covered_all += [f["ci_low"] <= entry["planted"][o] <= f["ci_high"] for o, f in entry["outcomes"].items()]
    return {"cells_estimated": len(covered), "coverage": float(np.mean(covered)) if covered else None,
            "coverage_all_outcomes": float(np.mean(covered_all)) if covered_all else None}


def _width_ratio(noisy: list[dict[str, Any]], exact: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over cells of (interval width with the units' noise) / (width without noise)."""
    ratios = [(n["ci_high"] - n["ci_low"]) / (e["ci_high"] - e["ci_low"]) for n, e in zip(noisy, exact)
              if n.get("uplift") is not None and e.get("uplift") is not None and e["ci_high"] > e["ci_low"]]
    return {"median": float(np.median(ratios)) if ratios else None, "cells": len(ratios),
            "max": float(np.max(ratios)) if ratios else None}


def run_effects_job(job: EffectsJob, verbose: bool = False,
                    on_step: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """Run the job of the module doc; returns (and writes) ``effects.json``."""
    started = time.perf_counter()
    out = Path(job.out)
    out.mkdir(parents=True, exist_ok=True)
    if job.dataset == "synthetic":
        world = _synthetic_campaign(job, out, verbose, on_step)
    else:
        world = _unit_files(job, out)
    plan, event_files, action_files = world["plan"], world["events"], world["actions"]
    on_step(f"measuring {len(plan.segments)} segments x {len(plan.actions)} actions over {len(event_files)} units "
            f"(window {plan.window_days} days after {plan.campaign_date})")
    report = _measure(job, plan, event_files, action_files, world["dataset_id"], verbose)
    report["privacy"]["ledger"] = str(job.ledger) if job.ledger else None
    costs, channels = job.playbook.costs, job.playbook.channels
    summary: dict[str, Any] = {"cells": len(report["effects"]),
                               "cells_estimated": sum(e["uplift"] is not None for e in report["effects"])}
    if "truth" in world:
        summary.update(_with_truth(report["effects"], world["truth"], plan.outcome))
    if plan.epsilon and job.dataset == "synthetic":
        exact = _pooled_exact(plan, event_files, action_files, costs, channels)
        summary["interval_width_ratio"] = _width_ratio(report["effects"], exact)
    report["summary"] = summary
    report["data"] = world["data"]
    if job.fairness and world.get("interventions"):
        on_step("fairness audit of the interventions (treatment rates and offers by group within segment)")
        report["fairness"] = _fairness(job, plan, world, on_step)
    from simulations.figures import uplift_chart

    report["figures"] = [uplift_chart(report["effects"], out, plan.outcome).name]
    report["seconds"] = round(time.perf_counter() - started, 2)
    write_json(report, out / "effects.json")
    return report


def _synthetic_campaign(job: EffectsJob, out: Path, verbose: bool, on_step: Callable[[str], None]) -> dict[str, Any]:
    """Steps 1-3 of the module doc."""
    from fedseg.config import SegmentationPlan
    from simulations.generator import GeneratorConfig, generate
    from simulations.planted_uplift import cell_truth, plant_effects
    from simulations.runner import SimulationConfig
    from simulations.segment_runner import run_segment_job

    gen = GeneratorConfig(n_users=job.synthetic_users, n_units=job.units, seed=job.seed)
    last_day = gen.start + dt.timedelta(days=gen.days - 1)
    campaign = last_day - dt.timedelta(days=job.plan.window_days)
    on_step(f"segmenting {job.synthetic_users:,} synthetic users over {job.units} units at the campaign day {campaign}; "
            f"each unit writes its action list with {job.playbook.holdout_share:.0%} holdouts")
    data_cfg = SimulationConfig.from_settings(dataset="synthetic", synthetic_users=job.synthetic_users, units=job.units,
                                              seed=job.seed, cutoff=campaign, horizon_days=job.plan.window_days,
                                              out=out)
    segmentation = run_segment_job(data_cfg, SegmentationPlan(seed=job.seed, epsilon=job.segment_epsilon),
                                   verbose=verbose, compare_centralised=False, ledger=job.ledger,
                                   unit_options={"playbook": job.playbook, "dp_research_seed": job.research_seed})
    on_step("the world reacts: treated users buy with the planted uplift of their archetype and action")
    users = generate(gen).users
    archetypes = users.set_index("user_id")["archetype"]
    units, outcomes = out / "units", out / "outcomes"
    event_files, action_files, truths, segments = [], [], [], []
    for k in range(job.units):
        actions = pd.read_parquet(units / f"actions_unit_{k}.parquet")
        planted = plant_effects(pd.read_parquet(units / f"events_unit_{k}.parquet"), archetypes, actions, campaign,
                                job.plan.window_days, job.seed * 1000 + k, job.plan.retention_days)
        event_files.append(write_table(planted.events, outcomes / f"events_unit_{k}.parquet"))
        action_files.append(units / f"actions_unit_{k}.parquet")
        truths.append(planted.truth)
        segments.append(actions.set_index("user_id")[job.plan.segment_column])
    truth = pd.concat(truths, ignore_index=True)
    write_table(truth, out / "truth_effects.parquet")  # research only: never a unit's file
    plan = job.plan.model_copy(update={
        "campaign_date": campaign, "segments": [s["name"] for s in segmentation["segments"]],
        "actions": job.plan.actions or [a.name for a in job.playbook.actions], "population": len(users),
        "min_units": job.units, "dataset": ""})
    interventions = [(units / f"actions_unit_{k}.parquet", units / f"users_unit_{k}.parquet",
                      units / f"segments_unit_{k}.parquet") for k in range(job.units)]
    return {"plan": plan, "events": event_files, "actions": action_files, "dataset_id": "synthetic",
            "truth": cell_truth(truth, pd.concat(segments)), "interventions": interventions,
            "data": {"dataset": "synthetic", "users": len(users), "units": job.units, "seed": job.seed,
                     "campaign_date": campaign.isoformat(), "segmentation_k": segmentation["k"],
                     "experiment_users": int(len(truth)),
                     "planted_extra_purchases": int(truth["extra_purchase"].sum())}}


def _unit_files(job: EffectsJob, out: Path) -> dict[str, Any]:
    """Real units' files: every events file read through the data contract, one per unit."""
    from clients.ingest import read_events
    from clients.unit_privacy import events_fingerprint

    if len(job.events) < 2 or len(job.events) != len(job.actions):
        raise FedsegError(f"give one --events and one --actions file per unit, at least two units (got "
                          f"{len(job.events)} events and {len(job.actions)} action files)")
    if job.users and len(job.users) != len(job.events):
        raise FedsegError(f"give one --users file per unit or none (got {len(job.users)} for {len(job.events)} units)")
    event_files, seen_users, segments, days = [], 0, set(), set()
    for k, (events_path, actions_path) in enumerate(zip(job.events, job.actions)):
        events = read_events(events_path).frame
        seen_users += events["user_id"].nunique()
        event_files.append(write_table(events, out / "units" / f"events_unit_{k}.parquet"))
        actions = read_table(actions_path, "--actions")
        if job.plan.segment_column not in actions or "campaign_date" not in actions:
            raise FedsegError(f"--actions {actions_path}: not an action list of `fedseg segment` (needs "
                              f"{job.plan.segment_column} and campaign_date)")
        segments |= set(actions[job.plan.segment_column].astype(str))
        days |= set(actions["campaign_date"].astype(str))
    campaign = job.plan.campaign_date
    if campaign is None:
        if len(days) != 1:
            raise FedsegError(f"the action lists name {len(days)} campaign days ({', '.join(sorted(days))}); give "
                              "--campaign-date")
        campaign = dt.date.fromisoformat(days.pop())
    plan = job.plan.model_copy(update={
        "campaign_date": campaign, "segments": job.plan.segments or sorted(segments),
        "actions": job.plan.actions or [a.name for a in job.playbook.actions], "population": seen_users,
        "min_units": len(event_files), "dataset": ""})
    interventions = [(a, u, None) for a, u in zip(job.actions, job.users)] if job.users else []
    return {"plan": plan, "events": event_files, "actions": list(job.actions), "dataset_id": None,
            "unit_datasets": [events_fingerprint(pd.read_parquet(f)) for f in event_files],
            "interventions": interventions,
            "data": {"dataset": "files", "units": len(event_files), "users": seen_users,
                     "campaign_date": campaign.isoformat()}}


def _fairness(job: EffectsJob, plan: EffectsPlan, world: dict[str, Any], on_step: Callable[[str], None]) -> dict[str, Any]:
    """Step 6: each unit writes its intervention table; the federated fairness audit reads them."""
    from audit.federated import DPConfig
    from clients.effects import intervention_table
    from simulations.intervention_fairness import intervention_fairness

    tables, accounts = [], []
    for k, (actions_path, users_path, segments_path) in enumerate(world["interventions"]):
        table = intervention_table(read_table(actions_path).astype({"user_id": str}),
                                   read_table(users_path).astype({"user_id": str}), plan.segment_column,
                                   job.attributes, read_table(segments_path) if segments_path else None)
        tables.append(write_table(table, Path(job.out) / "units" / f"interventions_unit_{k}.parquet"))
        dataset = world["dataset_id"] or world["unit_datasets"][k]  # the name the unit's ClientApp charges under
        accounts.append(_unit_account(f"unit_{k}", dataset, job.ledger))
    dp = None
    if plan.epsilon:
        from privacy.accounting import default_delta

        dp = DPConfig(epsilon=plan.epsilon, delta=plan.delta or default_delta(plan.population))
    return intervention_fairness(tables, job.attributes, list(plan.segments), dp=dp, accounts=accounts if dp else None)
