"""The ``fedseg`` command line.

Each package contributes its own sub-command group in ``<package>/cli.py`` as a
``typer.Typer`` named ``app``; this module mounts them. Sub-command modules import heavy
libraries (torch, flwr) inside their commands so that ``fedseg --help`` stays fast.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

import typer
from pydantic import ValidationError
from typer.core import TyperCommand

from fedseg.console import OneLineUsageErrors, OneLineUsageGroup, fail, validation_message
from fedseg.errors import FedsegError

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
    cls=OneLineUsageGroup,
)


def _version(value: bool) -> None:
    if value:
        from fedseg import __version__

        typer.echo(f"fedseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print fedseg's version and exit."),
) -> None:
    """Privacy-preserving federated user segmentation (``fedseg --help`` lists the commands)."""


#: (module holding a typer ``app``, group name or None to mount its commands at top level)
_GROUPS: tuple[tuple[str, str | None], ...] = (
    ("clients.cli", "data"),
    ("simulations.data_cli", "data"),
    ("clients.unit_cli", None),
    ("clients.monitor_cli", "unit"),
    ("simulations.cli", None),
    ("simulations.monitor_cli", None),
    ("simulations.value_cli", None),
    ("privacy.cli", "privacy"),
    ("privacy.keys_cli", "keys"),
    ("server.deploy_cli", "deploy"),
    ("clients.deploy_cli", "deploy"),
    ("audit.cli", "audit"),
)


def _one_line_errors(callback: Callable[..., Any]) -> Callable[..., Any]:
    """A command whose :class:`fedseg.errors.FedsegError` becomes one ``error:`` line and its exit code."""

    @functools.wraps(callback)
    def command(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except FedsegError as exc:
            fail(str(exc), exc.exit_code)
        except ValidationError as exc:  # a value the user gave, checked by a pydantic model
            fail(validation_message(exc))

    return command


def _wrap_commands(typer_app: typer.Typer) -> None:
    """Every command: usage errors and FedsegErrors as one ``error:`` line (one error style)."""
    for info in typer_app.registered_commands:
        if info.callback is not None and not hasattr(info.callback, "__wrapped__"):
            info.callback = _one_line_errors(info.callback)
        if info.cls in (None, TyperCommand):
            info.cls = OneLineUsageErrors
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _wrap_commands(group.typer_instance)


def _mount() -> None:
    groups: dict[str, typer.Typer] = {}
    for module_name, group in _GROUPS:
        sub = importlib.import_module(module_name).app
        if group is None:
            app.registered_commands.extend(sub.registered_commands)
            app.registered_groups.extend(sub.registered_groups)
        elif group in groups:  # a second module adds its commands to the same group
            groups[group].registered_commands.extend(sub.registered_commands)
        else:
            groups[group] = sub
            app.add_typer(sub, name=group, cls=OneLineUsageGroup)
    _wrap_commands(app)


_mount()


def main() -> None:
    """Console entry point: a :class:`fedseg.errors.FedsegError` is one line and its exit code."""
    from fedseg.errors import FedsegError

    try:
        app()
    except FedsegError as exc:
        from rich.markup import escape

        from fedseg.console import err_console

        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise SystemExit(exc.exit_code) from None
