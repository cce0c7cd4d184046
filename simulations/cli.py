"""``fedseg simulate``: federated churn training on one machine (Flower simulation engine)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer

from clients.cli_options import DateFormat, Encoding, Sep, file_format
from simulations.cli_options import Alpha, Dataset, Events, Ledger, Partition, SyntheticUsers, Units, Users, Verbose
from fedseg.console import console, fail, job_errors

T = TypeVar("T")

app = typer.Typer()


def _date(value: str | None, name: str) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        fail(f"{name} {value!r} is not a date; use YYYY-MM-DD.")


def _plan_default(field: str) -> Any:
    """A training-plan field's default: the command line's defaults come from the plan."""
    from fedseg.config import TrainingPlan

    return TrainingPlan.model_fields[field].default


def _segment_default(field: str) -> Any:
    """A segmentation-plan field's default (the command line's defaults come from the plan)."""
    from fedseg.config import SegmentationPlan

    return SegmentationPlan.model_fields[field].default


#: Command-line flag of a plan field (for error messages), where the names differ.
_FLAGS = {"num_rounds": "--rounds", "target_epsilon": "--epsilon", "learning_rate": "--lr"}


def validation_problems(exc: Any) -> str:
    """One line from a pydantic ValidationError, naming command-line flags."""
    problems = []
    for e in exc.errors():
        loc = [str(p) for p in e["loc"] if p != "plan"]
        flag = _FLAGS.get(loc[-1], "--" + loc[-1].replace("_", "-")) if loc else ""
        problems.append((f"{flag}: " if flag else "") + e["msg"].removeprefix("Value error, "))
    return "; ".join(problems)



def print_privacy_line(epsilon: float | None, exact: str, dp: Callable[[], str]) -> None:
    """A report header's privacy line: ``none (<exact>; ...)`` without epsilon, else ``dp()``."""
    text = f"none ({exact}; no differential privacy)" if epsilon is None else dp()
    console.print(f"  privacy: {text} | secure aggregation: off", highlight=False)


