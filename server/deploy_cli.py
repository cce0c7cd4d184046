"""``fedseg deploy`` (the coordinator's commands): run fedseg on Flower's Deployment Engine.

Coordinator::

    fedseg keys init keys --host coordinator.example.com   # CA + SuperLink certificate
    fedseg deploy superlink keys --host 0.0.0.0          # TLS + node authentication
    fedseg deploy connect fedseg coordinator.example.com:8000 --ca keys/ca.crt
    # each unit's NAME.pub (made on the unit, below) goes into keys/supernodes/
    fedseg deploy register keys --connection fedseg      # every unit's public key
    flwr run . fedseg --stream --run-config "output-dir='/srv/fedseg/run1'"

Unit (each on its own premises)::

    fedseg keys supernode --unit shop_north unit-keys    # its own key; hand over unit-keys/shop_north.pub
    fedseg deploy check unit.toml                        # validates config, keys and data
    fedseg deploy supernode unit.toml                    # starts flower-supernode
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedseg.console import console, err_console, fail
from fedseg.flower_exec import INSECURE_WARNING, run_or_print

app = typer.Typer(help="Run on Flower's Deployment Engine: SuperLink, unit SuperNodes, registration.",
                  no_args_is_help=True)
# The unit's own commands of this group (check, supernode) are in clients/deploy_cli.py.

@app.command("superlink")
def superlink(
    keys: Annotated[Path | None, typer.Argument(help="Key folder from `fedseg keys init` (ca.crt, server.pem, server.key).")] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the SuperLink's APIs.")] = 8000,
    database: Annotated[Path, typer.Option(help="SuperLink state (SQLite): registered units survive a restart.")] = Path("superlink-state.db"),
    insecure: Annotated[bool, typer.Option("--insecure", help="No TLS, no authentication (testing only).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the command, do not start it.")] = False,
) -> None:
    """Start Flower's SuperLink with TLS, SuperNode authentication and persistent state."""
    from server.deploy import DeployError, superlink_args

    if insecure:
        err_console.print(INSECURE_WARNING)
    try:
        args = superlink_args(keys, database.resolve(), host=host, port=port, insecure=insecure)
    except DeployError as exc:
        fail(str(exc))
    run_or_print(args, dry_run)


@app.command("connect")
def connect(
    name: Annotated[str, typer.Argument(help="Connection name, used as `flwr run . NAME`.")],
    address: Annotated[str, typer.Argument(help="SuperLink address host:port.")],
    ca: Annotated[Path | None, typer.Option("--ca", help="The federation's ca.crt.")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="Plain HTTP (testing only).")] = False,
) -> None:
    """Write the SuperLink connection NAME into $FLWR_HOME/config.toml for `flwr`."""
    from server.deploy import DeployError, write_connection

    if insecure:
        err_console.print(INSECURE_WARNING)
    try:
        path = write_connection(name, address, ca, insecure=insecure)
    except DeployError as exc:
        fail(str(exc))
    console.print(f"connection {name!r} -> {address} written to {path}; `flwr run . {name}` uses it", highlight=False)


@app.command("register")
def register(
    keys: Annotated[Path, typer.Argument(help="Key folder with supernodes/<unit>.pub (handed over by each unit).")],
    connection: Annotated[str, typer.Option(help="SuperLink connection (see `fedseg deploy connect`).")],
    unit: Annotated[list[str] | None, typer.Option("--unit", help="Register only these units (repeat).")] = None,
) -> None:
    """Register units' public keys with the SuperLink (`flwr supernode register`)."""
    from server.deploy import DeployError, private_keys_beside, register_units

    for private in private_keys_beside(keys):
        err_console.print(f"[bold yellow]warning:[/] {private} is a unit's private key in the coordinator's folder; "
                          "it belongs on that unit's premises only (the coordinator needs the .pub)",
                          highlight=False, soft_wrap=True)
    try:
        results = register_units(keys, connection, unit or None)
    except DeployError as exc:
        fail(str(exc))
    for r in results:
        mark = "[green]ok[/]" if r.ok else "[red]failed[/]"
        console.print(f"{mark} {r.unit}: {r.message}", highlight=False)
    if not all(r.ok for r in results):
        fail("some units were not registered; is the SuperLink running with --enable-supernode-auth, and does "
             "the connection's CA match its certificate?", code=1)
