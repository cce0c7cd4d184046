"""``fedseg privacy ...``: epsilon of a DP-SGD schedule, the budget ledger."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from fedseg.console import console, fail

app = typer.Typer(help="Privacy accounting and the budget ledger.", no_args_is_help=True)

DEFAULT_LEDGER = Path("runs/privacy-ledger.sqlite")


@app.command("epsilon")
def epsilon_command(
    noise_multiplier: Annotated[float | None, typer.Option(help="Gaussian noise multiplier z (noise std / sensitivity).")] = None,
    sample_rate: Annotated[float, typer.Option(help="Poisson sampling rate q per step, in (0, 1].")] = 1.0,
    steps: Annotated[int, typer.Option(help="Number of composed steps T.")] = 1,
    delta: Annotated[float, typer.Option(help="delta, in (0, 1).")] = 1e-5,
    target_epsilon: Annotated[float | None, typer.Option(help="Invert: the noise multiplier that reaches this epsilon.")] = None,
    accountant: Annotated[str, typer.Option(help="rdp (conservative, default) or pld (tighter).")] = "rdp",
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object.")] = False,
) -> None:
    """Epsilon of a Poisson-sampled Gaussian mechanism composed T times (or the z for a target)."""
    from privacy.accounting import Release, calibrate, sampled_gaussian_epsilon

    if not 0 < sample_rate <= 1:
        fail(f"--sample-rate {sample_rate} must be in (0, 1].")
    if steps < 1:
        fail(f"--steps {steps} must be at least 1.")
    if not 0 < delta < 1:
        fail(f"--delta {delta} must be in (0, 1).")
    if accountant not in ("rdp", "pld"):
        fail(f"--accountant {accountant!r}: choose rdp or pld.")
    if (noise_multiplier is None) == (target_epsilon is None):
        fail("give exactly one of --noise-multiplier (to get epsilon) and --target-epsilon (to get z).")
    if noise_multiplier is not None and noise_multiplier < 0:
        fail(f"--noise-multiplier {noise_multiplier} must be >= 0.")
    if target_epsilon is not None:
        if target_epsilon <= 0:
            fail(f"--target-epsilon {target_epsilon} must be > 0.")
        try:
            z = calibrate(lambda v: [Release(noise_multiplier=v, sample_rate=sample_rate, count=steps)],
                          target_epsilon, delta, accountant)  # type: ignore[arg-type]
        except ValueError as exc:
            fail(str(exc))
    else:
        z = noise_multiplier
    eps = sampled_gaussian_epsilon(z, sample_rate, steps, delta, accountant)  # type: ignore[arg-type]
    result = {"epsilon": eps, "delta": delta, "noise_multiplier": z, "sample_rate": sample_rate, "steps": steps,
              "mechanism": "Poisson-subsampled Gaussian, composed T times", "accountant": f"{accountant} (dp-accounting)"}
    if target_epsilon is not None:
        result["target_epsilon"] = target_epsilon
    if as_json:
        print(json.dumps(result))
        return
    console.print(f"epsilon = {eps:.4f} at delta = {delta:g}  (noise multiplier z = {z:.4f}, sample rate q = "
                  f"{sample_rate:g}, steps T = {steps}; {result['mechanism']}; {result['accountant']})",
                  highlight=False)


LedgerOption = Annotated[Path, typer.Option("--ledger", "--path", help="Ledger file (SQLite).")]


@app.command("ledger")
def ledger_command(
    ledger: LedgerOption = DEFAULT_LEDGER,
    run: Annotated[str | None, typer.Option(help="Show the releases of one run id.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Budgets, spend (epsilon and delta) and what is left, per unit and dataset, by task."""
    from rich.table import Table

    from privacy.ledger import BudgetLedger

    if not ledger.exists():
        fail(f"{ledger}: no ledger yet; runs with --ledger {ledger} create it, or `fedseg privacy budget set`.")
    book = BudgetLedger(ledger)
    if run:
        rows = book.run_rows(run)
        if as_json:
            print(json.dumps(rows))
            return
        for row in rows:
            console.print(row, highlight=False)
        return
    rows = book.summary()
    if as_json:
        print(json.dumps([r.model_dump() for r in rows]))
        return
    table = Table(title=f"privacy ledger {ledger} (epsilon per end user; across runs epsilons and deltas add)")
    for col in ("unit", "dataset", "budget", "spent", "remaining", "runs by task"):
        table.add_column(col)

    def pair(eps: float | None, delta: float | None) -> str:
        return "-" if eps is None else f"{eps:.3f} (delta {delta:.2g})"

    for r in rows:
        tasks = ", ".join(f"{task} {t.runs} ({t.epsilon:.3f})" for task, t in sorted(r.releases_by_task.items()))
        table.add_row(r.unit, r.dataset, pair(r.budget_epsilon, r.budget_delta), pair(r.spent_epsilon, r.spent_delta),
                      pair(r.remaining_epsilon, r.remaining_delta), tasks or "-")
    console.print(table)


budget_app = typer.Typer(help="Set privacy budgets.", no_args_is_help=True)
app.add_typer(budget_app, name="budget")


@budget_app.command("set")
def budget_set(
    epsilon: Annotated[float, typer.Option(help="Total epsilon per end user the unit allows on the dataset.")],
    dataset: Annotated[str, typer.Option(help="Dataset id the units record under (simulations: the dataset name, e.g. cdnow).")],
    unit: Annotated[str, typer.Option(help="Unit name, or * for every unit without its own budget.")] = "*",
    delta: Annotated[float, typer.Option(help="Total delta the unit allows on the dataset (deltas of runs add up).")] = 1e-5,
    ledger: LedgerOption = DEFAULT_LEDGER,
) -> None:
    """Set (or replace) a unit's budget on a dataset."""
    from privacy.ledger import BudgetLedger

    try:
        BudgetLedger(ledger).set_budget(unit, dataset, epsilon, delta)
    except ValueError as exc:
        fail(str(exc))
    console.print(f"budget of {'every unit' if unit == '*' else unit} on {dataset}: epsilon {epsilon:g}, "
                  f"delta {delta:g} ({ledger})", highlight=False)