@app.command("simulate")
def simulate(
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
    model: Annotated[str, typer.Option(help="mlp (per-user features) or gru (event sequences + features).")] = _plan_default("model"),
    strategy: Annotated[str, typer.Option(help="fedavg or fedprox.")] = _plan_default("strategy"),
    proximal_mu: Annotated[float, typer.Option(help="FedProx proximal weight mu (with --strategy fedprox).")] = 0.01,
    local_epochs: Annotated[int, typer.Option(help="Local epochs per round.")] = _plan_default("local_epochs"),
    learning_rate: Annotated[float, typer.Option("--lr", help="Adam learning rate.")] = _plan_default("learning_rate"),
    batch_size: Annotated[int, typer.Option(help="Local batch size.")] = _plan_default("batch_size"),
    cutoff: Annotated[str | None, typer.Option(help="Last day of history, YYYY-MM-DD (default: the dataset's).")] = None,
    horizon_days: Annotated[int | None, typer.Option(help="Churn label window in days (default: the dataset's).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed (model init, partition, data).")] = _plan_default("seed"),
    out: Annotated[Path | None, typer.Option(help="Run directory (default runs/<dataset>-<model>-<time>).")] = None,
    baselines: Annotated[bool, typer.Option(help="Also train the centralised model and fit BG/NBD.")] = True,
    privacy: Annotated[str, typer.Option(help="none, client (unit-level DP, noise added by the coordinator) or user (user-level DP-SGD in every unit).")] = _plan_default("privacy"),
    epsilon: Annotated[float | None, typer.Option(help="Target epsilon per end user (user) or unit (client) over all rounds.")] = None,
    delta: Annotated[float | None, typer.Option(help="delta (default: the largest power of ten at most 1/(10 x users)).")] = None,
    noise_multiplier: Annotated[float | None, typer.Option(help="Fixed noise multiplier instead of --epsilon.")] = None,
    sample_rate: Annotated[float, typer.Option(help="DP-SGD Poisson sampling rate per step (user mode).")] = _plan_default("sample_rate"),
    max_grad_norm: Annotated[float, typer.Option(help="Per-user gradient clipping norm (user mode); 1 biases the churn model towards the majority class on CDNOW.")] = _plan_default("max_grad_norm"),
    clipping_norm: Annotated[float, typer.Option(help="Per-unit update clipping norm (client mode).")] = _plan_default("clipping_norm"),
    ledger: Annotated[Path | None, typer.Option(help="The units' privacy budget ledger (SQLite): each unit checks and records its spend.")] = None,
    secagg: Annotated[bool, typer.Option("--secagg", help="Secure aggregation (SecAgg+): the coordinator sees only the sum of updates.")] = False,
    secagg_threshold: Annotated[float, typer.Option(help="SecAgg reconstruction threshold: a count (>= 2), or a fraction (< 1) of each unit's degree + 1 share holders.")] = _plan_default("secagg_threshold"),
    dp_research_seed: Annotated[int | None, typer.Option(help="RESEARCH ONLY: a seed each simulated unit keeps to itself for DP-SGD's sample and noise (reproducible DP runs). Without it they come from OS entropy.")] = None,
    verbose: Verbose = False,
) -> None:
    """Train churn models across simulated units with Flower; compare with centralised and BG/NBD.

    With no options: the real CDNOW log split over 5 units, MLP, FedAvg, 10 rounds.
    """
    from pydantic import ValidationError

    from simulations.runner import SimulationConfig, run_simulation_job

    if out is None:
        out = Path("runs") / f"{dataset}-{model}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    try:
        cfg = SimulationConfig.from_settings(
            dataset=dataset, events_path=events, users_path=users, synthetic_users=synthetic_users,
            units=units, partition=partition, alpha=alpha, rounds=rounds, model=model, strategy=strategy,
            proximal_mu=proximal_mu if strategy == "fedprox" else 0.0, local_epochs=local_epochs,
            learning_rate=learning_rate, batch_size=batch_size, cutoff=_date(cutoff, "--cutoff"),
            horizon_days=horizon_days, seed=seed, out=out, baselines=baselines, privacy=privacy,
            epsilon=epsilon, delta=delta, noise_multiplier=noise_multiplier, sample_rate=sample_rate,
            max_grad_norm=max_grad_norm, clipping_norm=clipping_norm, ledger=ledger, secagg=secagg,
            secagg_threshold=secagg_threshold, dp_research_seed=dp_research_seed,
            events_format=file_format(sep, encoding, date_format),
        )
    except ValidationError as exc:
        fail(validation_problems(exc))
    if cfg.dataset == "file" and cfg.events_path is None:
        fail("--dataset file needs --events FILE.")
    if cfg.events_path is not None:
        cfg.dataset = "file"

    def show(record: dict[str, Any]) -> None:
        extra = f", {record['units_trained']} units, {record['seconds']:.1f} s" if "units_trained" in record else " (initial model)"
        eps = f", epsilon {record['epsilon']:.3f}" if record.get("epsilon") else ""
        if "auc" in record:
            figures = (f"AUC {record['auc']:.4f}  log loss {record['log_loss']:.4f}  "
                       f"Brier {record['brier']:.4f}")
        elif record["round"] == 0:
            figures = "initial model (not evaluated: under DP evaluation is a scheduled release)"
        else:
            figures = ("trained (no federated evaluation under client-level DP)" if cfg.plan.privacy == "client"
                       else "trained (under user-level DP evaluation runs after the last round)")
        console.print(f"  round {record['round']:>3}/{cfg.plan.num_rounds}: {figures}{extra}{eps}", highlight=False)

    def header(plan: Any, fed: Any) -> None:
        partition = cfg.partition if cfg.partition != "auto" else ("column" if "unit_id" in fed.events else "iid")
        skew = f" (alpha {cfg.alpha:g})" if partition == "dirichlet" else ""
        console.print(f"simulating {len(fed.files)} units on {cfg.dataset} ({len(fed.features):,} users, "
                      f"{partition} partition{skew}): {plan.model}, {plan.strategy}, {plan.num_rounds} rounds x "
                      f"{plan.local_epochs} local epochs -> {out}", highlight=False)
        console.print(f"  {privacy_header(plan)}", highlight=False)

    with job_errors():
        summary = run_simulation_job(cfg, on_round=show, verbose=verbose, on_start=header)
    print_summary(summary, out)


def privacy_header(plan: Any) -> str:
    """One line: the privacy mode, epsilon and delta the run is calibrated to, and secure aggregation."""
    secagg = "secure aggregation: " + ("on" if plan.secagg else "off")
    if plan.privacy == "none":
        return f"privacy: none (exact updates; no differential privacy) | {secagg}"
    from privacy.training_dp import TrainingPrivacy

    privacy = TrainingPrivacy.for_plan(plan)
    who = "per end user" if plan.privacy == "user" else "per unit, noise added by the coordinator"
    return (f"privacy: {plan.privacy}-level DP, epsilon {privacy.epsilon_after(plan.num_rounds):.3f} {who} "
            f"(target {privacy.target_epsilon:.3g}), delta {privacy.delta:g} | {secagg}")


