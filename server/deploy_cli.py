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


@app.command("local")
def local(
    units: Annotated[int, typer.Option(min=2, help="Simulated units (virtual SuperNodes) for `flwr run .`.")] = 5,
    port: Annotated[int, typer.Option(min=1024, max=65533, help="Port of the SuperLink's API (and the next two).")] = 9301,
    stop: Annotated[bool, typer.Option("--stop", help="Stop the local SuperLink started earlier.")] = False,
) -> None:
    """Start a local simulation SuperLink for `flwr run .` (CPU, nothing downloaded) and make it
    the default connection; `flwr run . --stream` then runs the pyproject's ServerApp/ClientApp."""
    from server.deploy import DeployError, start_local_superlink, stop_local_superlink

    if stop:
        pid = stop_local_superlink()
        console.print("stopped the local SuperLink" + (f" (pid {pid})" if pid else ": none was running"))
        return
    try:
        link = start_local_superlink(units, port)
    except DeployError as exc:
        fail(str(exc))
    console.print(f"local SuperLink on {link.address} (pid {link.pid}, log {link.log}); default connection "
                  f"'fedseg-local' with {units} simulated units in {link.config}", highlight=False, soft_wrap=True)
    console.print("next: flwr run . --stream   (outputs: the run config's output-dir, default runs/flwr, relative to "
                  f"{Path.cwd()}; the run prints the absolute path)\nstop:  fedseg deploy local --stop",
                  highlight=False, soft_wrap=True)
