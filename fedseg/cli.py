"""The ``fedseg`` command line.

Each package contributes its own sub-command group in ``<package>/cli.py`` as a
``typer.Typer`` named ``app``; this module mounts them. Sub-command modules import heavy
libraries (torch, flwr) inside their commands so that ``fedseg --help`` stays fast.
"""

from __future__ import annotations

import importlib
import importlib.util

import typer

app = typer.Typer(
    name="fedseg",
    help=(
        "Privacy-preserving federated user segmentation: churn models trained with Flower "
        "across business units that never pool raw data, segmentation, and fairness and "
        "pricing audits."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: (module holding a typer ``app``, group name or None to mount its commands at top level)
_GROUPS: tuple[tuple[str, str | None], ...] = (
    ("clients.cli", "data"),
    ("clients.unit_cli", None),
    ("simulations.cli", None),
    ("server.cli", None),
    ("privacy.cli", "privacy"),
    ("privacy.keys_cli", "keys"),
    ("server.deploy_cli", "deploy"),
    ("audit.cli", "audit"),
)


def _mount() -> None:
    for module_name, group in _GROUPS:
        if importlib.util.find_spec(module_name) is None:
            continue  # that capability is not built into this checkout
        sub = importlib.import_module(module_name).app
        if group is None:
            for command in sub.registered_commands:
                app.registered_commands.append(command)
            for grp in sub.registered_groups:
                app.registered_groups.append(grp)
        else:
            app.add_typer(sub, name=group)


_mount()


def main() -> None:
    """Console entry point: a :class:`fedseg.errors.FedsegError` is one line and its exit code."""
    from fedseg.errors import FedsegError

    try:
        app()
    except FedsegError as exc:
        from fedseg.console import err_console

        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise SystemExit(exc.exit_code) from None
