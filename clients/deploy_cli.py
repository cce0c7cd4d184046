"""``fedseg deploy check`` and ``fedseg deploy supernode``: the unit's own deployment commands, run
on its premises (the coordinator's commands of the same group are in :mod:`server.deploy_cli`)::

    fedseg keys supernode --unit shop_north unit-keys    # its own key; hand over unit-keys/shop_north.pub
    fedseg deploy check unit.toml                        # validates config, keys and data
    fedseg deploy supernode unit.toml                    # starts flower-supernode
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedseg.console import console, err_console, fail
from fedseg.flower_exec import INSECURE_WARNING, flower_bin, run_or_print

app = typer.Typer()


def _load(config: Path, check_data: bool):  # noqa: ANN202
    from clients.ingest import IngestError
    from clients.unit_config import UnitConfigError, check_unit_data, load_unit_config

    try:
        cfg = load_unit_config(config)
    except UnitConfigError as exc:
        fail(str(exc))
    if cfg.insecure:
        err_console.print(INSECURE_WARNING)
    if check_data:
        try:
            with console.status(f"checking {cfg.data_path} against the data contract"):
                lines = check_unit_data(cfg)
        except IngestError as exc:
            fail(f"{config}: the unit's data does not pass the data contract:\n{exc}\n(In unit.toml, "
                 'on-error = "quarantine" sets malformed rows aside in a quarantine file and goes on.)')
        for line in lines:
            console.print(line, highlight=False, soft_wrap=True)
    return cfg


@app.command("check")
def check(config: Annotated[Path, typer.Argument(help="The unit's unit.toml.")]) -> None:
    """Validate a unit's configuration, keys and data without starting anything."""
    cfg = _load(config, check_data=True)
    console.print(f"[green]ok[/] unit {cfg.unit_id}: ready to connect to {cfg.superlink}", highlight=False)


@app.command("supernode")
def supernode(
    config: Annotated[Path, typer.Argument(help="The unit's unit.toml.")],
    skip_data_check: Annotated[bool, typer.Option("--skip-data-check", help="Do not read the data file first.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the command, do not start it.")] = False,
) -> None:
    """Validate the unit's configuration and data, then start its Flower SuperNode."""
    cfg = _load(config, check_data=not skip_data_check)
    run_or_print(cfg.supernode_args(flower_bin("flower-supernode")), dry_run)
