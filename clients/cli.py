"""``fedseg data validate``: check a unit's files against the data contract (the research data
commands of the same group, ``export-cdnow`` and ``generate``, are in :mod:`simulations.data_cli`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from clients.cli_options import DateFormat, Encoding, Sep, file_format
from fedseg.console import console, fail
from fedseg.contract import OnError

app = typer.Typer(help="Check a unit's event/user files against the data contract; export bundled data; "
                       "generate synthetic units.", no_args_is_help=True)


@app.command("validate")
def validate(
    events: Annotated[Path | None, typer.Option(help="Events file (.csv or .parquet) of one unit.")] = None,
    users: Annotated[Path | None, typer.Option(help="Users file (.csv or .parquet) of one unit.")] = None,
    on_error: Annotated[OnError, typer.Option(help="fail: stop at invalid rows; quarantine: set them aside.")] = OnError.fail,
    quarantine: Annotated[Path | None, typer.Option(help="Quarantine file for the events (default: <events>.quarantine.csv beside it; users: <users>.quarantine.csv).")] = None,
    sep: Sep = ",",
    encoding: Encoding = "utf-8",
    date_format: DateFormat = None,
) -> None:
    """Check every row of a unit's events and/or users file; print rows read, accepted and
    rejected, and each problem (with a hint when most rows fail the same way)."""
    from clients.ingest import read_events, read_users

    if events is None and users is None:
        fail("give --events FILE, --users FILE, or both.")
    fmt = file_format(sep, encoding, date_format)
    for path, reader, quarantine_path in ((events, read_events, quarantine), (users, read_users, None)):
        if path is None:
            continue
        with console.status(f"validating {path}"):
            result = reader(path, on_error=on_error, quarantine_path=quarantine_path, file_format=fmt)
        report = result.report
        for warning in report.warnings:
            console.print(f"[yellow]warning:[/] {warning}", highlight=False)
        if report.hint:
            console.print(f"[yellow]hint:[/] {report.hint}", highlight=False)
        for error in report.errors[:20]:
            console.print(f"  rejected {error}", highlight=False)
        if len(report.errors) > 20:
            console.print(f"  ... and {len(report.errors) - 20} more (all in the quarantine file)")
        console.print(report.summary(), highlight=False)
