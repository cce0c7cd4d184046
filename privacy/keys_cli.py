"""``fedseg keys``: TLS certificates and SuperNode keys for a Flower deployment, and
secure-aggregation identities.

Every private key is made where it is used: the coordinator makes the CA and the SuperLink's
certificate (``init``); each unit makes its own SuperNode key (``supernode``) and its own
secure-aggregation identity (``secagg``) and hands over public keys only; ``registry``
assembles the secure-aggregation registry from public key files. No command writes two units'
private keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

from fedseg.console import fail

app = typer.Typer(help="TLS certificates, SuperNode authentication keys and secure-aggregation identities.",
                  no_args_is_help=True)

_ON_PREMISES = ("each unit makes its own key on its own premises: run `fedseg keys supernode --unit NAME DIR` "
                "(and `fedseg keys secagg --unit NAME DIR`) there, and hand over the .pub file only")


def _fail(message: str) -> NoReturn:
    fail(message)


def _say(text: str) -> None:  # plain text: commands and paths stay copy-pasteable
    from rich.console import Console

    Console(soft_wrap=True).print(text, markup=False, highlight=False)


def _one_unit(unit: list[str] | None) -> str:
    if not unit:
        _fail("name the unit: --unit NAME (as in its unit-id)")
    if len(unit) > 1:
        _fail(f"one unit per command ({len(unit)} given): {_ON_PREMISES}")
    return unit[0]


@app.command("init")
def init(
    directory: Annotated[Path, typer.Argument(help="The coordinator's key folder (created if missing).")],
    host: Annotated[list[str] | None, typer.Option(
        "--host", help="Host name or IP address units dial (repeat); default localhost and 127.0.0.1.")] = None,
    units: Annotated[int | None, typer.Option("--units", hidden=True)] = None,
    unit: Annotated[list[str] | None, typer.Option("--unit", hidden=True)] = None,
    days: Annotated[int, typer.Option("--days", min=1, help="Validity of the certificates, days.")] = 365,
    force: Annotated[bool, typer.Option("--force", help="Overwrite key files that already exist.")] = False,
) -> None:
    """Create the federation's CA and the SuperLink's TLS certificate (run by the coordinator).

    Unit keys are not made here: each unit runs `fedseg keys supernode` on its own premises."""
    from privacy.keys import KeysError, init_keys

    if units is not None or unit:
        _fail(f"`keys init` no longer makes unit keys: {_ON_PREMISES}")
    try:
        material = init_keys(directory, hosts=host or None, validity_days=days, force=force)
    except KeysError as exc:
        _fail(str(exc))
        return
    from rich.console import Console

    console = Console(soft_wrap=True)
    console.print(f"[bold]Wrote[/bold] into {material.directory} (valid until "
                  f"{material.not_valid_after:%Y-%m-%d %H:%M} UTC):")
    _say(f"  CA certificate      {material.ca_cert}")
    _say(f"  CA private key      {material.ca_key}  (0600; keep offline, it signs server certificates)")
    _say(f"  server certificate  {material.server_cert}  (SANs: {', '.join(material.hosts)})")
    _say(f"  server private key  {material.server_key}  (0600)")
    d = material.directory
    address = material.hosts[0] if ":" not in material.hosts[0] else f"[{material.hosts[0]}]"
    console.print("\n[bold]Next steps[/bold] (docs/deployment.md)")
    _say("1. Start the SuperLink with TLS, SuperNode authentication and persistent state:")
    _say(f"   fedseg deploy superlink {d} --host 0.0.0.0 --database superlink-state.db")
    _say("2. Point flwr at it ($FLWR_HOME/config.toml):")
    _say(f"   fedseg deploy connect fedseg {address}:8000 --ca {material.ca_cert}")
    _say("3. On each unit's premises, the unit makes its own key (the private key never leaves the unit):")
    _say("   fedseg keys supernode --unit NAME unit-keys")
    _say(f"   and sends you unit-keys/NAME.pub; put it in {d / 'supernodes'}/")
    _say("4. Register the units' public keys:")
    _say(f"   fedseg deploy register {d} --connection fedseg")
    _say(f"5. Give each unit {material.ca_cert.name} (never ca.key); on the unit:")
    _say("   fedseg deploy check unit.toml && fedseg deploy supernode unit.toml")


@app.command("supernode")
def supernode(
    directory: Annotated[Path, typer.Argument(help="The unit's own key folder (created if missing).")],
    unit: Annotated[list[str] | None, typer.Option("--unit", help="This unit's name, as in its unit-id.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite this unit's key if it exists.")] = False,
) -> None:
    """Make this unit's SuperNode authentication key (run on the unit's premises).

    Writes DIRECTORY/NAME (0600, stays here) and DIRECTORY/NAME.pub (hand it to the coordinator)."""
    from privacy.keys import KeysError, make_unit_key

    name = _one_unit(unit)
    try:
        keys = make_unit_key(directory, name, force=force)
    except KeysError as exc:
        _fail(str(exc))
        return
    _say(f"  private key  {keys.private_key}  (0600: stays on this unit; auth-key in unit.toml)")
    _say(f"  public key   {keys.public_key}  {keys.fingerprint}")
    _say(f"Send {keys.public_key.name} to the coordinator (it registers it with `fedseg deploy register`); "
         "confirm the fingerprint with it by another channel.")


@app.command("show")
def show(directory: Annotated[Path, typer.Argument(help="A key folder (the coordinator's or a unit's).")]) -> None:
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
        _fail(f"no certificates or SuperNode keys in {report.directory}; run `fedseg keys init {directory}` "
              "(coordinator) or `fedseg keys supernode --unit NAME DIR` (unit)")
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
        if k.private_key_mode is None:
            mode = "absent (stays on the unit)" if k.path.parent.name == "supernodes" else "[red]missing[/red]"
        elif k.path.parent.name == "supernodes":
            mode = f"[red]{k.private_key_mode}: a unit's private key in the coordinator's folder[/red]"
        elif k.private_key_mode != "0o600":
            mode = f"[red]{k.private_key_mode}[/red]"
        else:
            mode = k.private_key_mode
        keys.add_row(k.path.name, k.key_type, k.comment, k.fingerprint, mode)
    console.print(keys)


@app.command("secagg")
def secagg(
    directory: Annotated[Path, typer.Argument(help="The unit's own key folder (created if missing).")],
    unit: Annotated[list[str] | None, typer.Option("--unit", help="This unit's name, as in its unit-id.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite this unit's identity if it exists.")] = False,
) -> None:
    """Make this unit's secure-aggregation identity (run on the unit's premises).

    Writes DIRECTORY/NAME.secagg.key (Ed25519, 0600, stays here) and DIRECTORY/NAME.secagg.pub
    (hand it over; `fedseg keys registry` assembles the registry from such files)."""
    from privacy.keys import KeysError
    from privacy.secagg.identity import write_unit_identity

    name = _one_unit(unit)
    try:
        key_path, pub_path, fp = write_unit_identity(directory, name, force=force)
    except KeysError as exc:
        _fail(str(exc))
        return
    _say(f"  identity key  {key_path}  (0600: stays on this unit; secagg-key in unit.toml)")
    _say(f"  public key    {pub_path}  {fp}")
    _say(f"Hand over {pub_path.name} only; every unit then needs the registry built from all units' public keys "
         "(`fedseg keys registry`), by a channel the coordinator does not control.")


@app.command("registry")
def registry(
    out: Annotated[Path, typer.Argument(help="The registry file to write (registry.json).")],
    public_keys: Annotated[list[Path], typer.Argument(help="The units' NAME.secagg.pub files.")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite OUT if it exists.")] = False,
) -> None:
    """Assemble the secure-aggregation registry from units' public key files (never private keys).

    Every unit names the result as secagg-registry in its unit.toml; compare the fingerprints
    printed here with each unit by a channel the coordinator does not control."""
    from privacy.keys import KeysError
    from privacy.secagg.identity import build_registry, fingerprint

    try:
        units = build_registry(public_keys, out, force=force)
    except KeysError as exc:
        _fail(str(exc))
        return
    for name, public in units.items():
        _say(f"  {name:<19} {fingerprint(public)}")
    _say(f"Wrote {out.resolve()} ({len(units)} units). Give it to every unit: secagg-registry in its unit.toml.")
