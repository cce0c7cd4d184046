"""``fedseg data validate``: check a unit's files against the data contract (the research data
commands of the same group, ``export-cdnow`` and ``generate``, are in :mod:`simulations.data_cli`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedseg.console import console, fail
from fedseg.contract import OnError

app = typer.Typer(help="Check a unit's event/user files against the data contract; export bundled data; "
                       "generate synthetic units.", no_args_is_help=True)


@app.command("validate")
def validate(
    file: Annotated[Path, typer.Argument(help="Events file (.csv or .parquet) of one unit.")],
    users: Annotated[bool, typer.Option("--users", help="FILE is a users file, not events.")] = False,
    on_error: Annotated[OnError, typer.Option(help="fail: stop at invalid rows; quarantine: set them aside.")] = OnError.fail,
    quarantine: Annotated[Path | None, typer.Option(help="Quarantine file (default: FILE.quarantine.csv beside FILE).")] = None,
    encoding: Annotated[str, typer.Option(help="Text encoding of a CSV file.")] = "utf-8",
) -> None:
    """Check every row of FILE; print rows read, accepted and rejected, and each problem."""
    from clients.ingest import IngestError, read_events, read_users

    reader = read_users if users else read_events
    try:
        with console.status(f"validating {file}"):
            result = reader(file, on_error=on_error, quarantine_path=quarantine, encoding=encoding)
    except IngestError as exc:
        fail(str(exc))
    report = result.report
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    for error in report.errors[:20]:
        console.print(f"  rejected {error}", highlight=False)
    if len(report.errors) > 20:
        console.print(f"  ... and {len(report.errors) - 20} more (all in the quarantine file)")
    console.print(report.summary(), highlight=False)
