"""``fedseg kpis`` and ``fedseg tags``: federated monitoring over simulated units (docs/monitoring.md)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Any

import typer

from clients.cli_options import DateFormat, Encoding, Sep, file_format
from simulations.cli_options import Alpha, Dataset, Events, Ledger, Partition, Units, Users, Verbose
from fedseg.console import console, fail, job_errors
from simulations.cli import _date, print_privacy_line, validation_problems

app = typer.Typer()

# Options of kpis and tags only; the data, unit, ledger and logging flags are simulations.cli_options'.
Epsilon = Annotated[float | None, typer.Option(help="Total epsilon per end user for the whole report (default: exact, no noise).")]
Delta = Annotated[float | None, typer.Option(help="delta (default: the largest power of ten at most 1/(10 x users)); needs --epsilon.")]
Seed = Annotated[int, typer.Option(help="Random seed (partition).")]


def _kpi_default(field: str) -> Any:
    from fedseg.config import KpiPlan

    return KpiPlan.model_fields[field].default


def _data_config(dataset: str, events: Path | None, users: Path | None, fmt: Any, units: int, partition: str,
                 alpha: float, seed: int, out: Path, synthetic_users: int = 20_000) -> Any:
    from simulations.runner import SimulationConfig

    return SimulationConfig.from_settings(dataset="file" if events else dataset, events_path=events, users_path=users,
                                          events_format=fmt, synthetic_users=synthetic_users, units=units,
                                          partition=partition, alpha=alpha, seed=seed, out=out)


@app.command("kpis")
def kpis(
    dataset: Dataset = "cdnow",
    events: Events = None,
    users: Users = None,
    sep: Sep = ",",
    encoding: Encoding = "utf-8",
    date_format: DateFormat = None,
    units: Units = 5,
    partition: Partition = "auto",
    alpha: Alpha = 0.5,
    start: Annotated[str | None, typer.Option(help="First day of the report, YYYY-MM-DD (default: the data's first day).")] = None,
    end: Annotated[str | None, typer.Option(help="Last day of the report, YYYY-MM-DD (default: the data's last day).")] = None,
    granularity: Annotated[str, typer.Option(help="Cohorts and retention periods: month (YYYY-MM) or week.")] = _kpi_default("granularity"),
    churn_window_days: Annotated[int, typer.Option(help="Churned at a snapshot: no purchase in this many days after it.")] = _kpi_default("churn_window_days"),
    max_active_days: Annotated[int, typer.Option(help="Under DP: active days kept per user in DAU/WAU/MAU (bounds their sensitivity).")] = _kpi_default("max_active_days"),
    epsilon: Epsilon = None,
    delta: Delta = None,
    ledger: Ledger = None,
    cutoff: Annotated[str | None, typer.Option(help="With --events: the cutoff used to partition users (default: the end).")] = None,
    seed: Seed = 0,
    out: Annotated[Path | None, typer.Option(help="Output directory (default runs/kpis-<dataset>-<time>).")] = None,
    plots: Annotated[bool, typer.Option(help="Write activity.png and retention.png.")] = True,
    verbose: Verbose = False,
) -> None:
    """Federated KPIs: DAU/WAU/MAU and stickiness per day, cohort retention, churn by lifecycle stage.

    Units send only their tables (with their own noise under --epsilon); the coordinator sums
    them into <out>/kpis.json with plots. With no options: CDNOW over 5 units, exact.
    """
    from pydantic import ValidationError

    from fedseg.config import KpiPlan
    from simulations.kpi_runner import run_kpi_job

    if out is None:
        out = Path("runs") / f"kpis-{dataset if events is None else 'file'}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    start_day, end_day = _date(start, "--start"), _date(end, "--end")
    try:
        data_cfg = _data_config(dataset, events, users, file_format(sep, encoding, date_format), units, partition,
                                alpha, seed, out)
        if events is not None:  # an events file needs a cutoff only to place users in units
            data_cfg.cutoff = _date(cutoff, "--cutoff") or end_day
            data_cfg.horizon_days = 1
            if data_cfg.cutoff is None:
                fail("--events needs --end (or --cutoff): the day by which users are placed in units")
        plan = KpiPlan(start=start_day, end=end_day, granularity=granularity, churn_window_days=churn_window_days,
                       max_active_days=max_active_days, epsilon=epsilon, delta=delta)
    except ValidationError as exc:
        fail(validation_problems(exc))

    def header(run_plan: KpiPlan, fed: Any) -> None:
        from server.kpis import kpi_config, noise_config

        console.print(f"KPIs of {len(fed.files)} units on {data_cfg.dataset} ({fed.events['user_id'].nunique():,} users, "
                      f"{run_plan.start} to {run_plan.end}, {run_plan.granularity}ly cohorts) -> {out}", highlight=False)
        def dp() -> str:
            _, eps, dlt = noise_config(run_plan, kpi_config(run_plan, "header"))
            return (f"DP per end user, epsilon {eps:.3f}, delta {dlt:g} for the whole report (units add the noise; "
                    f"at most {run_plan.max_active_days} active days per user in DAU/WAU/MAU)")

        print_privacy_line(run_plan.epsilon, "exact tables", dp)

    with console.status("units compute their KPI tables (Flower simulation)"), job_errors():
        report = run_kpi_job(data_cfg, plan, verbose=verbose, ledger=ledger, on_start=header, plots=plots)
    print_kpis(report, out)


def print_kpis(report: dict[str, Any], out: Path) -> None:
    """The readable summary of a KPI report."""
    from rich.table import Table

    activity = report["activity"]
    monthly = Table(title="activity (monthly means of the daily figures)")
    for col in ("month", "DAU", "WAU", "MAU", "DAU/MAU"):
        monthly.add_column(col, justify="right" if col != "month" else "left")
    by_month: dict[str, list[int]] = {}
    for i, day in enumerate(activity["days"]):
        by_month.setdefault(day[:7], []).append(i)
    for month, idx in by_month.items():
        mean = {k: sum(activity[k][i] for i in idx) / len(idx) for k in ("dau", "wau", "mau")}
        sticky = [activity["stickiness"][i] for i in idx if activity["stickiness"][i] is not None]
        monthly.add_row(month, f"{mean['dau']:,.0f}", f"{mean['wau']:,.0f}", f"{mean['mau']:,.0f}",
                        f"{sum(sticky) / len(sticky):.3f}" if sticky else "-")
    console.print(monthly)
    retention = report["retention"]
    table = Table(title=f"cohort retention: % active in {retention['granularity']} k (first 8)")
    table.add_column("cohort")
    table.add_column("size", justify="right")
    for k in range(1, 9):
        table.add_column(f"k={k}", justify="right")
    for c in retention["cohorts"]:
        if c["size"] < 1:
            continue
        cells = [f"{100 * s:.1f}" if s is not None else "-" for s in c["active_share"][1:9]]
        table.add_row(c["cohort"], f"{c['size']:,.0f}", *cells, *([""] * (8 - len(cells))))
    console.print(table)
    privacy = report["privacy"]
    if privacy["epsilon"] is not None:
        console.print(f"privacy: epsilon {privacy['epsilon']:.3f}, delta {privacy['delta']:g} per end user "
                      f"({privacy['accountant']})", highlight=False)
    else:
        console.print("privacy: no noise added (exact tables); pass --epsilon for differential privacy")
    c = report.get("pooled_comparison")
    if c:
        console.print(f"against the pooled computation (simulation only): retention cells median abs error "
                      f"{c['retention_median_abs_error_pp']:.3f} pp (max {c['retention_max_abs_error_pp']:.2f}, "
                      f"{c['retention_cells']} cells), MAU median relative error {c['mau_median_relative_error']:.3f}, "
                      f"DAU {c['dau_median_relative_error']:.3f}, churn rates {c['churn_rate_median_abs_error_pp']:.2f} pp",
                      highlight=False)
    console.print(f"kpis.json{' and plots' if report.get('plots') else ''} in {out} "
                  f"({report['seconds']['total']:.0f} s)", highlight=False)


@app.command("tags")
def tags(
    dataset: Dataset = "cdnow",
    events: Events = None,
    users: Users = None,
    sep: Sep = ",",
    encoding: Encoding = "utf-8",
    date_format: DateFormat = None,
    units: Units = 5,
    partition: Partition = "auto",
    alpha: Alpha = 0.5,
    tags_file: Annotated[Path | None, typer.Option("--tags", help="TOML file of tag rules (default: the documented default set, fedseg/default_tags.toml).")] = None,
    cutoff: Annotated[str | None, typer.Option(help="Tag users as of this day, YYYY-MM-DD (default: the data's last day).")] = None,
    segment_by: Annotated[str, typer.Option(help="Columns of the behaviour matrix: lifecycle (stages) or rfm (the 11 RFM segments).")] = "lifecycle",
    epsilon: Epsilon = None,
    delta: Delta = None,
    ledger: Ledger = None,
    seed: Seed = 0,
    out: Annotated[Path | None, typer.Option(help="Output directory (default runs/tags-<dataset>-<time>).")] = None,
    verbose: Verbose = False,
) -> None:
    """Federated tags: rules over features evaluated on every unit's users; the coordinator sees
    only tag prevalence and the tag x segment matrix (noisy under --epsilon).

    Units keep the per-user tags (<out>/units/tags_<unit>.parquet). With no options: CDNOW over 5
    units, the default tag set, by lifecycle stage.
    """
    from pydantic import ValidationError

    from fedseg.config import TagPlan
    from fedseg.tags import load_rules
    from simulations.tag_runner import run_tag_job

    if out is None:
        out = Path("runs") / f"tags-{dataset if events is None else 'file'}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    cutoff_day = _date(cutoff, "--cutoff")
    try:
        plan = TagPlan(cutoff=cutoff_day, tags_file=tags_file, segment_by=segment_by, epsilon=epsilon, delta=delta)
        data_cfg = _data_config(dataset, events, users, file_format(sep, encoding, date_format), units, partition,
                                alpha, seed, out)
        if events is not None:
            if cutoff_day is None:
                fail("--events needs --cutoff: the day the users are tagged as of")
            data_cfg.cutoff, data_cfg.horizon_days = cutoff_day, 1
    except ValidationError as exc:
        fail(validation_problems(exc))
    rules = load_rules(tags_file)

    def header(run_plan: TagPlan, fed: Any) -> None:
        from server.tags import plan_steps

        console.print(f"tags of {len(fed.files)} units on {data_cfg.dataset} ({len(fed.features):,} users) as of "
                      f"{run_plan.cutoff}: {', '.join(r.name for r in rules)} -> {out}", highlight=False)
        def dp() -> str:
            _, _, eps, dlt = plan_steps(run_plan, rules, "header")
            return f"DP per end user, epsilon {eps:.3f}, delta {dlt:g} for the whole report (units add the noise)"

        print_privacy_line(run_plan.epsilon, "exact counts", dp)

    with console.status("units tag their users (Flower simulation)"), job_errors():
        report = run_tag_job(data_cfg, plan, verbose=verbose, ledger=ledger, on_start=header)
    print_tags(report, out)


def print_tags(report: dict[str, Any], out: Path) -> None:
    """The behaviour matrix: one row per segment (and all users), the share holding each tag."""
    from rich.table import Table

    tags = report["tags"]
    table = Table(title=f"tags by {report['segment_by']} segment: share of the segment's users "
                        f"({report['users']:,.0f} users, {report['units']} units)")
    table.add_column("segment")
    table.add_column("users", justify="right")
    for t in tags:
        table.add_column(t["tag"], justify="right")
    for segment, n in report["segments"].items():
        cells = ["-" if t["share_of_segment"][segment] is None else f"{100 * t['share_of_segment'][segment]:.1f}%"
                 for t in tags]
        table.add_row(segment, f"{n:,.0f}", *cells)
    table.add_row("all", f"{report['users']:,.0f}",
                  *["-" if t["prevalence"] is None else f"{100 * t['prevalence']:.1f}%" for t in tags])
    console.print(table)
    if report["quantiles"]:
        console.print("quantiles: " + ", ".join(f"{k} = {v:g}" for k, v in report["quantiles"].items()), highlight=False)
    privacy = report["privacy"]
    console.print((f"privacy: epsilon {privacy['epsilon']:.3f}, delta {privacy['delta']:g} per end user"
                   if privacy["epsilon"] is not None else "privacy: no noise added (exact counts)"), highlight=False)
    c = report.get("pooled_comparison")
    if c:
        console.print(f"against the units' per-user files (simulation only): largest prevalence error "
                      f"{c['max_prevalence_abs_error_pp']:.3f} pp", highlight=False)
    console.print(f"tags.json in {out}, per-user tags in {out / 'units'} ({report['seconds']:.0f} s)", highlight=False)
