"""``fedseg keys``: TLS certificates and SuperNode keys for a Flower deployment."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="TLS certificates and SuperNode authentication keys for Flower's Deployment Engine.",
                  no_args_is_help=True)


def _fail(message: str) -> None:
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(code=2)


@app.command("init")
def init(
    directory: Annotated[Path, typer.Argument(help="Directory to write the keys into (created if missing).")],
    host: Annotated[list[str] | None, typer.Option(
        "--host", help="Host name or IP address units dial (repeat); default localhost and 127.0.0.1.")] = None,
    units: Annotated[int | None, typer.Option(
        "--units", min=1, help="Number of units: key pairs unit_0 .. unit_{N-1}.")] = None,
    unit: Annotated[list[str] | None, typer.Option("--unit", help="Unit name (repeat) instead of --units.")] = None,
    days: Annotated[int, typer.Option("--days", min=1, help="Validity of the certificates, days.")] = 365,
    force: Annotated[bool, typer.Option("--force", help="Overwrite key files that already exist.")] = False,
) -> None:
    """Create a CA, the SuperLink's TLS certificate and one SuperNode key pair per unit."""
    from privacy.keys import KeysError, init_keys

    if units is None and not unit:
        units = 1
    try:
        material = init_keys(directory, hosts=host or None, units=unit or None, n_units=None if unit else units,
                             validity_days=days, force=force)
    except KeysError as exc:
        _fail(str(exc))
        return
    from rich.console import Console

    console = Console(soft_wrap=True)

    def say(text: str) -> None:  # plain text: commands stay copy-pasteable
        console.print(text, markup=False, highlight=False)

    console.print(f"[bold]Wrote[/bold] into {material.directory} (valid until "
                  f"{material.not_valid_after:%Y-%m-%d %H:%M} UTC):")
    say(f"  CA certificate      {material.ca_cert}")
    say(f"  CA private key      {material.ca_key}  (0600; keep offline, it signs server certificates)")
    say(f"  server certificate  {material.server_cert}  (SANs: {', '.join(material.hosts)})")
    say(f"  server private key  {material.server_key}  (0600)")
    for u in material.units:
        say(f"  {u.name:<19} {u.private_key}  (0600) + .pub  {u.fingerprint}")
    d = material.directory
    address = material.hosts[0] if ":" not in material.hosts[0] else f"[{material.hosts[0]}]"
    console.print("\n[bold]Next steps[/bold] (docs/deployment.md)")
    say("1. Start the SuperLink with TLS, SuperNode authentication and persistent state:")
    say(f"   fedseg deploy superlink {d} --host 0.0.0.0 --database superlink-state.db")
    say("2. Point flwr at it ($FLWR_HOME/config.toml):")
    say(f"   fedseg deploy connect fedseg {address}:8000 --ca {material.ca_cert}")
    say("3. Register every unit's public key:")
    say(f"   fedseg deploy register {d} --connection fedseg")
    say("4. Give each unit its own private key and ca.crt (never the CA key); on the unit:")
    say("   fedseg deploy check unit.toml && fedseg deploy supernode unit.toml")


@app.command("show")
def show(directory: Annotated[Path, typer.Argument(help="Directory written by `fedseg keys init`.")]) -> None:
    """List the certificates (expiry, SANs, chain check) and SuperNode public keys in DIRECTORY."""
    from privacy.keys import KeysError, describe_keys

    try:
        report = describe_keys(directory)
    except KeysError as exc:
        _fail(str(exc))
        return
    from rich.console import Console
    from rich.table import Table

    import sys

    console = Console(width=None if sys.stdout.isatty() else 220)
    if not report.certificates and not report.supernode_keys:
        _fail(f"no certificates or SuperNode keys in {report.directory}; run `fedseg keys init {directory}`")
    certs = Table(title=f"Certificates in {report.directory}")
    for col in ("file", "subject", "CA", "expires (UTC)", "days left", "SANs", "verifies vs ca.crt"):
        certs.add_column(col, overflow="fold")
    for c in report.certificates:
        days_left = f"{c.days_left:.0f}" if c.days_left >= 0 else f"[red]expired {-c.days_left:.0f} d ago[/red]"
        check = "-" if c.verified_by_ca is None else ("yes" if c.verified_by_ca else "[red]NO[/red]")
        certs.add_row(c.path.name, c.subject, "yes" if c.is_ca else "no", f"{c.not_valid_after:%Y-%m-%d %H:%M}",
                      days_left, ", ".join(c.dns_names + c.ip_addresses) or "-", check)
    console.print(certs)
    keys = Table(title="SuperNode public keys")
    for col in ("file", "type", "comment", "fingerprint", "private key mode"):
        keys.add_column(col, overflow="fold")
    for k in report.supernode_keys:
        mode = k.private_key_mode or "missing"
        if k.private_key_mode and k.private_key_mode != "0o600":
            mode = f"[red]{mode}[/red]"
        keys.add_row(k.path.name, k.key_type, k.comment, k.fingerprint, mode)
    console.print(keys)


@app.command("secagg")
def secagg(
    directory: Annotated[Path, typer.Argument(help="Key folder; identities go to DIRECTORY/secagg/.")],
    unit: Annotated[list[str], typer.Option("--unit", help="Unit name (repeat), as in its unit-id.")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite identities that already exist.")] = False,
) -> None:
    """Secure-aggregation identities: an Ed25519 key per unit and the registry of public keys.

    Each unit gets its own secagg/<unit>.key (0600) and every unit gets secagg/registry.json;
    units sign their per-round key advertisements with it (docs/secure-aggregation.md)."""
    from privacy.secagg.flower import make_identities

    folder = directory / "secagg"
    targets = [folder / f"{u}.key" for u in unit] + [folder / "registry.json"]
    existing = [p for p in targets if p.exists()]
    if existing and not force:
        _fail("already exist (use --force to replace them, and redistribute the registry): "
              + ", ".join(map(str, existing)))
    if len(set(unit)) != len(unit):
        _fail("a unit is named twice")
    paths = make_identities(folder, unit)
    for name, path in paths.items():
        typer.echo(f"  {name:<19} {path}  (0600: give it to that unit only)")
    typer.echo(f"  registry            {folder / 'registry.json'}  (give it to every unit)")
    typer.echo("In each unit.toml: secagg-key = \"<its .key>\" and secagg-registry = \"<registry.json>\".")