def print_summary(summary: dict[str, Any], out: Path) -> None:
    """The human summary at the end of a run."""
    from rich.table import Table

    m = summary["metrics"]
    table = Table(title="churn model on held-out users (20% of users, same in every row)")
    for col in ("model", "AUC", "log loss", "Brier"):
        table.add_column(col)

    def fmt(x: Any) -> str:
        return "-" if x is None else f"{x:.4f}"

    table.add_row(f"federated ({summary['config']['units']} units)", fmt(m.get("auc")), fmt(m.get("log_loss")), fmt(m.get("brier")))
    if "centralized_auc" in m:
        table.add_row("centralised (pooled data)", fmt(m["centralized_auc"]), fmt(m["centralized_log_loss"]),
                      fmt(m["centralized_brier"]))
    if "bgnbd_auc" in m:
        table.add_row("BG/NBD (lifetimes)", fmt(m["bgnbd_auc"]), "-", "-")
    console.print(table)
    if "centralized_auc" in m:
        console.print(f"cost of federation: {m['centralized_auc'] - m['auc']:+.4f} AUC "
                      f"(federated AUC from merged histograms {m['auc']:.4f}, exact on pooled scores "
                      f"{m['auc_exact_pooled']:.4f})", highlight=False)
    p = summary.get("privacy") or {}
    if p.get("mode", "none") != "none":
        console.print(f"privacy ({p['mode']}-level): epsilon {p['epsilon']:.3f} (RDP; PLD {p['epsilon_pld']:.3f}), "
                      f"delta {p['delta']:g}, noise multiplier {p['noise_multiplier']:.3f}, sample rate "
                      f"{p['sample_rate']:.4g}, steps {p['steps']} [{p['unit_of_privacy']}]", highlight=False)
    console.print(f"data {summary['data']['fingerprint'][:23]}..., model {summary['model_version']}; "
                  f"{summary['timing']['total_seconds']:.0f} s; summary: {out / 'summary.json'}", highlight=False)


