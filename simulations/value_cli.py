"""``fedseg clv`` (federated customer value) and ``fedseg effects`` (federated effect measurement)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Any

import typer

from clients.cli_options import DateFormat, Encoding, Sep, file_format
from fedseg.console import console, fail, job_errors
from simulations.cli_options import Alpha, Dataset, Events, Ledger, Partition, SyntheticUsers, Units, Users, Verbose

app = typer.Typer()


def _plan_default(field: str) -> Any:
    from fedseg.config import TrainingPlan

    return TrainingPlan.model_fields[field].default


def _effects_default(field: str) -> Any:
    from fedseg.config import EffectsPlan

    return EffectsPlan.model_fields[field].default


@app.command("clv")
def clv(
    dataset: Dataset = "cdnow",
    events: Events = None,
    users: Users = None,
    sep: Sep = ",",
    encoding: Encoding = "utf-8",
    date_format: DateFormat = None,
    synthetic_users: SyntheticUsers = 20_000,
    units: Units = 5,
    partition: Partition = "auto",
    alpha: Alpha = 0.5,
    rounds: Annotated[int, typer.Option(help="Federated rounds.")] = _plan_default("num_rounds"),
    local_epochs: Annotated[int, typer.Option(help="Local epochs per round.")] = _plan_default("local_epochs"),
    learning_rate: Annotated[float, typer.Option("--lr", help="Adam learning rate.")] = _plan_default("learning_rate"),
    cutoff: Annotated[str | None, typer.Option(help="Last day of history, YYYY-MM-DD (default: the dataset's; CDNOW 1997-09-30).")] = None,
    horizon_days: Annotated[int | None, typer.Option(help="Spend window after the cutoff, days (default: the dataset's; CDNOW 273, to 1998-06-30).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed (model init, partition, data).")] = _plan_default("seed"),
    epsilon: Annotated[float | None, typer.Option(help="User-level DP: target epsilon per end user over the whole run (DP-SGD in every unit).")] = None,
    delta: Annotated[float | None, typer.Option(help="delta (default: the largest power of ten at most 1/(10 x users)); needs --epsilon.")] = None,
    sample_rate: Annotated[float, typer.Option(help="DP-SGD Poisson sampling rate per step.")] = _plan_default("sample_rate"),
    max_grad_norm: Annotated[float, typer.Option(help="DP-SGD per-user clipping norm.")] = _plan_default("max_grad_norm"),
    value_clip: Annotated[float, typer.Option(help="Under DP: spend and predictions clipped at this (currency units) in the noisy evaluation.")] = _plan_default("value_clip"),
    ledger: Ledger = None,
    dp_research_seed: Annotated[int | None, typer.Option(help="RESEARCH ONLY: a unit-local seed for DP-SGD's sample and noise.")] = None,
    baselines: Annotated[bool, typer.Option(help="Also train the centralised model, fit BG/NBD + Gamma-Gamma and score past spend.")] = True,
    out: Annotated[Path | None, typer.Option(help="Run directory (default runs/clv-<dataset>-<time>).")] = None,
    verbose: Verbose = False,
) -> None:
    """Federated customer value: predict each user's spend over the horizon (hurdle model, Flower).

    With no options: CDNOW over 5 units, calibration to 1997-09-30, spend in the 273 days to
    1998-06-30; summary.json with normalized Gini, top-decile capture, MAE, RMSE, Spearman, and
    the same for the centralised model, BG/NBD + Gamma-Gamma and past spend under baselines.
    """
    from pydantic import ValidationError

    from simulations.cli import _date, privacy_header, validation_problems
    from simulations.runner import SimulationConfig, run_simulation_job

    if out is None:
        out = Path("runs") / f"clv-{dataset}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    if delta is not None and epsilon is None:
        fail("--delta without --epsilon: the run adds no noise; give --epsilon for differential privacy")
    try:
        cfg = SimulationConfig.from_settings(
            dataset="file" if events else dataset, events_path=events, users_path=users,
            events_format=file_format(sep, encoding, date_format), synthetic_users=synthetic_users, units=units,
            partition=partition, alpha=alpha, target="clv", rounds=rounds, local_epochs=local_epochs,
            learning_rate=learning_rate, cutoff=_date(cutoff, "--cutoff"), horizon_days=horizon_days, seed=seed,
            out=out, baselines=baselines, privacy="user" if epsilon is not None else "none", epsilon=epsilon,
            delta=delta, sample_rate=sample_rate, max_grad_norm=max_grad_norm, value_clip=value_clip, ledger=ledger,
            dp_research_seed=dp_research_seed)
    except ValidationError as exc:
        fail(validation_problems(exc))

    def show(record: dict[str, Any]) -> None:
        if "normalized_gini" in record:
            figures = (f"Gini {record['normalized_gini']:.4f}  top-decile {record['top_decile_capture']:.4f}  "
                       f"MAE {record['mae']:.2f}")
        else:
            figures = "initial model" if record["round"] == 0 else "trained (under DP evaluation runs after the last round)"
        extra = f", {record['units_trained']} units, {record['seconds']:.1f} s" if "units_trained" in record else ""
        eps = f", epsilon {record['epsilon']:.3f}" if record.get("epsilon") else ""
        console.print(f"  round {record['round']:>3}/{cfg.plan.num_rounds}: {figures}{extra}{eps}", highlight=False)

    def header(plan: Any, fed: Any) -> None:
        console.print(f"customer value on {cfg.dataset}: {len(fed.files)} units, {len(fed.features):,} users, history to "
                      f"{plan.cutoff}, spend in the {plan.horizon_days} days after -> {out}", highlight=False)
        console.print(f"  {privacy_header(plan)}", highlight=False)

    with job_errors():
        summary = run_simulation_job(cfg, on_round=show, verbose=verbose, on_start=header)
    print_clv(summary, out)


def print_clv(summary: dict[str, Any], out: Path) -> None:
    """The CLV table: the federated model and every baseline on the same held-out users."""
    from rich.table import Table

    columns = ("normalized_gini", "top_decile_capture", "mae", "rmse", "spearman", "bias")
    table = Table(title=f"customer value on held-out users ({summary['metrics'].get('n_test', '?')} users, "
                        "same in every row)")
    for col in ("model", "Gini", "top-decile", "MAE", "RMSE", "Spearman", "bias"):
        table.add_column(col, justify="left" if col == "model" else "right")

    def row(name: str, figures: dict[str, Any]) -> None:
        cells = ["-" if figures.get(c) is None else f"{figures[c]:.4f}" if c not in ("mae", "rmse")
                 else f"{figures[c]:.2f}" for c in columns]
        table.add_row(name, *cells)

    m = summary["metrics"]
    units = summary["config"]["units"]
    row(f"federated ({units} units, merged aggregates)", m)
    if "exact_pooled" in m:
        row("federated, exact on pooled scores", m["exact_pooled"])
    for name, figures in summary.get("baselines", {}).items():
        if "error" in figures:
            console.print(f"[yellow]warning:[/] baseline {name} failed: {figures['error']}", highlight=False)
            continue
        row(name.replace("_", " "), figures)
    console.print(table)
    p = summary.get("privacy") or {}
    if p.get("mode", "none") != "none":
        console.print(f"privacy (user-level): epsilon {p['epsilon']:.3f} (RDP; PLD {p['epsilon_pld']:.3f}), delta "
                      f"{p['delta']:g} per end user; the merged figures are a noisy release", highlight=False)
    console.print(f"{summary['timing']['total_seconds']:.0f} s; summary: {out / 'summary.json'}; pictures: "
                  f"{', '.join(summary.get('figures', []))}", highlight=False)


@app.command("effects")
def effects(
    dataset: Annotated[str, typer.Option(help="synthetic (generated users with planted uplift, the whole loop) or files (--events/--actions per unit).")] = "synthetic",
    events: Annotated[list[Path], typer.Option("--events", help="files: a unit's events file (repeat, one per unit, in the order of --actions).")] = [],  # noqa: B006
    actions: Annotated[list[Path], typer.Option("--actions", help="files: a unit's action list from `fedseg segment` (repeat).")] = [],  # noqa: B006
    users: Annotated[list[Path], typer.Option("--users", help="files: a unit's users file with protected attributes, for the fairness audit (repeat).")] = [],  # noqa: B006
    synthetic_users: SyntheticUsers = 20_000,
    units: Units = 5,
    seed: Annotated[int, typer.Option(help="synthetic: the world's seed (data and planted effects).")] = 0,
    window_days: Annotated[int, typer.Option(help="Measurement window after the campaign day, days.")] = _effects_default("window_days"),
    retention_days: Annotated[int, typer.Option(help="Retention: any event in the window's last this many days.")] = _effects_default("retention_days"),
    campaign_date: Annotated[str | None, typer.Option(help="files: the campaign day, YYYY-MM-DD (default: the action lists').")] = None,
    segment_column: Annotated[str, typer.Option(help="Cells by segment (activity segment), rfm_segment or tier.")] = _effects_default("segment_column"),
    outcome: Annotated[str, typer.Option(help="Headline outcome: conversion, revenue or retention (all three are reported).")] = _effects_default("outcome"),
    margin: Annotated[float, typer.Option(help="Share of incremental revenue that is profit, for ROI (1: ROI on revenue).")] = _effects_default("margin"),
    min_arm: Annotated[int, typer.Option(help="Cells with fewer users in an arm get no estimate.")] = _effects_default("min_arm"),
    epsilon: Annotated[float | None, typer.Option(help="epsilon per end user: every unit adds Laplace noise to its outcome sums, after accepting and charging the release.")] = None,
    secagg: Annotated[bool, typer.Option("--secagg", help="Sum the units' tables by secure aggregation: the coordinator sees only the sum, so under DP each unit adds only a share of the noise.")] = False,
    secagg_threshold: Annotated[float, typer.Option(help="With --secagg: reconstruction threshold t, a count (>= 2) or a fraction (< 1) of each unit's share holders; each noise share is sized for t.")] = _effects_default("secagg_threshold"),
    secagg_survivors: Annotated[float, typer.Option(help="With --secagg: the fewest units any decoded sum holds, a count (>= 3) or a fraction (<= 1) of the units; each noise share is sized for it. 1: all units (least noise; a unit dropping mid-round fails the measurement).")] = _effects_default("secagg_survivors"),
    delta: Annotated[float | None, typer.Option(help="delta (default: the largest power of ten at most 1/(10 x users)); needs --epsilon.")] = None,
    revenue_clip: Annotated[float, typer.Option(help="Under DP: revenue per user clipped here (currency units).")] = _effects_default("revenue_clip"),
    segment_epsilon: Annotated[float | None, typer.Option(help="synthetic: epsilon of the segmentation step as well (default: no noise there).")] = None,
    playbook: Annotated[Path | None, typer.Option(help="Playbook file (TOML/JSON): actions with channel and cost (for ROI), rules, holdout share, caps.")] = None,
    holdout_share: Annotated[float | None, typer.Option(help="synthetic: share of each segment x action held out (default: the playbook's, 0.1).")] = None,
    attributes: Annotated[str, typer.Option(help="Protected attributes of the fairness audit, comma-separated.")] = "gender,age_band",
    fairness: Annotated[bool, typer.Option(help="Audit treatment rates and offers by protected group within segment.")] = True,
    ledger: Ledger = None,
    research_seed: Annotated[int | None, typer.Option(help="RESEARCH ONLY: a seed each unit keeps to itself for the holdout draw and the noise.")] = None,
    out: Annotated[Path | None, typer.Option(help="Output directory (default runs/effects-<dataset>-<time>).")] = None,
    verbose: Verbose = False,
) -> None:
    """Federated effect measurement: uplift per segment x action with 95% intervals, and ROI.

    With no options: 20,000 synthetic users over 5 units, the whole loop (segments, action lists with
    10% holdouts, a campaign whose effect is planted per archetype, the federated measurement) and
    the coverage of the intervals against the planted uplift; effects.json and uplift.png.
    """
    from pydantic import ValidationError

    from fedseg.config import EffectsPlan
    from fedseg.playbook import load_playbook
    from simulations.cli import _date, validation_problems
    from simulations.effects_runner import EffectsJob, run_effects_job

    mode = "files" if events or actions else dataset
    if mode not in ("synthetic", "files"):
        fail(f"--dataset {dataset!r}: use synthetic, or give --events and --actions files")
    if out is None:
        out = Path("runs") / f"effects-{mode}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    for flag, paths in (("--events", events), ("--actions", actions), ("--users", users)):
        for path in paths:
            if not path.exists():
                fail(f"{flag} {path}: no such file")
    book = load_playbook(playbook)
    if holdout_share is not None:
        if not 0 < holdout_share < 1:
            fail(f"--holdout-share {holdout_share}: give a share in (0, 1)")
        book = book.model_copy(update={"holdout_share": holdout_share})
    try:
        plan = EffectsPlan(window_days=window_days, retention_days=retention_days, segment_column=segment_column,
                           outcome=outcome, margin=margin, min_arm=min_arm, epsilon=epsilon, delta=delta,
                           revenue_clip=revenue_clip, campaign_date=_date(campaign_date, "--campaign-date"),
                           secagg=secagg, secagg_threshold=secagg_threshold,
                           secagg_survivors=secagg_survivors)
        job = EffectsJob(dataset=mode, synthetic_users=synthetic_users, units=units, seed=seed, events=events,
                         actions=actions, users=users, out=out, playbook=book, plan=plan, ledger=ledger,
                         segment_epsilon=segment_epsilon, research_seed=research_seed,
                         attributes=[a.strip() for a in attributes.split(",") if a.strip()],
                         fairness=fairness and (mode == "synthetic" or bool(users)))
    except ValidationError as exc:
        fail(validation_problems(exc))
    noise = f"DP per end user, epsilon {epsilon:g} (units add the noise)" if epsilon else "none (exact sums)"
    console.print(f"effect measurement ({mode}) -> {out}; privacy: {noise} | secure aggregation: "
                  f"{'on' if secagg else 'off'}", highlight=False)
    with job_errors():
        report = run_effects_job(job, verbose=verbose, on_step=lambda m: console.print(f"  {m}", highlight=False))
    print_effects(report, out)


def print_effects(report: dict[str, Any], out: Path) -> None:
    """The effects table, the checks against the truth and the fairness flags."""
    from rich.table import Table

    outcome = report["plan"]["outcome"]
    table = Table(title=f"uplift in {outcome} (treated minus holdout) with 95% intervals; ROI on the action's cost")
    truth = any("planted_uplift" in e for e in report["effects"])
    for col in ("segment", "action", "treated", "holdout", "uplift", "95% interval", *(["planted"] if truth else []),
                "ROI"):
        table.add_column(col, justify="left" if col in ("segment", "action") else "right")
    money = outcome == "revenue"
    for e in report["effects"]:
        if e["uplift"] is None:
            continue
        fmt = (lambda v: f"{v:,.2f}") if money else (lambda v: f"{v:+.3f}")
        table.add_row(e["segment"], e["action"], f"{e['n_treated']:,.0f}", f"{e['n_control']:,.0f}", fmt(e["uplift"]),
                      f"[{fmt(e['ci_low'])}, {fmt(e['ci_high'])}]",
                      *([fmt(e["planted_uplift"]) if "planted_uplift" in e else "-"] if truth else []),
                      "-" if e.get("roi") is None else f"{e['roi']:+.1f}")
    console.print(table)
    s = report["summary"]
    skipped = s["cells"] - s["cells_estimated"]
    console.print(f"{s['cells_estimated']} of {s['cells']} segment x action cells estimated; {skipped} have fewer than "
                  f"{report['plan']['min_arm']} users in an arm (most none: the playbook gives those segments other "
                  "actions)", highlight=False)
    if s.get("coverage") is not None:
        console.print(f"intervals cover the planted uplift in {s['coverage']:.0%} of cells ({outcome}); "
                      f"{s['coverage_all_outcomes']:.0%} over all three outcomes", highlight=False)
    if s.get("interval_width_ratio", {}).get("median") is not None:
        w = s["interval_width_ratio"]
        console.print(f"with the units' noise the intervals are {w['median']:.2f}x as wide as without (median over "
                      f"{w['cells']} cells; max {w['max']:.2f}x)", highlight=False)
    p = report["privacy"]
    if p.get("epsilon"):
        noise = ", ".join(f"{k} {v:.2f}" for k, v in p["laplace_scale_per_statistic"].items())
        console.print(f"privacy: epsilon {p['epsilon']:.3f}, delta {p['delta']:g} per end user for the measurement; "
                      f"every unit adds Laplace noise of scale {noise} (sd = 1.41 x scale)", highlight=False)
        if p.get("secure_aggregation"):
            sa = p["secure_aggregation"]
            console.print(f"secure aggregation: the coordinator saw only the sum over {sa['units_summed']} units "
                          f"(threshold {sa['threshold']}, at least {sa['min_survivors']} survivors); each unit "
                          f"added a 1/{sa['min_survivors']} share of that noise",
                          highlight=False)
    flags = (report.get("fairness") or {}).get("flags", [])
    if report.get("fairness") is not None:
        console.print(f"fairness of the interventions: {len(flags)} flag(s)" + (": " + "; ".join(flags) if flags else
                      " (treatment rates within four fifths across groups in every segment)"), highlight=False)
    console.print(f"effects.json, {', '.join(report['figures'])} in {out} ({report['seconds']:.0f} s)", highlight=False)
