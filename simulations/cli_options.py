"""Options every simulation command shares (``simulate``, ``segment``, ``clv``, ``effects``): one
definition of each flag's type and help."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Dataset = Annotated[str, typer.Option(help="cdnow (bundled real data), synthetic (generated), or file (--events).")]
Events = Annotated[Path | None, typer.Option(help="Events file; a unit_id column, if present, defines the units.")]
Users = Annotated[Path | None, typer.Option(help="Users file matching --events.")]
SyntheticUsers = Annotated[int, typer.Option(help="Users to generate for --dataset synthetic.")]
Units = Annotated[int, typer.Option(help="Number of simulated business units.")]
Partition = Annotated[str, typer.Option(help="auto, iid, dirichlet or column (the data's unit_id).")]
Alpha = Annotated[float, typer.Option(help="Dirichlet concentration (0.1 = strongly skewed units).")]
Ledger = Annotated[Path | None, typer.Option(help="The units' privacy budget ledger (SQLite): each unit checks and "
                                                  "records its spend; one file for every task.")]
Verbose = Annotated[bool, typer.Option(help="Show Flower's and Ray's own logs.")]
