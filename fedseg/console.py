"""Terminal output shared by every command: one console, errors that exit cleanly, progress."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, NoReturn

import click
import typer
from typer.core import TyperCommand, TyperGroup
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

console = Console()
err_console = Console(stderr=True)


def _usage_error(ctx: click.Context, exc: click.UsageError) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {exc.format_message()} (see `{ctx.command_path} --help`)",
                      highlight=False, soft_wrap=True)
    raise typer.Exit(2) from None


class OneLineUsageErrors(TyperCommand):
    """A command whose usage errors (missing or unknown option, bad value) are one line
    ``error: ...`` and exit 2, instead of click's framed box."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            _usage_error(ctx, exc)


class OneLineUsageGroup(TyperGroup):
    """A command group whose usage errors (unknown option or command) are one ``error:`` line."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            _usage_error(ctx, exc)

    def resolve_command(self, ctx: click.Context, args: list[str]):  # noqa: ANN201
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as exc:
            _usage_error(ctx, exc)


def validation_message(exc: Any) -> str:
    """One line from a pydantic ValidationError: ``field: problem; ...``."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        parts.append((f"{where}: " if where else "") + error["msg"].removeprefix("Value error, "))
    return "; ".join(parts)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``message`` as an error (no traceback) and exit with ``code``."""
    from rich.markup import escape

    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def job_errors() -> Iterator[None]:
    """Around a command's job: a :class:`fedseg.errors.FedsegError` becomes one ``error:`` line with
    its exit code; a ``ValueError`` or ``FileNotFoundError`` (bad input found while reading) one
    line with exit 2."""
    from fedseg.errors import FedsegError

    try:
        yield
    except FedsegError as exc:
        fail(str(exc), exc.exit_code)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))


@contextlib.contextmanager
def steps(total: int, description: str = "working") -> Iterator[Progress]:
    """A progress bar over ``total`` named steps; call ``advance(task, description=...)``."""
    with Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    ) as progress:
        task = progress.add_task(description, total=total)
        try:
            yield progress
        except BaseException:
            progress.update(task, visible=False)  # no stale "0/3" line above the error message
            raise


def advance(progress: Progress, description: str) -> None:
    """Mark one step done and name the next."""
    task = progress.task_ids[0]
    progress.update(task, advance=1, description=description)
