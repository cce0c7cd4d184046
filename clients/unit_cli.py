"""Unit-side commands: ``fedseg features`` (features to Parquet) and ``fedseg score`` (local churn scores)."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Annotated

import typer

from clients.cli_options import DateFormat, Encoding, Sep, file_format
from fedseg.console import advance, console, fail, steps
from fedseg.io import check_table_path, write_table
from fedseg.contract import OnError

app = typer.Typer()


@app.command("features")
def features(
    events: Annotated[Path | None, typer.Option(help="Events file of one unit (.csv/.parquet). Default: the bundled CDNOW log.")] = None,
    users: Annotated[Path | None, typer.Option(help="Users file (adds sign-up dates to tenure).")] = None,
    cutoff: Annotated[str | None, typer.Option(help="Last day of history, YYYY-MM-DD. Default for CDNOW: 1997-09-30.")] = None,
    horizon_days: Annotated[int, typer.Option(help="Churn label window after the cutoff, in days.")] = 273,
    out: Annotated[Path, typer.Option(help="Output file (.parquet or .csv).")] = Path("out/features.parquet"),
    on_error: Annotated[OnError, typer.Option(help="fail: stop at invalid rows; quarantine: set them aside beside --out.")] = OnError.fail,
    sep: Sep = ",",
    encoding: Encoding = "utf-8",
    date_format: DateFormat = None,
) -> None:
    """Compute RFM/activity features, lifecycle stage and churn label per user at a cutoff."""
    from clients.features import build_features, check_cutoff
    from clients.ingest import IngestError, default_quarantine_path, read_events, read_users
    from fedseg.config import FeatureConfig
    from fedseg.datasets import CALIBRATION_END, load_cdnow

    if events is None and cutoff is None:
        cutoff_date = CALIBRATION_END
    elif cutoff is None:
        fail("--cutoff is required with --events (the last day of history, YYYY-MM-DD).")
    else:
        try:
            cutoff_date = dt.date.fromisoformat(cutoff)
        except ValueError:
            fail(f"--cutoff {cutoff!r} is not a date; use YYYY-MM-DD, for example 2024-03-31.")
    check_table_path(out)
    config = FeatureConfig(cutoff=cutoff_date, horizon_days=horizon_days)
    fmt = file_format(sep, encoding, date_format)

    started = time.perf_counter()
    with steps(3, "reading events") as progress:
        user_frame = None
        try:
            if events is None:
                frame = load_cdnow()
                source = "CDNOW (bundled with lifetimes)"
            else:
                result = read_events(events, on_error=on_error, file_format=fmt,
                                     quarantine_path=default_quarantine_path(events, out))
                frame = result.frame
                source = str(events)
                console.print(result.report.summary(), highlight=False)
                for warning in result.report.warnings:
                    console.print(f"[yellow]warning:[/] {warning}", highlight=False)
            if users is not None:
                user_result = read_users(users, on_error=on_error, file_format=fmt,
                                         quarantine_path=default_quarantine_path(users, out.with_name(out.stem + "_users")))
                user_frame = user_result.frame
                console.print(user_result.report.summary(), highlight=False)
        except IngestError as exc:
            fail(str(exc))
        for warning in check_cutoff(frame, config, source):
            console.print(f"[yellow]warning:[/] {warning}", highlight=False)
        advance(progress, f"features of {len(frame):,} events")
        table = build_features(frame, config, users=user_frame)
        advance(progress, f"writing {out}")
        out.parent.mkdir(parents=True, exist_ok=True)
        write_table(table, out)
        advance(progress, "done")
    elapsed = time.perf_counter() - started
    console.print(
        f"{source}: {len(frame):,} events -> {len(table):,} users at cutoff {cutoff_date} "
        f"(label window {horizon_days} days) in {elapsed:.1f} s -> {out}",
        highlight=False,
    )
    console.print(
        f"churn rate {table['churned'].mean():.3f}; lifecycle: "
        + ", ".join(f"{k} {v}" for k, v in table["lifecycle_stage"].value_counts().items()),
        highlight=False,
    )


@app.command("score")
def score(
    model: Annotated[Path | None, typer.Option(help="Global model file, <run>/server/model.npz (a churn or a CLV model).")] = None,
    clv_model: Annotated[Path | None, typer.Option(help="A second model file: the CLV model (`fedseg clv`), beside a churn --model.")] = None,
    events: Annotated[Path | None, typer.Option(help="This unit's events file. Default: bundled CDNOW.")] = None,
    users: Annotated[Path | None, typer.Option(help="Users file (sign-up dates).")] = None,
    cutoff: Annotated[str | None, typer.Option(help="Score as of this day, YYYY-MM-DD (default: last event day).")] = None,
    out: Annotated[Path, typer.Option(help="Output file of per-user scores (.parquet or .csv).")] = Path("out/scores.parquet"),
    on_error: Annotated[OnError, typer.Option(help="fail or quarantine invalid rows.")] = OnError.fail,
    sep: Sep = ",",
    encoding: Encoding = "utf-8",
    date_format: DateFormat = None,
) -> None:
    """Score this unit's users with global models; writes churn probability, CLV and value at risk locally.

    The scores file feeds `fedseg segment --scores` (churn warnings by --churn-threshold, value tiers
    by CLV, the playbook's ranking by value at risk).
    """
    from clients.ingest import IngestError, default_quarantine_path, read_events, read_users
    from clients.scoring import ModelFileError, score_users
    from fedseg.datasets import load_cdnow

    if model is None and clv_model is None:
        fail("give --model (a churn or CLV model.npz) and/or --clv-model")
    cutoff_date = None
    if cutoff is not None:
        try:
            cutoff_date = dt.date.fromisoformat(cutoff)
        except ValueError:
            fail(f"--cutoff {cutoff!r} is not a date; use YYYY-MM-DD.")
    check_table_path(out)
    try:
        fmt = file_format(sep, encoding, date_format)
        frame = load_cdnow() if events is None else read_events(
            events, on_error=on_error, quarantine_path=default_quarantine_path(events, out), file_format=fmt).frame
        user_frame = read_users(users, on_error=on_error, file_format=fmt).frame if users else None
        with console.status("scoring"):
            table = score_users(frame, model, cutoff_date, user_frame, clv_model_path=clv_model)
    except (IngestError, ModelFileError) as exc:
        fail(str(exc))
    write_table(table, out)
    parts = []
    if "churn_probability" in table:
        parts.append(f"mean churn probability {table['churn_probability'].mean():.3f} ({table['model'].iloc[0]} "
                     f"{table['model_version'].iloc[0]})")
    if "clv" in table:
        parts.append(f"mean CLV {table['clv'].mean():.2f} over {table['clv_horizon_days'].iloc[0]} days "
                     f"({table['clv_model_version'].iloc[0]})")
    if "value_at_risk" in table:
        parts.append(f"value at risk {table['value_at_risk'].sum():,.0f} in total")
    console.print(f"scored {len(table):,} users as of {table['scored_at_cutoff'].iloc[0]}: {'; '.join(parts)} -> {out}",
                  highlight=False)
