"""Shared by several test folders: a small CDNOW federation written to real files, and a real Flower run
(the `cdnow_units` fixture is offered to every folder by tests/conftest.py)."""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

CUTOFF = dt.date(1997, 9, 30)


def set_task_identity() -> None:
    """Messages are built inside a Flower task; set the identity the runtime would set."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1


def small_cdnow(n_users: int = 4000) -> pd.DataFrame:
    from fedseg.datasets import load_cdnow

    events = load_cdnow()
    keep = events["user_id"].drop_duplicates().sample(n_users, random_state=1)
    return events.loc[events["user_id"].isin(set(keep))].reset_index(drop=True)


def write_units(events: pd.DataFrame, n_units: int, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    hashed = pd.util.hash_pandas_object(events["user_id"], index=False).to_numpy() % n_units
    paths = []
    for k in range(n_units):
        path = folder / f"events_unit_{k}.parquet"
        events.loc[hashed == k].reset_index(drop=True).to_parquet(path)
        paths.append(path)
    return paths


from flwr.app import RecordDict  # noqa: E402


class RecordingGrid:
    """The real Grid, with every reply kept for inspection (nothing is altered)."""

    def __init__(self, grid: Any) -> None:
        self._grid = grid
        self.replies: list[Any] = []
        self.received: list[Any] = []
        self.sent: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages, timeout=None):  # noqa: ANN001
        messages = list(messages)
        self.sent.extend(messages)
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        self.replies.extend(replies)
        # what each reply held on arrival (the coordinator consumes a train reply's evaluation record)
        self.received.extend(RecordDict(dict(r.content.items())) if not r.has_error() else None for r in replies)
        return replies


def run_flower(plan, files: list[Path], client_app=None, keep_errors: bool = False) -> tuple[list, RecordingGrid]:
    """Run ``plan`` on Flower's simulation engine with one virtual SuperNode per file; with
    ``keep_errors`` a :class:`fedseg.errors.FedsegError` that stops the run is returned in the
    results instead of raised."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from clients.client_app import make_client_app
    from server.training import run_training

    results: list = []
    holder: list[RecordingGrid] = []
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        from fedseg.errors import FedsegError

        recording = RecordingGrid(grid)
        holder.append(recording)
        try:
            results.append(run_training(recording, plan, on_round=lambda r: None))
        except FedsegError as exc:
            if not keep_errors:
                raise
            results.append(exc)

    logging.getLogger("flwr").setLevel(logging.WARNING)
    run_simulation(
        server_app=server, client_app=client_app or make_client_app(files), num_supernodes=len(files),
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                        "init_args": {"logging_level": logging.ERROR, "log_to_driver": False}},
    )
    return results, holder[0]


@pytest.fixture(scope="session")
def cdnow_units(tmp_path_factory) -> list[Path]:
    return write_units(small_cdnow(), 3, tmp_path_factory.mktemp("units"))
