"""``fedseg data export-cdnow`` and ``fedseg data generate``: research data (the bundled CDNOW log as
an events file; synthetic units with planted archetypes). Mounted in the ``data`` group beside the
unit's ``data validate`` (:mod:`clients.cli`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedseg.console import console, fail

app = typer.Typer()


@app.command("export-cdnow")
def export_cdnow(
    out: Annotated[Path, typer.Argument(help="Output events file (.csv or .parquet).")] = Path("data/cdnow_events.parquet"),
) -> None:
    """Write the bundled CDNOW log (from the lifetimes wheel) as an events file."""
    from fedseg.datasets import load_cdnow
    from fedseg.io import write_table

    events = load_cdnow()
    write_table(events, out)
    console.print(f"wrote {len(events)} events of {events['user_id'].nunique()} users to {out}")


@app.command("generate")
def generate_command(
    out: Annotated[Path, typer.Argument(help="Output folder: events_unit_<k> and users_unit_<k> files per unit.")] = Path("data/synthetic"),
    users: Annotated[int, typer.Option(help="Number of users.")] = 10_000,
    units: Annotated[int, typer.Option(help="Number of business units.")] = 5,
    days: Annotated[int, typer.Option(help="Length of the period in days.")] = 365,
    start: Annotated[str, typer.Option(help="First day, YYYY-MM-DD.")] = "2024-01-01",
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same data).")] = 0,
    unit_size_alpha: Annotated[float | None, typer.Option(help="Dirichlet concentration of unit sizes (small = very unequal).")] = None,
    behaviour_skew: Annotated[float, typer.Option(help="0: same behaviour mix in every unit; 1: unit-specific.")] = 0.0,
    fmt: Annotated[str, typer.Option("--format", help="parquet or csv.")] = "parquet",
) -> None:
    """Generate synthetic activity logs with planted archetypes, one file pair per unit."""
    import datetime as dt

    from pydantic import ValidationError

    from simulations.generator import GeneratorConfig, generate, write_units

    if fmt not in ("parquet", "csv"):
        fail(f"--format {fmt!r}: use parquet or csv.")
    try:
        cfg = GeneratorConfig(n_users=users, n_units=units, days=days, start=dt.date.fromisoformat(start), seed=seed,
                              unit_size_alpha=unit_size_alpha, behaviour_skew=behaviour_skew)
    except (ValidationError, ValueError) as exc:
        fail(str(exc))
    with console.status(f"generating {users:,} users over {units} units"):
        data = generate(cfg)
        files = write_units(data, out, fmt)
    console.print(f"wrote {len(data.events):,} events of {len(data.users):,} users in {units} units to {out} "
                  f"({len(files)} files)", highlight=False)
