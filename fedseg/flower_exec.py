"""Starting Flower's own programs (``flower-superlink``, ``flower-supernode``, ``flwr``): shared by
the coordinator's and the unit's deploy commands."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from fedseg.console import console

#: Printed every time a Flower process is started without TLS and node authentication.
INSECURE_WARNING = ("[bold yellow]warning:[/] --insecure: no TLS and no node authentication. Anyone who can reach "
                    "the port can join the federation or read its traffic. Use it only on a test machine.")


def flower_bin(name: str) -> str:
    """Path of a Flower executable installed beside this Python (falls back to PATH)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


#: Seconds between two polls of Flower's SuperExec for a new app to start (Flower's default: 1 s).
#: The SuperExec starts one ``flwr-clientapp`` process per message on a SuperNode (and the
#: ``flwr-serverapp`` process on the SuperLink); every message waits for its next poll.
SUPEREXEC_POLL_S = "0.1"


def flower_env() -> dict[str, str]:
    """The environment Flower's programs run in: this Python's scripts folder first on PATH
    (they start each other by name: the SuperLink and the SuperNode start ``flower-superexec``)
    and the SuperExec polling every :data:`SUPEREXEC_POLL_S` seconds unless the caller set
    ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``; Flower's telemetry stays off as in this process
    (``FLWR_TELEMETRY_ENABLED``, :mod:`fedseg`)."""
    folder = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": folder + os.pathsep + os.environ.get("PATH", "")}
    env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", SUPEREXEC_POLL_S)
    return env


def run_or_print(args: list[str], dry_run: bool) -> None:
    """Print the command; unless ``dry_run``, replace this process with it."""
    console.print("[bold]command:[/] " + shlex.join(args), highlight=False, soft_wrap=True)
    if dry_run:
        return
    os.execvpe(args[0], args, flower_env())