@app.command("segment")
def segment(
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
    k: Annotated[int | None, typer.Option(help="Number of activity segments (default: federated elbow over 2..8).")] = None,
    iterations: Annotated[int | None, typer.Option(help="Federated Lloyd iterations (default 20 without noise, 6 with).")] = None,
    epsilon: Annotated[float | None, typer.Option(help="Total epsilon per end user for the whole segmentation (default: no noise).")] = None,
    delta: Annotated[float | None, typer.Option(help="delta of the (epsilon, delta) guarantee (default: the largest power of ten at most 1/(10 x users)); needs --epsilon.")] = None,
    ledger: Ledger = None,
    cutoff: Annotated[str | None, typer.Option(help="Segment as of this day, YYYY-MM-DD (CDNOW: 1997-09-30).")] = None,
    previous_cutoff: Annotated[str | None, typer.Option(help="Earlier day for the transition matrix (default: 91 days before).")] = None,
    horizon_days: Annotated[int | None, typer.Option(help="Label window for churn rate per segment, days.")] = None,
    inactivity_days: Annotated[float, typer.Option(help="Churn warning after this many days without any event.")] = _segment_default("inactivity_days"),
    churn_threshold: Annotated[float, typer.Option(help="Churn warning at this churn probability (with --churn-model or --scores).")] = _segment_default("churn_threshold"),
    churn_model: Annotated[Path | None, typer.Option(help="Global churn model (<run>/server/model.npz): the coordinator sends it, every unit scores its users locally.")] = None,
    clv_model: Annotated[Path | None, typer.Option(help="Global CLV model (`fedseg clv` <run>/server/model.npz), sent the same way.")] = None,
    scores: Annotated[Path | None, typer.Option(help="Instead of models: per-user scores from `fedseg score` (each simulated unit takes its own users' rows).")] = None,
    tier_by: Annotated[str, typer.Option(help="Value tiers by past spend (spend) or by predicted CLV (clv).")] = _segment_default("tier_by"),
    playbook: Annotated[Path | None, typer.Option(help="Playbook file (TOML/JSON): actions with channel and cost, rules, holdout share, contact caps (default: the embedded one).")] = None,
    holdout_share: Annotated[float | None, typer.Option(help="Share of each segment x action held out (default: the playbook's, 0.1).")] = None,
    contact_log: Annotated[Path | None, typer.Option(help="Contacts already made (user_id, ts, channel): the caps count them.")] = None,
    research_seed: Annotated[int | None, typer.Option(help="RESEARCH ONLY: a seed each unit keeps to itself for the holdout draw (reproducible runs); by default OS entropy.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = _segment_default("seed"),
    out: Annotated[Path | None, typer.Option(help="Output directory (default runs/segment-<dataset>-<time>).")] = None,
    verbose: Verbose = False,
) -> None:
    """Federated segmentation: activity segments, RFM segments, value tiers, lifecycle transitions,
    churn warnings and CRM action lists with holdouts.

    Units write per-user segment files and action lists (Parquet and CSV) locally (<out>/units); only
    aggregates reach the coordinator (<out>/segments.json, segments.png, transitions.png). With no
    options: CDNOW over 5 units. With --churn-model/--clv-model (or --scores) the per-user files carry
    churn probability, CLV and value at risk, --churn-threshold raises warnings, and the playbook
    ranks users by value at risk.
    """
    from pydantic import ValidationError

    from fedseg.config import SegmentationPlan
    from simulations.runner import SimulationConfig
    from simulations.segment_runner import run_segment_job

    if out is None:
        out = Path("runs") / f"segment-{dataset}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    cutoff_date = _date(cutoff, "--cutoff")
    try:
        data_cfg = SimulationConfig.from_settings(dataset="file" if events else dataset, events_path=events,
                                                  users_path=users, events_format=file_format(sep, encoding, date_format),
                                                  synthetic_users=synthetic_users, units=units, partition=partition,
                                                  alpha=alpha, cutoff=cutoff_date, horizon_days=horizon_days,
                                                  seed=seed, out=out)
        # the cutoff and horizon come from the data (run_segment_job), as in `fedseg simulate`
        plan = SegmentationPlan(k=k, iterations=iterations, epsilon=epsilon, delta=delta,
                                inactivity_days=inactivity_days, churn_threshold=churn_threshold, seed=seed,
                                previous_cutoff=_date(previous_cutoff, "--previous-cutoff"), churn_model=churn_model,
                                clv_model=clv_model, unit_scores=scores is not None, tier_by=tier_by)
    except ValidationError as exc:
        fail(validation_problems(exc))
    from fedseg.playbook import load_playbook

    book = load_playbook(playbook)
    if holdout_share is not None:
        if not 0 <= holdout_share < 1:
            fail(f"--holdout-share {holdout_share}: give a share in [0, 1)")
        book = book.model_copy(update={"holdout_share": holdout_share})
    for flag, path in (("--scores", scores), ("--contact-log", contact_log)):
        if path is not None and not path.exists():
            fail(f"{flag} {path}: no such file")
    unit_options = {"scores_path": scores, "playbook": book, "contact_log_path": contact_log,
                    "dp_research_seed": research_seed}

    def header(run_plan: Any, fed: Any) -> None:
        from server.segmentation import noise_plan

        partition = data_cfg.partition if data_cfg.partition != "auto" else ("column" if "unit_id" in fed.events else "iid")
        console.print(f"segmenting {len(fed.files)} units on {data_cfg.dataset} ({len(fed.features):,} users, "
                      f"{partition} partition) -> {out}", highlight=False)
        def dp() -> str:
            noise = noise_plan(run_plan)
            return f"DP per end user, epsilon {noise.epsilon:.3f}, delta {noise.delta:g} (units add the noise)"

        print_privacy_line(run_plan.epsilon, "exact aggregates", dp)

    with job_errors():
        report = run_segment_job(data_cfg, plan, verbose=verbose, default_previous_days=91, ledger=ledger,
                                 on_start=header, unit_options=unit_options)
    print_segments(report, out)


def print_segments(report: dict[str, Any], out: Path) -> None:
    """Readable tables of a segmentation report."""
    from rich.table import Table

    table = Table(title=f"activity segments (k={report['k']}, {report['units']} units)")
    scored = [c for c in ("mean_churn_probability", "mean_clv") if any(c in s for s in report["segments"])]
    for col in ("segment", "users", "share", "churn rate", "recency d", "purchase days", "spend",
                *[{"mean_churn_probability": "P(churn)", "mean_clv": "CLV"}[c] for c in scored]):
        table.add_column(col, justify="right" if col != "segment" else "left")
    for s in sorted(report["segments"], key=lambda s: -(s["churn_rate"] or 0)):
        p = s["mean_profile"] or s["centroid"]
        table.add_row(s["name"], f"{s['size']:,.0f}", f"{s['share']:.1%}",
                      "-" if s["churn_rate"] is None else f"{s['churn_rate']:.1%}",
                      f"{p['recency_days']:.0f}", f"{p['frequency']:.1f}", f"{p['monetary_total']:.0f}",
                      *["-" if s.get(c) is None else f"{s[c]:.3f}" if c == "mean_churn_probability" else f"{s[c]:.1f}"
                        for c in scored])
    console.print(table)
    rfm = Table(title=f"RFM segments and value tiers (tiers by {report.get('value_tiers_by', 'spend')})")
    rfm.add_column("RFM segment")
    rfm.add_column("users", justify="right")
    for name, n in report["rfm_segments"].items():
        rfm.add_row(name, f"{n:,.0f}")
    for name, n in report["value_tiers"].items():
        rfm.add_row(f"tier: {name}", f"{n:,.0f}")
    console.print(rfm)
    if "transition_matrix" in report:
        tm = report["transition_matrix"]
        trans = Table(title=f"lifecycle transitions {tm['from_cutoff']} -> {tm['to_cutoff']} (rows: from)")
        trans.add_column("from \\ to")
        for s in tm["states"]:
            trans.add_column(s, justify="right")
        for s, row in zip(tm["states"], tm["counts"]):
            trans.add_row(s, *[f"{v:,.0f}" for v in row])
        console.print(trans)
    privacy = report["privacy"]
    if privacy["epsilon"] is not None:
        console.print(f"privacy: epsilon {privacy['epsilon']:.3f}, delta {privacy['delta']:g} per end user "
                      f"({privacy['accountant']}; rho {privacy['rho']:.5f})", highlight=False)
    else:
        console.print("privacy: no noise added (exact aggregates); pass --epsilon for differential privacy")
    if "centralised_comparison" in report:
        c = report["centralised_comparison"]
        console.print(f"agreement with centralised k-means (simulation only): ARI {c['adjusted_rand_index']:.3f}, "
                      f"inertia ratio {c['inertia_ratio']:.3f}", highlight=False)
    console.print(f"churn warnings: {report['warnings']:,.0f} users; per-user segment files and CRM action lists "
                  f"(Parquet and CSV) stay in {out / 'units'}", highlight=False)
    console.print(f"segments.json, {', '.join(report.get('figures', []))} in {out} ({report['seconds']:.0f} s)",
                  highlight=False)


@app.command("sweep")
def sweep(
    config: Annotated[Path, typer.Argument(help="Sweep file (TOML): [sweep], [fixed], [grid]; see simulations/sweeps/.")],
    out: Annotated[Path | None, typer.Option(help="Results folder (default: the sweep file's [sweep] out).")] = None,
    plot: Annotated[bool, typer.Option("--plot", help="Only draw the plots from the existing results table.")] = False,
) -> None:
    """Run a grid of simulations (resumable: finished cells are skipped); --plot draws PNGs."""
    import pandas as pd

    from simulations.plots import make_plots
    from simulations.sweep import RESULTS_CSV, SweepError, expand, load_spec, run_sweep

    try:
        spec = load_spec(config)
        if out is not None:
            spec = spec.model_copy(update={"out": out})
        cells = expand(spec)
    except SweepError as exc:
        fail(str(exc))
    out = Path(spec.out)
    if plot:
        if not (out / RESULTS_CSV).exists():
            fail(f"{out / RESULTS_CSV} does not exist yet; run `fedseg sweep {config}` first.")
        paths = make_plots(pd.read_csv(out / RESULTS_CSV), out / "plots")
        for p in paths:
            console.print(f"wrote {p}")
        if not paths:
            console.print("the results table holds no cells any plot needs")
        return
    console.print(f"sweep {spec.name}: {len(cells)} cells -> {out}", highlight=False)

    def show(index: int, total: int, cell: dict[str, Any], status: str) -> None:
        settings = ", ".join(f"{k}={v}" for k, v in cell.items() if k not in ("cell_id", "rounds_json") and
                             k in spec.grid)
        figures = ""
        if status == "done":
            figures = " ".join(f"{k}={cell[k]:.4f}" for k in ("auc", "centralized_auc", "ari", "epsilon_spent")
                               if isinstance(cell.get(k), float))
            figures += f" ({cell['seconds']:.0f} s)"
        console.print(f"[{index}/{total}] {cell['cell_id']} {settings}: {status} {figures}", highlight=False)

    table = run_sweep(spec, on_cell=show)
    paths = make_plots(table, out / "plots")
    console.print(f"results: {out / RESULTS_CSV} ({len(table)} rows); plots: {', '.join(p.name for p in paths)}",
                  highlight=False)
