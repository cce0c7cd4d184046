"""``fedseg clv`` (federated customer value) and ``fedseg effects`` (federated effect measurement)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Any

import typer

from clients.cli_options import DateFormat, Encoding, Sep, file_format
from fedseg.console import console, fail
from fedseg.errors import FedsegError
from simulations.cli_options import Alpha, Dataset, Events, Ledger, Partition, SyntheticUsers, Units, Users, Verbose

app = typer.Typer()


def _plan_default(field: str) -> Any:
    from fedseg.config import TrainingPlan

    return TrainingPlan.model_fields[field].default


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

    try:
        summary = run_simulation_job(cfg, on_round=show, verbose=verbose, on_start=header)
    except FedsegError as exc:
        fail(str(exc), exc.exit_code)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
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
